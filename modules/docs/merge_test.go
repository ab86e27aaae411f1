package docs

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
)

// resourcesBase is the shape of the resources handler's document: its own
// Problem, Pagination, headers, parameters and security schemes.
const resourcesBase = `{
	"openapi": "3.1.0",
	"info": {"title": "restgate resources", "version": "v1", "description": "Collections."},
	"servers": [{"url": "/"}],
	"tags": [{"name": "events", "description": "The events collection"}],
	"security": [{"bearer": []}],
	"paths": {"/v1/events": {"get": {"operationId": "list_events", "summary": "List events", "description": "A page.", "tags": ["events"],
		"responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pagination"}}}},
			"401": {"description": "Unauthorized", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}}}},
	"components": {
		"schemas": {
			"Problem": {"type": "object", "properties": {"type": {"type": "string", "format": "uri-reference"}, "title": {"type": "string"}, "status": {"type": "integer"}, "code": {"type": "string"}}, "required": ["type", "title", "status", "code"]},
			"Pagination": {"type": "object", "properties": {"total_count": {"type": "integer"}, "max_page": {"type": "integer"}}}
		},
		"headers": {"ETag": {"description": "tag", "schema": {"type": "string"}}},
		"parameters": {"IfMatch": {"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}}},
		"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
	}
}`

func decode(t *testing.T, raw []byte) obj {
	t.Helper()
	doc, err := parseDocument(raw, "application/json")
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func fixture(t *testing.T) obj {
	t.Helper()
	raw, err := os.ReadFile("testdata/fastapi_orders.json")
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, raw)
}

func service(t *testing.T, prefix, paths string) *Service {
	t.Helper()
	s := &Service{Prefix: prefix, URL: "http://127.0.0.1:8000/openapi.json", Paths: paths}
	if err := s.provision(); err != nil {
		t.Fatal(err)
	}
	return s
}

// mergeAll merges docs and fails the test on any warning.
func mergeAll(t *testing.T, base obj, svcs []*Service, docs ...obj) (obj, []string) {
	t.Helper()
	var warnings []string
	out := merge(base, svcs, docs, methodScopes(nil), "X-API-Key", func(s *Service, msg string) {
		warnings = append(warnings, s.Prefix+": "+msg)
	})
	return out, warnings
}

// validate checks a document against the OpenAPI 3.1 schema.
func validate(t *testing.T, doc obj) []byte {
	t.Helper()
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	d, err := libopenapi.NewDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(d)
	if len(errs) > 0 {
		t.Fatalf("building the validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("invalid: %s: %s (%v)", e.Message, e.Reason, e.SchemaValidationErrors)
		}
	}
	return raw
}

func get(v any, path ...string) any {
	for _, p := range path {
		v = asObj(v)[p]
	}
	return v
}

