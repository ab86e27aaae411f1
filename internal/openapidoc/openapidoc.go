// Package openapidoc holds the OpenAPI 3.1 components that both documents
// the gateway serves define: the resources handler's (/v1/openapi.json)
// and the merged one of api_docs. Each is defined here once, so the two
// cannot drift: the headers the gateway sets, the request headers it
// reads (If-Match, If-None-Match, Idempotency-Key) and the API-key
// security schemes. The problem schema is problem.Schema.
//
// Every function returns new maps, so a caller may change its copy.
package openapidoc

import "fmt"

type obj = map[string]any

// The names of the security schemes under components/securitySchemes.
const (
	SchemeBearer = "bearer"
	SchemeAPIKey = "apiKey"
)

// ProblemSchema is the name of problem.Schema under components/schemas.
const ProblemSchema = "Problem"

// The names of the request headers the gateway reads, under
// components/parameters.
const (
	ParamIfMatch        = "IfMatch"
	ParamIfNoneMatch    = "IfNoneMatch"
	ParamIdempotencyKey = "IdempotencyKey"
)

// headers are the response headers the documents describe, by the name
// they have under components/headers (the header's own name).
var headers = map[string]struct {
	desc   string
	schema func() obj
}{
	"ETag":             {"The representation's entity tag, for If-Match and If-None-Match", str},
	"Last-Modified":    {"When the representation last changed", str},
	"Location":         {"The created resource", func() obj { return obj{"type": "string", "format": "uri-reference"} }},
	"X-Request-Id":     {"The request's id, also in every problem's request_id and the access log", str},
	"RateLimit":        {"Quota left per policy: \"name\";r=<requests left>;t=<seconds until more> (draft-ietf-httpapi-ratelimit-headers)", str},
	"RateLimit-Policy": {"The quota policies: \"name\";q=<requests>;w=<window seconds>", str},
	"Retry-After":      {"Seconds until a retry can succeed", func() obj { return obj{"type": "integer", "minimum": 0} }},
	"WWW-Authenticate": {"The Bearer challenge (RFC 6750), with error=\"insufficient_scope\" and the scope on a 403", str},
}

func str() obj { return obj{"type": "string"} }

// Headers returns the definitions of the named response headers, for
// components/headers. A name this package does not define is a
// programming error, and panics.
func Headers(names ...string) map[string]any {
	out := obj{}
	for _, n := range names {
		h, ok := headers[n]
		if !ok {
			panic(fmt.Sprintf("openapidoc: no header %q", n))
		}
		out[n] = obj{"description": h.desc, "schema": h.schema()}
	}
	return out
}

// HeaderRefs returns references to the named components/headers, for a
// response's headers.
func HeaderRefs(names ...string) map[string]any {
	out := obj{}
	for _, n := range names {
		out[n] = obj{"$ref": "#/components/headers/" + n}
	}
	return out
}

// ProblemRef is a reference to problem.Schema under components/schemas.
func ProblemRef() map[string]any {
	return obj{"$ref": "#/components/schemas/" + ProblemSchema}
}

// ProblemContent is the content of an error response: a problem
// (application/problem+json).
func ProblemContent() map[string]any {
	return obj{"application/problem+json": obj{"schema": ProblemRef()}}
}

// Parameters returns the request headers the gateway reads, for
// components/parameters: If-Match, If-None-Match and Idempotency-Key.
func Parameters() map[string]any {
	return obj{
		ParamIfMatch: obj{"name": "If-Match", "in": "header", "required": false, "schema": str(),
			"description": "Optimistic locking: the ETag you read. A stale tag is a 412 and nothing changes; `*` requires that the resource exists."},
		ParamIfNoneMatch: obj{"name": "If-None-Match", "in": "header", "required": false, "schema": str(),
			"description": "The ETag you hold: a 304 without a body if it is still current."},
		ParamIdempotencyKey: obj{
			"name": "Idempotency-Key", "in": "header", "required": false,
			"description": "Makes a retry of this request take effect once (draft-ietf-httpapi-idempotency-key-header): a quoted string unique to the operation, such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\". A retry with the same key and request gets the first response (with Idempotent-Replayed: true); one while the first is in flight gets 409; the same key with another request gets 422.",
			"schema":      obj{"type": "string", "maxLength": 257},
		},
	}
}

// SecuritySchemes returns the two ways to send an API key, for
// components/securitySchemes: `Authorization: Bearer` and the header
// apiKeyHeader (api_auth's key_header).
func SecuritySchemes(apiKeyHeader string) map[string]any {
	oneKey := "Send one API key per request: either `Authorization: Bearer <key>` or `" + apiKeyHeader + ": <key>`, never both (two different keys are a 400)."
	return obj{
		SchemeBearer: obj{"type": "http", "scheme": "bearer", "description": oneKey},
		SchemeAPIKey: obj{"type": "apiKey", "in": "header", "name": apiKeyHeader, "description": oneKey},
	}
}

// ParamRef is a reference to one of Parameters, for an operation's
// parameters.
func ParamRef(name string) map[string]any {
	return obj{"$ref": "#/components/parameters/" + name}
}
