package docs

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/openapidoc"
	"github.com/restgate/restgate/modules/problem"
)

// obj is a JSON object of an OpenAPI document.
type obj = map[string]any

// gatewayStatuses are the problem responses the gateway itself can give on
// any proxied operation, with the methods that can get each (nil: every
// method): no key or a bad one (401), a key without the method's scope
// (403), a stale If-Match (412) and a missing one where it is required
// (428) on writes, a rate limit (429), and a shared store that cannot
// decide (503).
var gatewayStatuses = []struct {
	status  int
	name    string // the component under #/components/responses
	code    string // the problem's code in the example
	detail  string
	methods []string
}{
	{http.StatusUnauthorized, "GatewayUnauthorized", "unauthorized", "an API key is required: send it as `Authorization: Bearer <key>`", nil},
	{http.StatusForbidden, "GatewayForbidden", "insufficient_scope", "this key lacks the write scope that POST needs", nil},
	{http.StatusPreconditionFailed, "GatewayPreconditionFailed", "precondition_failed", "the resource has changed since the If-Match tag was read", []string{"PUT", "PATCH", "DELETE"}},
	{http.StatusPreconditionRequired, "GatewayPreconditionRequired", "if_match_required", "send If-Match with the ETag you read", []string{"PUT", "PATCH", "DELETE"}},
	{http.StatusTooManyRequests, "GatewayTooManyRequests", "rate_limited", "rate limit exceeded; retry after 7s", nil},
	{http.StatusServiceUnavailable, "GatewayServiceUnavailable", "rate_limit_unavailable", "the rate limit cannot be decided now; retry shortly", nil},
}

// problemType is the type of an example problem: the IANA-registered type
// for a 429 (as api_errors sends it), about:blank otherwise.
func problemType(status int) string {
	if status == http.StatusTooManyRequests {
		return problem.TypeQuotaExceeded
	}
	return "about:blank"
}

// The security schemes the gateway adds to a document (merge.go names
// them).
const (
	schemeBearer = openapidoc.SchemeBearer
	schemeAPIKey = openapidoc.SchemeAPIKey
)

// gatewayComponents returns what the gateway's additions refer to, by
// components section; the definitions shared with the resources handler's
// document come from openapidoc. A base document that already defines one
// (the resources handler's does: Problem, the headers, the parameters, the
// security schemes) keeps its own, and the gateway's operations refer to
// it. apiKeyHeader names the API-key header scheme.
func gatewayComponents(apiKeyHeader string) map[string]obj {
	responses := obj{}
	for _, s := range gatewayStatuses {
		names := []string{"X-Request-Id", "RateLimit", "RateLimit-Policy"}
		switch s.status {
		case http.StatusUnauthorized, http.StatusForbidden:
			names = append(names, "WWW-Authenticate")
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			names = append(names, "Retry-After")
		}
		responses[s.name] = obj{
			"description": http.StatusText(s.status) + " (from the gateway)",
			"headers":     openapidoc.HeaderRefs(names...),
			"content": obj{"application/problem+json": obj{
				"schema": openapidoc.ProblemRef(),
				"example": obj{
					"type": problemType(s.status), "title": http.StatusText(s.status), "status": s.status,
					"detail": s.detail, "code": s.code, "request_id": "01JD3Q6X5ZV6M4T6W2K8R9S0AB",
				},
			}},
		}
	}
	return map[string]obj{
		"schemas":         {openapidoc.ProblemSchema: problem.Schema()},
		"responses":       responses,
		"headers":         openapidoc.Headers("ETag", "X-Request-Id", "RateLimit", "RateLimit-Policy", "Retry-After", "WWW-Authenticate"),
		"parameters":      openapidoc.Parameters(),
		"securitySchemes": openapidoc.SecuritySchemes(apiKeyHeader),
	}
}

