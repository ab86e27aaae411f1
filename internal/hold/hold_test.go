package hold

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWriter(t *testing.T) {
	errorsOnly := func(status int, _ http.Header) bool { return status >= 400 }
	tests := []struct {
		name         string
		overflow     Overflow
		status       int
		body         string
		wantHeld     bool
		wantOverflow bool
		wantSent     string // what reached the client
		wantBody     string // what is held
	}{
		{"success streams", Truncate, 200, "hello", false, false, "hello", ""},
		{"error held", Truncate, 404, "nope", true, false, "", "nope"},
		{"error at the bound", Truncate, 500, "12345678", true, false, "", "12345678"},
		{"error over the bound is cut", Truncate, 500, "123456789abc", true, true, "", "12345678"},
		{"stream: held under the bound", Stream, 404, "1234", true, false, "", "1234"},
		{"stream: over the bound goes out whole", Stream, 404, "123456789abc", false, false, "123456789abc", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			hw := Get(rec, 8, tt.overflow, errorsOnly)
			defer Put(hw)
			hw.WriteHeader(tt.status)
			// in two writes, one through ReadFrom, as reverse_proxy may do
			half := len(tt.body) / 2
			if _, err := hw.Write([]byte(tt.body[:half])); err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(hw, strings.NewReader(tt.body[half:])); err != nil {
				t.Fatal(err)
			}
			if hw.Held() != tt.wantHeld || hw.Overflowed() != tt.wantOverflow || hw.Status() != tt.status {
				t.Errorf("Held() = %v, Overflowed() = %v, Status() = %d; want %v, %v, %d", hw.Held(), hw.Overflowed(), hw.Status(), tt.wantHeld, tt.wantOverflow, tt.status)
			}
			if got := rec.Body.String(); got != tt.wantSent {
				t.Errorf("sent %q, want %q", got, tt.wantSent)
			}
			if tt.wantHeld && string(hw.Body()) != tt.wantBody {
				t.Errorf("held %q, want %q", hw.Body(), tt.wantBody)
			}
			if !tt.wantHeld && rec.Code != tt.status {
				t.Errorf("client got status %d, want %d", rec.Code, tt.status)
			}
		})
	}
}

// TestInformationalPassesThrough: a 103 is sent at once and is not final.
func TestInformationalPassesThrough(t *testing.T) {
	rec := httptest.NewRecorder()
	hw := Get(rec, 8, Truncate, func(int, http.Header) bool { return true })
	defer Put(hw)
	hw.WriteHeader(http.StatusEarlyHints)
	if hw.WroteHeader() {
		t.Error("a 103 counted as the final status")
	}
	hw.WriteHeader(404)
	if !hw.Held() || hw.Status() != 404 {
		t.Errorf("Held() = %v, Status() = %d after 103 then 404", hw.Held(), hw.Status())
	}
}

// TestFlushWaitsWhileHeld: flushing a held response sends nothing.
func TestFlushWaitsWhileHeld(t *testing.T) {
	rec := httptest.NewRecorder()
	hw := Get(rec, 8, Truncate, func(int, http.Header) bool { return true })
	defer Put(hw)
	hw.WriteHeader(500)
	_, _ = hw.Write([]byte("x"))
	hw.Flush()
	if rec.Flushed || rec.Body.Len() != 0 {
		t.Error("a held response was flushed to the client")
	}
}
