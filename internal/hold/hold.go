// Package hold provides the response writer that api_errors and api_etag
// wrap around the rest of the chain: it holds back the responses a handler
// wants to look at before they are sent, with their bodies up to a bound,
// and lets every other response stream through untouched.
//
// It follows the contract of Caddy's caddyhttp.NewResponseRecorder: a
// shouldHold decision is made once, when the status and headers are known;
// a response that is not held is written straight to the client. What
// differs is what happens when a held body outgrows the bound, which the
// two callers need differently (see Overflow).
package hold

import (
	"bytes"
	"io"
	"net/http"
	"sync"
)

// Overflow says what a Writer does with a held body that outgrows Max.
type Overflow uint8

const (
	// Truncate keeps the first Max bytes, drops the rest and reports
	// Overflowed: the response is still held, and the handler replaces it
	// (api_errors: an oversize error body is never sent as it is).
	Truncate Overflow = iota
	// Stream sends the status, the headers and what was held, and lets the
	// rest stream through: the response is no longer held (api_etag: a
	// large 200 goes out untouched, without an ETag).
	Stream
)

// Writer holds back a response that ShouldHold accepts, with up to Max
// bytes of its body. Get one from Get and return it with Put.
type Writer struct {
	http.ResponseWriter
	max        int
	shouldHold func(status int, h http.Header) bool
	overflow   Overflow

	status      int
	wroteHeader bool
	holding     bool
	overflowed  bool
	ownProblem  bool
	buf         bytes.Buffer
}

var pool = sync.Pool{New: func() any { return new(Writer) }}

// Get returns a Writer around w. shouldHold sees the final status and the
// headers once, before anything is sent; it may adjust the headers.
func Get(w http.ResponseWriter, max int, overflow Overflow, shouldHold func(status int, h http.Header) bool) *Writer {
	hw := pool.Get().(*Writer)
	hw.ResponseWriter, hw.max, hw.overflow, hw.shouldHold = w, max, overflow, shouldHold
	return hw
}

// Put recycles hw; its body must no longer be used.
func Put(hw *Writer) {
	buf := hw.buf
	if buf.Cap() > 4<<20 {
		buf = bytes.Buffer{}
	}
	buf.Reset()
	*hw = Writer{buf: buf}
	pool.Put(hw)
}

// MarkOwnProblem records that the response is a problem document written
// in this process (problem.Write, by a handler of the chain such as
// resources), not a backend's body: api_errors may pass it on as it is.
func (hw *Writer) MarkOwnProblem() { hw.ownProblem = true }

// OwnProblem reports whether MarkOwnProblem was called.
func (hw *Writer) OwnProblem() bool { return hw.ownProblem }

// WriteHeader decides whether to hold the response. Informational statuses
// pass through and are not final.
func (hw *Writer) WriteHeader(status int) {
	if hw.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		hw.ResponseWriter.WriteHeader(status)
		return
	}
	hw.wroteHeader, hw.status = true, status
	if hw.shouldHold(status, hw.Header()) {
		hw.holding = true
		return
	}
	hw.ResponseWriter.WriteHeader(status)
}

func (hw *Writer) Write(p []byte) (int, error) {
	if !hw.wroteHeader {
		hw.WriteHeader(http.StatusOK)
	}
	if !hw.holding {
		return hw.ResponseWriter.Write(p)
	}
	if hw.buf.Len()+len(p) <= hw.max {
		return hw.buf.Write(p)
	}
	if hw.overflow == Truncate {
		hw.buf.Write(p[:max(hw.max-hw.buf.Len(), 0)])
		hw.overflowed = true
		return len(p), nil
	}
	// Stream: too large to hold; send it untouched from here on
	hw.holding = false
	hw.ResponseWriter.WriteHeader(hw.status)
	if _, err := hw.ResponseWriter.Write(hw.buf.Bytes()); err != nil {
		return 0, err
	}
	hw.buf.Reset()
	return hw.ResponseWriter.Write(p)
}

// ReadFrom keeps io.Copy from bypassing Write while a response is held.
func (hw *Writer) ReadFrom(r io.Reader) (int64, error) {
	if !hw.wroteHeader {
		hw.WriteHeader(http.StatusOK)
	}
	if !hw.holding {
		if rf, ok := hw.ResponseWriter.(io.ReaderFrom); ok {
			return rf.ReadFrom(r)
		}
	}
	return io.Copy(writerOnly{hw}, r)
}

type writerOnly struct{ io.Writer }

// FlushError flushes a response that streams through; a held one waits
// for the handler.
func (hw *Writer) FlushError() error {
	if hw.holding || !hw.wroteHeader {
		return nil
	}
	return http.NewResponseController(hw.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (hw *Writer) Flush() { _ = hw.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (hw *Writer) Unwrap() http.ResponseWriter { return hw.ResponseWriter }

// Status is the final status written, 0 if none yet.
func (hw *Writer) Status() int { return hw.status }

// WroteHeader reports whether a final status was written.
func (hw *Writer) WroteHeader() bool { return hw.wroteHeader }

// Held reports whether the response is held back (and so not yet sent).
func (hw *Writer) Held() bool { return hw.holding }

// Overflowed reports whether a held body was cut at Max (Truncate only).
func (hw *Writer) Overflowed() bool { return hw.overflowed }

// Body is the held body; valid until Put.
func (hw *Writer) Body() []byte { return hw.buf.Bytes() }

// Interface guards
var (
	_ io.ReaderFrom = (*Writer)(nil)
	_ http.Flusher  = (*Writer)(nil)
)
