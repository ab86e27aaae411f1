package httpcond

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestEvaluate(t *testing.T) {
	mod := time.Date(2026, 11, 1, 12, 0, 0, 500, time.UTC)
	before := mod.Add(-time.Hour).Format(http.TimeFormat)
	at := mod.Format(http.TimeFormat)
	after := mod.Add(time.Hour).Format(http.TimeFormat)
	const etag = `"v2"`
	tests := []struct {
		name    string
		method  string
		headers []string
		exists  bool
		etag    string
		want    Result
	}{
		{"no preconditions", "GET", nil, true, etag, Proceed},
		{"if-match hit", "PUT", []string{"If-Match", `"v2"`}, true, etag, Proceed},
		{"if-match miss", "PUT", []string{"If-Match", `"v1"`}, true, etag, Failed},
		{"if-match list hit", "PUT", []string{"If-Match", `"v0", "v2"`}, true, etag, Proceed},
		{"if-match two lines", "PUT", []string{"If-Match", `"v0"`, "If-Match", `"v2"`}, true, etag, Proceed},
		{"if-match weak never matches", "PUT", []string{"If-Match", `W/"v2"`}, true, etag, Failed},
		{"if-match against weak tag", "PUT", []string{"If-Match", `"v2"`}, true, `W/"v2"`, Failed},
		{"if-match star exists", "DELETE", []string{"If-Match", `*`}, true, etag, Proceed},
		{"if-match star missing", "PUT", []string{"If-Match", `*`}, false, "", Failed},
		{"if-match malformed", "PUT", []string{"If-Match", `v2`}, true, etag, Failed},
		{"if-match unterminated", "PUT", []string{"If-Match", `"v2`}, true, etag, Failed},
		{"if-match empty tag", "PUT", []string{"If-Match", `""`}, true, etag, Failed},
		{"if-match wins over ius", "PUT", []string{"If-Match", `"v2"`, "If-Unmodified-Since", before}, true, etag, Proceed},
		{"ius modified since", "PUT", []string{"If-Unmodified-Since", before}, true, etag, Failed},
		{"ius same second", "PUT", []string{"If-Unmodified-Since", at}, true, etag, Proceed},
		{"ius later", "PUT", []string{"If-Unmodified-Since", after}, true, etag, Proceed},
		{"ius bad date ignored", "PUT", []string{"If-Unmodified-Since", "yesterday"}, true, etag, Proceed},
		{"inm hit get", "GET", []string{"If-None-Match", `"v2"`}, true, etag, NotModified},
		{"inm weak hit get", "GET", []string{"If-None-Match", `W/"v2"`}, true, etag, NotModified},
		{"inm hit head", "HEAD", []string{"If-None-Match", `"x", W/"v2"`}, true, etag, NotModified},
		{"inm miss", "GET", []string{"If-None-Match", `"v1"`}, true, etag, Proceed},
		{"inm star get", "GET", []string{"If-None-Match", `*`}, true, etag, NotModified},
		{"inm star put exists", "PUT", []string{"If-None-Match", `*`}, true, etag, Failed},
		{"inm star put missing", "PUT", []string{"If-None-Match", `*`}, false, "", Proceed},
		{"inm hit put", "PUT", []string{"If-None-Match", `"v2"`}, true, etag, Failed},
		{"inm wins over ims", "GET", []string{"If-None-Match", `"v1"`, "If-Modified-Since", after}, true, etag, Proceed},
		{"ims not modified", "GET", []string{"If-Modified-Since", at}, true, etag, NotModified},
		{"ims modified", "GET", []string{"If-Modified-Since", before}, true, etag, Proceed},
		{"ims ignored on put", "PUT", []string{"If-Modified-Since", after}, true, etag, Proceed},
		{"ims bad date", "GET", []string{"If-Modified-Since", "soon"}, true, etag, Proceed},
		{"inm malformed list", "GET", []string{"If-None-Match", `"v2" garbage`}, true, etag, NotModified},
		{"inm malformed first", "GET", []string{"If-None-Match", `garbage, "v2"`}, true, etag, Proceed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "/", nil)
			for i := 0; i+1 < len(tt.headers); i += 2 {
				r.Header.Add(tt.headers[i], tt.headers[i+1])
			}
			if got := Evaluate(r, tt.exists, tt.etag, mod); got != tt.want {
				t.Errorf("Evaluate(%v) = %v, want %v", tt.headers, got, tt.want)
			}
		})
	}
}
