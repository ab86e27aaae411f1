package canon

import (
	"crypto/tls"
	"net/http/httptest"
	"testing"
)

// TestOneResourceOneSpelling: every spelling of one resource has one key,
// and distinct resources keep distinct keys.
func TestOneResourceOneSpelling(t *testing.T) {
	same := []struct{ host, target string }{
		{"api.localhost:8443", "/v1/events/x"},
		{"api.localhost:8443", "//v1/events/x"},
		{"api.localhost:8443", "/v1/./events/x"},
		{"api.localhost:8443", "/v1/events/../events/x"},
		{"api.localhost:8443", "/v1//events///x"},
		{"API.Localhost:8443", "/v1/events/x"},
		{"api.localhost.:8443", "/v1/events/%78"},
	}
	want := ""
	for i, s := range same {
		r := httptest.NewRequest("GET", "https://"+s.host+s.target, nil)
		r.Host = s.host
		if err := Normalize(r); err != nil {
			t.Fatalf("%s%s: %v", s.host, s.target, err)
		}
		k := Key(r)
		if i == 0 {
			want = k
		} else if k != want {
			t.Errorf("Key(%s%s) = %q, want %q", s.host, s.target, k, want)
		}
		if r.URL.Path != "/v1/events/x" || r.Host != "api.localhost:8443" {
			t.Errorf("Normalize(%s%s) = %s %s", s.host, s.target, r.Host, r.URL.Path)
		}
	}
	distinct := map[string]string{}
	for _, target := range []string{"/v1/events/x", "/v1/events/x/", "/v1/events/X", "/v1/events/x%20"} {
		r := httptest.NewRequest("GET", target, nil)
		k := Key(r)
		if prev, dup := distinct[k]; dup {
			t.Errorf("%s and %s share the key %q", prev, target, k)
		}
		distinct[k] = target
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
