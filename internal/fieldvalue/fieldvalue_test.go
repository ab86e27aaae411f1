package fieldvalue

import (
	"strings"
	"testing"
)

// TestOf: every length comes back as written, in one allocation up to 112
// bytes, and the value does not change when the caller's buffer does.
func TestOf(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 33, 64, 65, 112, 113, 300} {
		b := []byte(strings.Repeat("x", n))
		v := Of(b)
		if len(v) != 1 || cap(v) != 1 || v[0] != string(b) {
			t.Fatalf("Of(%d bytes) = %q (cap %d)", n, v, cap(v))
		}
		for i := range b {
			b[i] = 'y'
		}
		if v[0] != strings.Repeat("x", n) {
			t.Fatalf("Of(%d bytes) changed with its source: %q", n, v[0])
		}
		want := 1.0
		if n > 112 {
			want = 2
		}
		b = []byte(strings.Repeat("z", n))
		if got := testing.AllocsPerRun(100, func() { Of(b) }); n > 0 && got != want {
			t.Errorf("Of(%d bytes): %v allocations, want %v", n, got, want)
		}
	}
}
