package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// The "+ the chain's fields" rows answer where the default chain's added
// cost lives: bare Caddy, with the same access log and HSTS, sets every
// field the chain adds to a response and to the upstream request, with the
// chain's own values, statically (`header`, `request_header`). What that
// costs over bare Caddy is Caddy's work on those fields (setting, writing,
// logging them); what the chain costs over it is restgate's handlers'.

// addedHeaders are the fields the default chain adds, read from a running
// copy of it: response fields (on a miss and on a hit) and upstream request
// fields, and the request fields it removes before forwarding.
type addedHeaders struct {
	miss, hit http.Header
	upstream  http.Header
	removed   []string
}

// proxiedByCaddy are fields that Caddy's reverse_proxy, net/http, Go's
// client or the shipped Caddyfile's own `header` line set on both sides of
// a comparison: never counted as the chain's.
var proxiedByCaddy = []string{"Date", "Server", "Content-Length", "Content-Type", "Strict-Transport-Security",
	"Via", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Accept-Encoding", "User-Agent"}

// readAddedHeaders asks the default chain at base (keyed with header) and
// the backend directly for the same documents, and keeps what differs.
func readAddedHeaders(base, backend, header string) (addedHeaders, error) {
	var a addedHeaders
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(url string, keyed bool) (*http.Response, []byte, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if k, v, ok := strings.Cut(header, ": "); ok && keyed {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return resp, body, err
	}
	diff := func(path string, keepVia bool) (http.Header, error) {
		// twice through the chain: the second GET of /cached is a hit
		var chain *http.Response
		for range 2 {
			r, _, err := get(base+path, true)
			if err != nil {
				return nil, err
			}
			chain = r
		}
		ref, _, err := get(backend+path, false)
		if err != nil {
			return nil, err
		}
		out := http.Header{}
		for name, vs := range chain.Header {
			if name == "Via" && keepVia {
				out[name] = vs
				continue
			}
			if slices.Contains(proxiedByCaddy, name) || slices.Equal(ref.Header[name], vs) {
				continue
			}
			out[name] = vs
		}
		return out, nil
	}
	var err error
	if a.miss, err = diff("/doc", false); err != nil {
		return a, err
	}
	// a hit is answered from the cache, with the stored response's Via
	if a.hit, err = diff("/cached", true); err != nil {
		return a, err
	}
	// the upstream request: the backend echoes the fields it received
	var sent, direct http.Header
	for _, x := range []struct {
		url   string
		keyed bool
		into  *http.Header
	}{{base + "/headers", true, &sent}, {backend + "/headers", true, &direct}} {
		_, body, err := get(x.url, x.keyed)
		if err != nil {
			return a, err
		}
		if err := json.Unmarshal(body, x.into); err != nil {
			return a, fmt.Errorf("%s: %v", x.url, err)
		}
	}
	a.upstream = http.Header{}
	for name, vs := range sent {
		if !slices.Contains(proxiedByCaddy, name) && !slices.Equal(direct[name], vs) {
			a.upstream[name] = vs
		}
	}
	for name := range direct {
		if _, ok := sent[name]; !ok && !slices.Contains(proxiedByCaddy, name) {
			a.removed = append(a.removed, name)
		}
	}
	slices.Sort(a.removed)
	if len(a.miss) == 0 || len(a.hit) == 0 || len(a.upstream) == 0 {
		return a, fmt.Errorf("%s: no added fields read (miss %v, hit %v, upstream %v)", base, a.miss, a.hit, a.upstream)
	}
	return a, nil
}

// headerBlock is a `header` directive setting h's fields.
func headerBlock(h http.Header) string {
	var b strings.Builder
	b.WriteString("\theader {\n")
	for _, name := range sortedNames(h) {
		for _, v := range h[name] {
			fmt.Fprintf(&b, "\t\t+%s %s\n", name, caddyQuote(v))
		}
	}
	b.WriteString("\t}\n")
	return b.String()
}

// requestHeaders is the `request_header` lines that add a's upstream
// fields and remove the fields the chain removes.
func (a addedHeaders) requestHeaders() string {
	var b strings.Builder
	for _, name := range sortedNames(a.upstream) {
		fmt.Fprintf(&b, "\trequest_header %s %s\n", name, caddyQuote(strings.Join(a.upstream[name], ", ")))
	}
	for _, name := range a.removed {
		fmt.Fprintf(&b, "\trequest_header -%s\n", name)
	}
	return b.String()
}

// names lists a's fields for the report.
func (a addedHeaders) names() string {
	list := func(h http.Header) string { return "`" + strings.Join(sortedNames(h), "`, `") + "`" }
	s := fmt.Sprintf("on a miss %s; on a hit %s; to the upstream request %s", list(a.miss), list(a.hit), list(a.upstream))
	if len(a.removed) > 0 {
		s += ", removing `" + strings.Join(a.removed, "`, `") + "`"
	}
	return s
}

func sortedNames(h http.Header) []string { return slices.Sorted(maps.Keys(h)) }

// caddyQuote quotes a value for a Caddyfile, as one token.
func caddyQuote(v string) string {
	return `"` + strings.ReplaceAll(v, `"`, `\"`) + `"`
}
