package problem

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/restgate/restgate/internal/fieldvalue"
)

// requestIDHeader carries the request id to the backend and back to the client.
const requestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds a client-sent request id that is kept.
const maxRequestIDLen = 64

// EnsureRequestID makes sure the request and the response carry one request
// id: a sane client-sent one (at most 64 characters of [A-Za-z0-9._-]) is
// kept, anything else is replaced by a new ULID. The id goes upstream in the
// request's X-Request-Id header and back in the response's.
func EnsureRequestID(w http.ResponseWriter, r *http.Request) string {
	if ids := r.Header[requestIDHeader]; len(ids) == 1 && saneRequestID(ids[0]) {
		w.Header()[requestIDHeader] = ids
		return ids[0]
	}
	var b [26]byte
	putULID(&b, time.Now())
	v := fieldvalue.Of(b[:]) // both header maps share the value slice
	r.Header[requestIDHeader] = v
	w.Header()[requestIDHeader] = v
	return v[0]
}

// RequestIDFromRequest returns the request's id if it has a sane one.
func RequestIDFromRequest(r *http.Request) string {
	if ids := r.Header[requestIDHeader]; len(ids) == 1 && saneRequestID(ids[0]) {
		return ids[0]
	}
	return ""
}

func saneRequestID(s string) bool {
	if s == "" || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// putULID writes a ULID (48-bit millisecond time, 80 random bits, Crockford
// base32): sortable by time, unique enough to correlate logs. The randomness
// need not be secret, so the runtime's fast per-thread generator serves.
func putULID(b *[26]byte, now time.Time) {
	ms := uint64(now.UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	// 16 random characters: 13 from one 64-bit word, 3 from another
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := 25; i >= 13; i-- {
		b[i] = crockford[lo&31]
		lo >>= 5
	}
	for i := 12; i >= 10; i-- {
		b[i] = crockford[hi&31]
		hi >>= 5
	}
}
