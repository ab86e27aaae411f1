package docs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// Service is a backend whose own OpenAPI document is part of the API's:
// its paths appear under the prefix of the route that proxies to it.
type Service struct {
	// The path prefix of the route the service is mounted on: for
	// `handle /v1/orders* { reverse_proxy … }` or `handle_path /v1/orders*`,
	// `/v1/orders` (the matcher as written, `/v1/orders*`, is the same).
	// Required.
	Prefix string `json:"prefix"`

	// Where the gateway fetches the service's OpenAPI document (JSON or
	// YAML, OpenAPI 3.1, or 3.0 which is converted), usually on loopback:
	// `http://127.0.0.1:8000/openapi.json`. Required.
	URL string `json:"url"`

	// How the document's paths relate to the prefix. `prefixed`: they
	// already include it (the backend sees the whole path: `handle` +
	// `reverse_proxy`); `stripped`: they are relative to it (`handle_path`,
	// or `uri strip_prefix`), and the prefix is put before each. Default:
	// `auto`, which is `prefixed` if every path of the document starts
	// with the prefix, and `stripped` otherwise.
	Paths string `json:"paths,omitempty"`

	// The name of the service in the reference: the tag of its untagged
	// operations, and the prefix of its components and operation ids that
	// collide with others already in the document. Default: the prefix's
	// last segment (`orders`).
	Name string `json:"name,omitempty"`

	state atomic.Pointer[fetched]
}

// fetched is the last good copy of a service's document.
type fetched struct {
	doc obj
	at  time.Time
}

const (
	pathsAuto     = "auto"
	pathsPrefixed = "prefixed"
	pathsStripped = "stripped"
)

func (s *Service) provision() error {
	if s.Prefix == "" || s.URL == "" {
		return fmt.Errorf("a service needs a prefix and a URL")
	}
	if !strings.HasPrefix(s.Prefix, "/") {
		return fmt.Errorf("service %s: the prefix must be a path starting with /", s.Prefix)
	}
	// the route's matcher as written (`/v1/orders*`) names the same prefix
	s.Prefix = strings.TrimRight(strings.TrimSuffix(s.Prefix, "*"), "/")
	if strings.ContainsAny(s.Prefix, "*{}?#") {
		return fmt.Errorf("service %s: the prefix is a path, or a path matcher ending in *", s.Prefix)
	}
	if s.Prefix == "" {
		return fmt.Errorf("service /: a service is mounted under a path prefix such as /v1/orders")
	}
	if !strings.HasPrefix(s.URL, "http://") && !strings.HasPrefix(s.URL, "https://") {
		return fmt.Errorf("service %s: the document's URL must be http:// or https://, got %q", s.Prefix, s.URL)
	}
	switch s.Paths {
	case "":
		s.Paths = pathsAuto
	case pathsAuto, pathsPrefixed, pathsStripped:
	default:
		return fmt.Errorf("service %s: paths must be auto, prefixed or stripped, got %q", s.Prefix, s.Paths)
	}
	if s.Name == "" {
		s.Name = s.Prefix[strings.LastIndexByte(s.Prefix, '/')+1:]
	}
	return nil
}

// pathsPrefixed reports whether the document's paths include the prefix.
func (s *Service) pathsPrefixed(paths []string) bool {
	switch s.Paths {
	case pathsPrefixed:
		return true
	case pathsStripped:
		return false
	}
	for _, p := range paths {
		if p != s.Prefix && !strings.HasPrefix(p, s.Prefix+"/") {
			return false
		}
	}
	return len(paths) > 0
}

// mount returns the gateway's path of a document path. A stripped
// service's root ("/") is the prefix itself.
func (s *Service) mount(p string, prefixed bool) string {
	if prefixed {
		return p
	}
	if p == "/" {
		return s.Prefix
	}
	return s.Prefix + p
}

func (s *Service) tag() string { return s.Name }

// componentPrefix is what a colliding component name or operation id of
// the service is prefixed with: its name, in the characters OpenAPI allows
// in component names.
func (s *Service) componentPrefix() string {
	var b strings.Builder
	for _, r := range s.Name {
		if r < 0x80 && (r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		b.WriteString("service")
	}
	return b.String() + "_"
}

// describe is the description of an operation the backend left without one.
func (s *Service) describe(op obj) string {
	if sum, _ := op["summary"].(string); sum != "" {
		return sum + " (served by " + s.Name + " under " + s.Prefix + ")."
	}
	return "Served by " + s.Name + " under " + s.Prefix + "."
}

// fetch gets, parses and checks the service's document, and keeps it as
// the last good copy. A failure leaves the last good copy in place.
func (s *Service) fetch(ctx context.Context, client *http.Client, maxSize int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json, application/yaml;q=0.9, */*;q=0.1")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if resp.ContentLength > maxSize {
		return fmt.Errorf("the document is %d bytes, larger than max_size (%d)", resp.ContentLength, maxSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSize+1))
	if err != nil {
		return fmt.Errorf("reading the document: %v", err)
	}
	if int64(len(body)) > maxSize {
		return fmt.Errorf("the document is larger than max_size (%d bytes)", maxSize)
	}
	doc, err := parseDocument(body, resp.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	upgrade(doc)
	if err := checkDocument(doc); err != nil {
		return err
	}
	s.state.Store(&fetched{doc: doc, at: time.Now()})
	return nil
}

// parseDocument decodes a JSON document, or a YAML one (drf-spectacular's
// default) when it is not JSON.
func parseDocument(body []byte, contentType string) (obj, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	trimmed := bytes.TrimSpace(body)
	if strings.Contains(mt, "yaml") || (len(trimmed) > 0 && trimmed[0] != '{' && trimmed[0] != '[') {
		var v any
		if err := yaml.Unmarshal(body, &v); err != nil {
			return nil, fmt.Errorf("invalid YAML: %v", err)
		}
		// through JSON, so that numbers and maps have JSON's types
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("YAML that is not JSON data: %v", err)
		}
		body = raw
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc obj
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if doc == nil {
		return nil, fmt.Errorf("the document is not a JSON object")
	}
	if dec.More() {
		return nil, fmt.Errorf("invalid JSON: data after the document")
	}
	return doc, nil
}

// refresher fetches every service's document now and then every refresh
// interval (a service whose document could not be fetched is retried
// sooner, from retryMin doubling up to the interval), until ctx is done.
type refresher struct {
	services []*Service
	client   *http.Client
	maxSize  int64
	refresh  time.Duration
	retryMin time.Duration
	logger   *zap.Logger
}

// fetchOne fetches one service's document, logging a failure at warn.
func (f *refresher) fetchOne(ctx context.Context, s *Service) bool {
	err := s.fetch(ctx, f.client, f.maxSize)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		fields := []zap.Field{zap.String("service", s.Prefix), zap.String("url", s.URL), zap.Error(err)}
		if last := s.state.Load(); last != nil {
			fields = append(fields, zap.Time("keeping_copy_from", last.at))
		}
		f.logger.Warn("skipping a service's OpenAPI document: it could not be fetched or is not valid", fields...)
		return false
	}
	f.logger.Debug("fetched a service's OpenAPI document", zap.String("service", s.Prefix), zap.String("url", s.URL))
	return true
}

// run keeps one service's document fresh until ctx is done.
func (f *refresher) run(ctx context.Context, s *Service) {
	backoff := f.retryMin
	for {
		wait := f.refresh
		if !f.fetchOne(ctx, s) {
			wait = backoff
			backoff = min(backoff*2, f.refresh)
		} else {
			backoff = f.retryMin
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