// TestMergeFastAPI: a FastAPI document mounted at /v1/orders (whose paths
// already include the prefix) joins a resources-like base with the
// gateway's additions on every operation, and the result is valid.
func TestMergeFastAPI(t *testing.T) {
	base := decode(t, []byte(resourcesBase))
	baseCopy := deepCopy(base)
	svc := service(t, "/v1/orders*", "") // the route's matcher, as written
	doc, warnings := mergeAll(t, base, []*Service{svc}, fixture(t))
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	if !reflect.DeepEqual(base, baseCopy) {
		t.Error("merge changed the base")
	}
	raw := validate(t, doc)

	paths := asObj(doc["paths"])
	for _, p := range []string{"/v1/events", "/v1/orders", "/v1/orders/{order_id}"} {
		if paths[p] == nil {
			t.Errorf("no path %s in %v", p, keys(paths))
		}
	}
	wantScope := map[string]string{"get": "read", "post": "write", "patch": "write", "delete": "write"}
	ops := 0
	for _, p := range []string{"/v1/orders", "/v1/orders/{order_id}"} {
		for method, op := range asObj(paths[p]) {
			ops++
			om := asObj(op)
			sec, _ := json.Marshal(om["security"])
			if want := `[{"bearer":["` + wantScope[method] + `"]},{"apiKey":["` + wantScope[method] + `"]}]`; string(sec) != want {
				t.Errorf("%s %s: security %s, want %s", method, p, sec, want)
			}
			resp := asObj(om["responses"])
			for _, code := range []string{"401", "403", "429", "503"} {
				if get(resp, code, "$ref") == nil {
					t.Errorf("%s %s: no gateway %s", method, p, code)
				}
			}
			_, has412 := resp["412"]
			_, has428 := resp["428"]
			if write := method == "patch" || method == "delete"; has412 != write || has428 != write {
				t.Errorf("%s %s: 412 %v, 428 %v", method, p, has412, has428)
			}
			if get(resp, "422", "content", "application/problem+json", "schema", "$ref") != "#/components/schemas/Problem" {
				t.Errorf("%s %s: the backend's 422 leaves the gateway as a problem: %v", method, p, resp["422"])
			}
			for code, r := range resp {
				if get(r, "$ref") == nil && get(r, "headers", "X-Request-Id") == nil {
					t.Errorf("%s %s %s: no X-Request-Id header", method, p, code)
				}
			}
			params, _ := json.Marshal(om["parameters"])
			if strings.Contains(strings.ToLower(string(params)), "x-auth-user") {
				t.Errorf("%s %s: the gateway's identity header is a parameter: %s", method, p, params)
			}
			if idem := strings.Contains(string(params), "IdempotencyKey"); idem != (method == "post" || method == "patch") {
				t.Errorf("%s %s: Idempotency-Key %v: %s", method, p, idem, params)
			}
			if om["description"] == "" || om["description"] == nil || len(asList(om["tags"])) != 1 {
				t.Errorf("%s %s: description %v, tags %v", method, p, om["description"], om["tags"])
			}
		}
	}
	if ops != 5 {
		t.Errorf("%d operations under /v1/orders, want 5", ops)
	}
	if get(paths, "/v1/orders", "get", "responses", "200", "headers", "ETag", "$ref") != "#/components/headers/ETag" {
		t.Error("GET 200 has no ETag header")
	}
	schemas := asObj(get(doc, "components", "schemas"))
	// the base's Pagination stays; the service's, which differs, is renamed
	if !reflect.DeepEqual(schemas["Pagination"], get(baseCopy, "components", "schemas", "Pagination")) || schemas["orders_Pagination"] == nil {
		t.Errorf("Pagination collision: %v", keys(schemas))
	}
	if get(schemas, "OrderPage", "properties", "pagination", "$ref") != "#/components/schemas/orders_Pagination" {
		t.Errorf("OrderPage's reference was not rewritten: %v", get(schemas, "OrderPage"))
	}
	// one Problem (the base's), and nothing left unused
	if !reflect.DeepEqual(schemas["Problem"], get(baseCopy, "components", "schemas", "Problem")) {
		t.Error("the base's Problem was replaced")
	}
	for _, unused := range []string{"HTTPValidationError", "ValidationError", "Message"} {
		if schemas[unused] != nil {
			t.Errorf("%s is in the document, used by nothing", unused)
		}
	}
	for _, want := range []string{`"name":"orders"`, `"#/components/responses/GatewayTooManyRequests"`, problemTypeJSON(t)} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("the document lacks %s", want)
		}
	}
	if bytes.Contains(raw, []byte("127.0.0.1")) {
		t.Error("the document names the service's internal address")
	}
	if d, _ := get(doc, "info", "description").(string); !strings.HasSuffix(d, "Also behind this gateway: Orders, under `/v1/orders`.") {
		t.Errorf("info.description %q does not name the service", d)
	}
	if get(doc, "components", "headers", "ETag", "description") != "tag" {
		t.Error("the base's ETag header was replaced")
	}
}

func problemTypeJSON(t *testing.T) string {
	b, _ := json.Marshal(obj{"type": "https://iana.org/assignments/http-problem-types#quota-exceeded"})
	return strings.Trim(string(b), "{}")
}

func keys(m obj) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestMergePaths: where a service's paths land, by its paths option.
func TestMergePaths(t *testing.T) {
	doc := func(paths ...string) obj {
		d := obj{"openapi": "3.1.0", "info": obj{"title": "t", "version": "1"}, "paths": obj{}}
		for _, p := range paths {
			asObj(d["paths"])[p] = obj{"get": obj{"responses": obj{"200": obj{"description": "ok"}}}}
		}
		return d
	}
	tests := []struct {
		name  string
		mode  string
		paths []string
		want  []string
	}{
		{"auto, the backend sees the whole path", "", []string{"/v1/orders", "/v1/orders/{id}"}, []string{"/v1/orders", "/v1/orders/{id}"}},
		{"auto, handle_path strips the prefix", "", []string{"/", "/{id}", "/{id}/lines"}, []string{"/v1/orders", "/v1/orders/{id}", "/v1/orders/{id}/lines"}},
		{"auto, one path outside the prefix", "", []string{"/v1/orders", "/health"}, []string{"/v1/orders/v1/orders", "/v1/orders/health"}},
		{"auto, a longer name is not under the prefix", "", []string{"/v1/ordersx"}, []string{"/v1/orders/v1/ordersx"}},
		{"stripped, paths that look prefixed", "stripped", []string{"/v1/orders"}, []string{"/v1/orders/v1/orders"}},
		{"prefixed, taken as they are", "prefixed", []string{"/elsewhere"}, []string{"/elsewhere"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := mergeAll(t, skeleton("API"), []*Service{service(t, "/v1/orders", tt.mode)}, doc(tt.paths...))
			got := keys(asObj(out["paths"]))
			if len(got) != len(tt.want) {
				t.Fatalf("paths %v, want %v", got, tt.want)
			}
			for _, p := range tt.want {
				if asObj(out["paths"])[p] == nil {
					t.Errorf("paths %v, want %v", got, tt.want)
				}
			}
			validate(t, out)
		})
	}
}

