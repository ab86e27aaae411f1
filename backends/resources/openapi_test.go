package resources

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
)

// TestOpenAPIIsValid validates the served document against the OpenAPI 3.1
// schema (libopenapi-validator, which embeds it), and checks what API
// tools need from it: a server, tags, documented headers and responses.
func TestOpenAPIIsValid(t *testing.T) {
	h := newTestHandler(t, testConfig)
	r := do(t, h, "GET", "/v1/openapi.json", "") // httptest's host: example.com
	raw := r.want(200).Body.Bytes()
	doc, err := libopenapi.NewDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("building the validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("%s: %s (%v)", e.Message, e.Reason, e.SchemaValidationErrors)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	servers, _ := m["servers"].([]any)
	if len(servers) != 1 || servers[0].(map[string]any)["url"] != "/" {
		t.Errorf("servers = %v, want the origin the document was fetched from (relative)", m["servers"])
	}
	if sec := m["security"].([]any); len(sec) != 1 {
		t.Errorf("security = %v: one requirement, so a client sends one credential", sec)
	}
	ops := 0
	for path, item := range m["paths"].(map[string]any) {
		for method, op := range item.(map[string]any) {
			if method == "parameters" {
				continue
			}
			ops++
			om := op.(map[string]any)
			if tags, _ := om["tags"].([]any); len(tags) != 1 {
				t.Errorf("%s %s: tags %v", method, path, om["tags"])
			}
			if s, _ := om["summary"].(string); strings.Contains(s, " a e") || strings.Contains(s, " a i") || strings.Contains(s, " a o") {
				t.Errorf("%s %s: summary %q", method, path, s)
			}
			if d, _ := om["description"].(string); d == "" {
				t.Errorf("%s %s: no description", method, path)
			}
		}
	}
	for _, want := range []string{`"/v1/health"`, `"304"`, `"412"`, `"428"`, `"429"`, `"#/components/headers/Retry-After"`, `"#/components/headers/RateLimit"`,
		`"#/components/headers/Location"`, `"#/components/parameters/IfMatch"`, `"#/components/parameters/IdempotencyKey"`, `"Create an event"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("the document lacks %s", want)
		}
	}
	t.Logf("%d operations, %d bytes", ops, len(raw))
}
