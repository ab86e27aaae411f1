package canon

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

// spelled normalises a request for host and target (over TLS).
func spelled(t *testing.T, host, target string) *http.Request {
	t.Helper()
	r := httptest.NewRequest("GET", "https://"+host+target, nil)
	r.Host = host
	r.TLS = &tls.ConnectionState{}
	if err := Normalize(r); err != nil {
		t.Fatalf("Normalize(%s%s) = %v", host, target, err)
	}
	return r
}

// TestSpellings is the table of spellings → keys: what a backend sees
// (the canonical target), the exact cache key and the coarse resource key.
func TestSpellings(t *testing.T) {
	tests := []struct {
		host, target string
		wantHost     string // the canonical Host
		wantEscaped  string // the canonical escaped path: what is forwarded, and the cache key's path
		wantResource string // the resource key
	}{
		{"api.localhost:8443", "/v1/events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:8443", "//v1/events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:8443", "/v1/./events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:8443", "/v1/events/../events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:8443", "/v1//events///x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"API.Localhost:8443", "/v1/events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost.:8443", "/v1/events/%78", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:443", "/v1/events/x", "api.localhost", "/v1/events/x", "/v1/events/x"},
		{"api.localhost", "/v1/events/x", "api.localhost", "/v1/events/x", "/v1/events/x"},
		{"api2.localhost", "/v1/events/x", "api2.localhost", "/v1/events/x", "/v1/events/x"},
		// a trailing slash, case and ;params are kept for the backend and
		// the cache, merged for the resource key
		{"api.localhost:8443", "/v1/events/x/", "api.localhost:8443", "/v1/events/x/", "/v1/events/x"},
		{"api.localhost:8443", "/v1/Events/X", "api.localhost:8443", "/v1/Events/X", "/v1/events/x"},
		{"api.localhost:8443", "/v1/events/x;v=2", "api.localhost:8443", "/v1/events/x;v=2", "/v1/events/x"},
		{"api.localhost:8443", "/v1;a=b/events/x", "api.localhost:8443", "/v1;a=b/events/x", "/v1/events/x"},
		// reserved escapes stay escaped (hex upper-cased): a%3Bb is not a;b
		{"api.localhost:8443", "/v1/items/a%3bb", "api.localhost:8443", "/v1/items/a%3Bb", "/v1/items/a"},
		{"api.localhost:8443", "/v1/items/a;b", "api.localhost:8443", "/v1/items/a;b", "/v1/items/a"},
		{"api.localhost:8443", "/v1/items/a%2cb", "api.localhost:8443", "/v1/items/a%2Cb", "/v1/items/a,b"},
		{"api.localhost:8443", "/v1/items/a%3Db", "api.localhost:8443", "/v1/items/a%3Db", "/v1/items/a=b"},
		{"api.localhost:8443", "/v1/items/a%40b", "api.localhost:8443", "/v1/items/a%40b", "/v1/items/a@b"},
		// unreserved escapes are decoded, dot segments among them
		{"api.localhost:8443", "/v1/items/%7euser%2Dx", "api.localhost:8443", "/v1/items/~user-x", "/v1/items/~user-x"},
		{"api.localhost:8443", "/v1/items/%2e%2e/events/x", "api.localhost:8443", "/v1/events/x", "/v1/events/x"},
		{"api.localhost:8443", "/v1/events/a%20b", "api.localhost:8443", "/v1/events/a%20b", "/v1/events/a b"},
		{"api.localhost:8443", "/", "api.localhost:8443", "/", "/"},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.target, func(t *testing.T) {
			r := spelled(t, tt.host, tt.target)
			if r.Host != tt.wantHost || r.URL.EscapedPath() != tt.wantEscaped {
				t.Errorf("canonical target = %s %s, want %s %s", r.Host, r.URL.EscapedPath(), tt.wantHost, tt.wantEscaped)
			}
			if got, want := CacheTarget(r), tt.wantHost+"\x00"+tt.wantEscaped; got != want {
				t.Errorf("CacheTarget = %q, want %q", got, want)
			}
			if got := ResourceKey(r); got != tt.wantResource {
				t.Errorf("ResourceKey = %q, want %q", got, tt.wantResource)
			}
			// idempotent: the canonical target is its own canonical form
			again := spelled(t, r.Host, r.URL.EscapedPath())
			if CacheTarget(again) != CacheTarget(r) || ResourceKey(again) != ResourceKey(r) {
				t.Errorf("normalising twice changes the keys: %q %q", CacheTarget(again), ResourceKey(again))
			}
		})
	}
	// targets a backend can tell apart never share a cache key
	distinct := map[string]string{}
	for _, target := range []string{"/v1/events/x", "/v1/events/x/", "/v1/events/X", "/v1/events/x%20",
		"/v1/items/a;b", "/v1/items/a%3Bb", "/v1/items/a,b", "/v1/items/a%2Cb", "/v1/items/a=b", "/v1/items/a%3Db",
		"/v1/items/a@b", "/v1/items/a%40b"} {
		k := CacheTarget(spelled(t, "api.localhost:8443", target))
		if prev, dup := distinct[k]; dup {
			t.Errorf("%s and %s share the cache key %q", prev, target, k)
		}
		distinct[k] = target
	}
}

func TestControlCharactersAreRefused(t *testing.T) {
	for _, target := range []string{"/v1/events/a%00b", "/v1/events/a%0Ab", "/v1/events/a%0db", "/v1/events/%7F", "/v1/events/%1b"} {
		r := httptest.NewRequest("GET", target, nil)
		before := r.URL.String()
		if err := Normalize(r); err != ErrControlCharacter {
			t.Errorf("Normalize(%s) = %v, want ErrControlCharacter", target, err)
		}
		if r.URL.String() != before {
			t.Errorf("Normalize(%s) changed the target to %s on error", target, r.URL)
		}
	}
}

func TestDefaultPorts(t *testing.T) {
	tests := []struct {
		host string
		tls  bool
		want string
	}{
		{"api.example.com:443", true, "api.example.com"},
		{"api.example.com:443", false, "api.example.com:443"},
		{"api.example.com:80", false, "api.example.com"},
		{"API.example.com", true, "api.example.com"},
		{"[::1]:443", true, "[::1]"},
		{"[::1]:8443", true, "[::1]:8443"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tt.host
		if tt.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if got := Host(r); got != tt.want {
			t.Errorf("Host(%q, tls=%v) = %q, want %q", tt.host, tt.tls, got, tt.want)
		}
	}
}

func TestEncodedSlashIsRefused(t *testing.T) {
	for _, target := range []string{"/v1/events/a%2Fb", "/v1/events/a%2fb"} {
		r := httptest.NewRequest("GET", target, nil)
		if err := Normalize(r); err != ErrEncodedSlash {
			t.Errorf("Normalize(%s) = %v, want ErrEncodedSlash", target, err)
		}
	}
	r := httptest.NewRequest("GET", "/v1/events/a%20b", nil)
	if err := Normalize(r); err != nil || r.URL.Path != "/v1/events/a b" {
		t.Errorf("Normalize(a%%20b) = %v, path %q", err, r.URL.Path)
	}
}

func TestCanonicalCostsNothing(t *testing.T) {
	r := httptest.NewRequest("GET", "https://api.localhost:8443/v1/events/x", nil)
	r.TLS = &tls.ConnectionState{}
	if n := testing.AllocsPerRun(100, func() { _ = Normalize(r) }); n != 0 {
		t.Errorf("Normalize of a canonical target allocates %v times, want 0", n)
	}
}
