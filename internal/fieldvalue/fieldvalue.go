// Package fieldvalue makes a header field's value, the []string an
// http.Header holds, from bytes formatted on the stack, in one allocation
// where http.Header would take two (the string's bytes and the slice).
package fieldvalue

import "unsafe"

// block holds a one-element value slice's backing array and the bytes its
// string points into: the string keeps the whole block alive.
type block[B any] struct {
	v [1]string
	b B
}

// Of returns a one-element value holding a copy of b. The result is
// immutable, as header values are: share it, never append to it in place
// (its capacity is clipped to 1).
func Of(b []byte) []string {
	switch n := len(b); {
	case n == 0:
		return []string{""}
	case n <= 32:
		return of(new(block[[32]byte]), b)
	case n <= 64:
		return of(new(block[[64]byte]), b)
	case n <= 112:
		return of(new(block[[112]byte]), b)
	}
	return []string{string(b)}
}

func of[B any](blk *block[B], b []byte) []string {
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&blk.b)), unsafe.Sizeof(blk.b))
	copy(buf, b)
	blk.v[0] = unsafe.String(&buf[0], len(b))
	return blk.v[:1:1]
}
