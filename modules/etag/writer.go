package etag

import (
	"bytes"
	"io"
	"net/http"
	"sync"
)

// holdWriter holds back a response that the handler wants to look at (its
// status and headers pass eligible) together with its body, up to max bytes.
// A response that is not eligible, or whose body outgrows max, streams
// through untouched; a held one is written by the handler afterwards.
type holdWriter struct {
	http.ResponseWriter
	max      int
	eligible func(status int, h http.Header) bool

	status      int
	wroteHeader bool
	holding     bool
	buf         bytes.Buffer
}

var holdPool = sync.Pool{New: func() any { return new(holdWriter) }}

func getHoldWriter(w http.ResponseWriter, max int, eligible func(int, http.Header) bool) *holdWriter {
	hw := holdPool.Get().(*holdWriter)
	hw.ResponseWriter, hw.max, hw.eligible = w, max, eligible
	return hw
}

func putHoldWriter(hw *holdWriter) {
	buf := hw.buf
	if buf.Cap() > 4<<20 {
		buf = bytes.Buffer{}
	}
	buf.Reset()
	*hw = holdWriter{buf: buf}
	holdPool.Put(hw)
}

func (hw *holdWriter) WriteHeader(status int) {
	if hw.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		hw.ResponseWriter.WriteHeader(status)
		return
	}
	hw.wroteHeader, hw.status = true, status
	if hw.eligible(status, hw.Header()) {
		hw.holding = true
		return
	}
	hw.ResponseWriter.WriteHeader(status)
}

func (hw *holdWriter) Write(p []byte) (int, error) {
	if !hw.wroteHeader {
		hw.WriteHeader(http.StatusOK)
	}
	if !hw.holding {
		return hw.ResponseWriter.Write(p)
	}
	if hw.buf.Len()+len(p) <= hw.max {
		return hw.buf.Write(p)
	}
	// too large to hold: let it stream, untouched, from here on
	hw.holding = false
	hw.ResponseWriter.WriteHeader(hw.status)
	if _, err := hw.ResponseWriter.Write(hw.buf.Bytes()); err != nil {
		return 0, err
	}
	hw.buf.Reset()
	return hw.ResponseWriter.Write(p)
}

// ReadFrom keeps io.Copy from bypassing Write while a response is held.
func (hw *holdWriter) ReadFrom(r io.Reader) (int64, error) {
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

// FlushError flushes a streaming response; a held one waits for the end.
func (hw *holdWriter) FlushError() error {
	if hw.holding || !hw.wroteHeader {
		return nil
	}
	return http.NewResponseController(hw.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (hw *holdWriter) Flush() { _ = hw.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (hw *holdWriter) Unwrap() http.ResponseWriter { return hw.ResponseWriter }

// held reports whether a complete response is being held.
func (hw *holdWriter) held() bool { return hw.holding }

// probeWriter records a whole response (up to max bytes of body) that is
// never sent to the client: the gateway's own GET of a resource.
type probeWriter struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	max      int
	overflow bool
}

func (pw *probeWriter) Header() http.Header { return pw.header }

func (pw *probeWriter) WriteHeader(status int) {
	if pw.status == 0 && status >= 200 {
		pw.status = status
	}
}

func (pw *probeWriter) Write(p []byte) (int, error) {
	if pw.status == 0 {
		pw.status = http.StatusOK
	}
	if pw.body.Len()+len(p) > pw.max {
		pw.overflow = true
		return len(p), nil
	}
	return pw.body.Write(p)
}

func (pw *probeWriter) Flush() {}

var (
	_ io.ReaderFrom = (*holdWriter)(nil)
	_ http.Flusher  = (*holdWriter)(nil)
	_ http.Flusher  = (*probeWriter)(nil)
)