// methods are the operation keys of a path item.
var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// gatewayParams are the request headers the gateway reads per method.
func gatewayParams(method string) []string {
	switch method {
	case "GET", "HEAD":
		return []string{openapidoc.ParamIfNoneMatch}
	case "POST":
		return []string{openapidoc.ParamIdempotencyKey}
	case "PATCH":
		return []string{openapidoc.ParamIdempotencyKey, openapidoc.ParamIfMatch}
	case "PUT", "DELETE":
		return []string{openapidoc.ParamIfMatch}
	}
	return nil
}

// addGateway adds to one proxied operation what the gateway does to it:
// the security requirement with the method's scope, the problem responses
// the gateway can give, the response headers it sets, the request headers
// it reads; every error response the backend documents leaves the gateway
// as a problem, so its content becomes the Problem schema. Identity
// headers the gateway sets (X-Auth-User, …) are no parameters a client can
// send, and are removed. params are the components the document has, to
// reuse their names.
func addGateway(op obj, method string, scope string, schemes []string, params obj) {
	var sec []any
	for _, s := range schemes {
		sec = append(sec, obj{s: []any{scope}})
	}
	op["security"] = sec

	var kept []any
	have := map[string]bool{}
	for _, p := range asList(op["parameters"]) {
		pm, _ := p.(obj)
		name, in := paramName(pm, params)
		if in == "header" && isIdentityHeader(name) {
			continue
		}
		have[in+":"+strings.ToLower(name)] = true
		kept = append(kept, p)
	}
	for _, ref := range gatewayParams(method) {
		pm, _ := params[ref].(obj)
		name, _ := pm["name"].(string)
		if !have["header:"+strings.ToLower(name)] {
			kept = append(kept, openapidoc.ParamRef(ref))
		}
	}
	if len(kept) > 0 {
		op["parameters"] = kept
	} else {
		delete(op, "parameters")
	}

	responses, _ := op["responses"].(obj)
	if responses == nil {
		responses = obj{}
		op["responses"] = responses
	}
	for code, r := range responses {
		rm, ok := r.(obj)
		if !ok || rm["$ref"] != nil {
			continue
		}
		hdrs, _ := rm["headers"].(obj)
		if hdrs == nil {
			hdrs = obj{}
		}
		names := []string{"X-Request-Id", "RateLimit", "RateLimit-Policy"}
		if (method == "GET" || method == "HEAD") && strings.HasPrefix(code, "2") {
			names = append(names, "ETag")
		}
		for n, ref := range openapidoc.HeaderRefs(names...) {
			if !hasKeyFold(hdrs, n) {
				hdrs[n] = ref
			}
		}
		rm["headers"] = hdrs
		if isError(code) && rm["content"] != nil {
			rm["content"] = openapidoc.ProblemContent()
		}
	}
	for _, s := range gatewayStatuses {
		code := strconv.Itoa(s.status)
		if _, ok := responses[code]; ok || (s.methods != nil && !slices.Contains(s.methods, method)) {
			continue
		}
		responses[code] = obj{"$ref": "#/components/responses/" + s.name}
	}
}

// isError reports whether a responses key is a 4xx or 5xx (or a range).
func isError(code string) bool { return code != "" && (code[0] == '4' || code[0] == '5') }

// paramName returns a parameter's name and location, through a local
// reference to components/parameters.
func paramName(p obj, params obj) (name, in string) {
	if ref, ok := p["$ref"].(string); ok {
		p, _ = params[strings.TrimPrefix(ref, "#/components/parameters/")].(obj)
	}
	name, _ = p["name"].(string)
	in, _ = p["in"].(string)
	return name, in
}

// isIdentityHeader reports whether a header parameter is one the gateway
// sets for the backend (in any spelling FastAPI and others give it).
func isIdentityHeader(name string) bool {
	n := strings.ReplaceAll(name, "_", "-")
	for _, h := range []string{identity.UserHeader, identity.ScopesHeader, identity.IssuerHeader} {
		if strings.EqualFold(n, h) {
			return true
		}
	}
	return false
}

func hasKeyFold(m obj, key string) bool {
	for k := range m {
		if strings.EqualFold(k, key) {
			return true
		}
	}
	return false
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