// TestMergeCollisions: two services with the same operation ids and
// differently shaped components of one name, and one whose path the base
// already has; identical components are shared.
func TestMergeCollisions(t *testing.T) {
	svc := func(schema string) obj {
		return decode(t, []byte(`{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
			"paths": {"/items": {"get": {"operationId": "list_items", "responses": {"200": {"description": "ok",
				"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}}},
			"components": {"schemas": {"Item": `+schema+`, "Shared": {"type": "string"}}}}`))
	}
	a, b := service(t, "/v1/a", ""), service(t, "/v1/b", "")
	a.Name = "alpha"
	clash := decode(t, []byte(`{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
		"paths": {"/v1/events": {"get": {"responses": {"200": {"description": "mine"}}}}}}`))
	c := service(t, "/v1/events", "")
	out, warnings := mergeAll(t, decode(t, []byte(resourcesBase)), []*Service{a, b, c},
		svc(`{"type": "object", "properties": {"a": {"type": "string"}}}`),
		svc(`{"type": "object", "properties": {"b": {"type": "integer"}}}`),
		clash)
	validate(t, out)
	if get(out, "paths", "/v1/a/items", "get", "operationId") != "list_items" || get(out, "paths", "/v1/b/items", "get", "operationId") != "b_list_items" {
		t.Errorf("operation ids: %v, %v", get(out, "paths", "/v1/a/items", "get", "operationId"), get(out, "paths", "/v1/b/items", "get", "operationId"))
	}
	if get(out, "paths", "/v1/b/items", "get", "responses", "200", "content", "application/json", "schema", "$ref") != "#/components/schemas/b_Item" ||
		get(out, "components", "schemas", "b_Item", "properties", "b") == nil || get(out, "components", "schemas", "Item", "properties", "a") == nil {
		t.Errorf("Item collision: %v", keys(asObj(get(out, "components", "schemas"))))
	}
	if get(out, "components", "schemas", "b_Shared") != nil {
		t.Error("an identical component was renamed instead of shared")
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "/v1/events is already in the document") {
		t.Errorf("warnings %v, want one for /v1/events", warnings)
	}
	if get(out, "paths", "/v1/events", "get", "operationId") != "list_events" {
		t.Error("a service replaced a path of the base")
	}
	// the tag of each service is defined once
	n := 0
	for _, tag := range asList(out["tags"]) {
		if get(tag, "name") == "alpha" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("tag alpha defined %d times: %v", n, out["tags"])
	}
}

// TestMergeSkeleton: services alone (nothing serves a base) make a valid
// document with the gateway's components.
func TestMergeSkeleton(t *testing.T) {
	out, _ := mergeAll(t, skeleton("Our API"), []*Service{service(t, "/v1/orders", "")}, fixture(t))
	validate(t, out)
	if get(out, "info", "title") != "Our API" || get(out, "components", "securitySchemes", "apiKey", "name") != "X-API-Key" ||
		get(out, "components", "schemas", "Problem") == nil {
		t.Errorf("skeleton: %v", out["components"])
	}
}

// TestUpgrade: an OpenAPI 3.0 document's schemas become 3.1's.
func TestUpgrade(t *testing.T) {
	doc := decode(t, []byte(`{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {},
		"components": {"schemas": {
			"A": {"type": "string", "nullable": true, "enum": ["x"]},
			"B": {"$ref": "#/components/schemas/A", "nullable": true, "description": "b"},
			"C": {"type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 9, "exclusiveMaximum": false},
			"D": {"type": "object", "properties": {"nullable": {"type": "boolean"}}}}}}`))
	upgrade(doc)
	want := decode(t, []byte(`{"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {},
		"components": {"schemas": {
			"A": {"type": ["string", "null"], "enum": ["x", null]},
			"B": {"anyOf": [{"$ref": "#/components/schemas/A"}, {"type": "null"}], "description": "b"},
			"C": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9},
			"D": {"type": "object", "properties": {"nullable": {"type": "boolean"}}}}}}`))
	got, _ := json.Marshal(doc)
	w, _ := json.Marshal(want)
	if string(got) != string(w) {
		t.Errorf("upgrade:\n got %s\nwant %s", got, w)
	}
	validate(t, doc)
}

// TestCheckDocument: what makes a service document unusable.
func TestCheckDocument(t *testing.T) {
	tests := map[string]string{
		"swagger 2.0":     `{"swagger": "2.0", "paths": {}}`,
		"no version":      `{"paths": {}}`,
		"no paths":        `{"openapi": "3.1.0"}`,
		"relative path":   `{"openapi": "3.1.0", "paths": {"orders": {}}}`,
		"no responses":    `{"openapi": "3.1.0", "paths": {"/o": {"get": {}}}}`,
		"external ref":    `{"openapi": "3.1.0", "paths": {"/o": {"$ref": "other.yaml#/paths/o"}}}`,
		"dangling ref":    `{"openapi": "3.1.0", "paths": {"/o": {"get": {"responses": {"200": {"$ref": "#/components/responses/Nope"}}}}}}`,
		"path not object": `{"openapi": "3.1.0", "paths": {"/o": 1}}`,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if err := checkDocument(decode(t, []byte(in))); err == nil {
				t.Errorf("checkDocument(%s) = nil, want an error", in)
			}
		})
	}
	if err := checkDocument(fixture(t)); err != nil {
		t.Errorf("the FastAPI fixture: %v", err)
	}
}
