package resources

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/internal/openapidoc"
	"github.com/restgate/restgate/modules/problem"
)

// serveOpenAPI answers GET /v1/openapi.json with the document generated at
// provision time from the configured collections, so it cannot drift from
// what the handler serves.
func (h *Handler) serveOpenAPI(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return h.fail(w, r, problem.New(http.StatusMethodNotAllowed, r.Method+" is not allowed here"))
	}
	// the document names no host (its server is relative), so one
	// representation serves every Host and nothing varies on it
	w.Header().Set("ETag", h.openapiETag)
	w.Header().Set("Cache-Control", openAPICacheControl)
	if httpcond.Evaluate(r, true, h.openapiETag, time.Time{}) == httpcond.NotModified {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	writeJSON(w, r, http.StatusOK, h.openapi)
	return nil
}

// openAPICacheControl: the document changes when the configuration does,
// so a cache revalidates it (with its ETag) on every use.
const openAPICacheControl = "no-cache"

// openAPI builds an OpenAPI 3.1 document of the collections.
func (h *Handler) openAPI() ([]byte, error) {
	type obj = map[string]any
	schemas := obj{
		openapidoc.ProblemSchema: problem.Schema(),
		"Pagination": obj{
			"type": "object",
			"properties": obj{
				"total_count": obj{"type": "integer", "minimum": 0},
				"max_page":    obj{"type": "integer", "minimum": 1},
			},
			"required": []string{"total_count", "max_page"},
		},
	}
	hdrRef := openapidoc.HeaderRefs
	problemResp := func(desc string, status int) obj {
		names := []string{"X-Request-Id", "RateLimit", "RateLimit-Policy"}
		if status == http.StatusTooManyRequests {
			names = append(names, "Retry-After")
		}
		return obj{"description": desc, "headers": hdrRef(names...), "content": openapidoc.ProblemContent()}
	}
	errorResponses := func(codes ...int) obj {
		out := obj{}
		for _, c := range codes {
			out[strconv.Itoa(c)] = problemResp(http.StatusText(c), c)
		}
		return out
	}
	paths := obj{}
	var tagList []any
	for _, c := range h.Collections {
		name := schemaName(c)
		props := obj{}
		var required []string
		inputProps := obj{}
		for _, f := range c.Fields {
			s := obj{}
			if f.Type != "" {
				s["type"] = f.Type
			}
			if f.Type == "array" {
				s["items"] = obj{}
			}
			if len(f.Enum) > 0 {
				s["enum"] = f.Enum
			}
			if f.Default != nil {
				s["default"] = f.Default
			}
			inputProps[f.Name] = s
			if f.Required && (f.Default == nil) {
				required = append(required, f.Name)
			}
			if !f.WriteOnly {
				props[f.Name] = s
			} else {
				s["writeOnly"] = true
			}
		}
		if c.Key == defaultKey {
			props[defaultKey] = obj{"type": "string", "format": "uuid", "readOnly": true}
		} else if _, ok := inputProps[c.Key]; !ok {
			inputProps[c.Key] = obj{"type": "string", "minLength": 1, "maxLength": maxKeyLen}
			props[c.Key] = inputProps[c.Key]
			required = append(required, c.Key)
		}
		if c.Key != defaultKey && !slices.Contains(required, c.Key) {
			required = append(required, c.Key)
		}
		props[metaCreated] = obj{"type": "string", "format": "date-time", "readOnly": true}
		props[metaModified] = obj{"type": []string{"string", "null"}, "format": "date-time", "readOnly": true}
		if c.Owned {
			props[metaOwner] = obj{"type": "string", "readOnly": true}
		}
		input := obj{"type": "object", "properties": inputProps}
		if len(c.Fields) > 0 {
			input["additionalProperties"] = false
		}
		if len(required) > 0 {
			input["required"] = required
		}
		schemas[name] = obj{"type": "object", "properties": props}
		schemas[name+"Input"] = input
		ref := obj{"$ref": "#/components/schemas/" + name}
		inRef := obj{"$ref": "#/components/schemas/" + name + "Input"}
		docResp := func(desc string, extra ...string) obj {
			return obj{
				"description": desc,
				"headers":     hdrRef(append([]string{"ETag", "Last-Modified", "X-Request-Id", "RateLimit", "RateLimit-Policy"}, extra...)...),
				"content":     obj{"application/json": obj{"schema": ref}},
			}
		}
		tags := []string{c.Name}
		tagList = append(tagList, obj{"name": c.Name, "description": "The " + c.Name + " collection" + parentNote(c)})
		one := article(singular(c))
		base, params := "/"+c.Name, []any{}
		if c.parent != nil {
			pk := c.parent.Key
			base = "/" + c.parent.Name + "/{" + c.parent.Name + "_" + pk + "}/" + c.Name
			params = append(params, obj{"name": c.parent.Name + "_" + pk, "in": "path", "required": true, "schema": obj{"type": "string"}})
		}
		listParams := append([]any{
			obj{"name": "page", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "default": 1}},
			obj{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 1, "maximum": maxLimit, "default": defaultLimit}},
			obj{"name": "sort", "in": "query", "description": "comma-separated fields, each optionally prefixed by + or -: " + strings.Join(c.sortableNames(), ", "), "schema": obj{"type": "string"}},
		}, params...)
		for _, n := range c.sortableNames() {
			if n != metaCreated && n != metaModified {
				listParams = append(listParams, obj{"name": n, "in": "query", "description": "equality filter", "schema": obj{"type": "string"}})
			}
		}
		idemKey := openapidoc.ParamRef(openapidoc.ParamIdempotencyKey)
		ifMatch := openapidoc.ParamRef(openapidoc.ParamIfMatch)
		create := errorResponses(400, 401, 403, 404, 409, 413, 415, 422, 429)
		create["201"] = docResp("Created", "Location")
		if c.Upsert {
			create["200"] = docResp("Updated (upsert)")
		}
		list := errorResponses(401, 403, 404, 422, 429)
		list["200"] = obj{"description": "A page of " + c.Name, "headers": hdrRef("X-Request-Id", "RateLimit", "RateLimit-Policy"), "content": obj{"application/json": obj{"schema": obj{
			"type":       "object",
			"properties": obj{"items": obj{"type": "array", "items": ref}, "pagination": obj{"$ref": "#/components/schemas/Pagination"}},
			"required":   []string{"items", "pagination"},
		}}, eventStreamType: obj{
			"schema": obj{"type": "string", "description": "Server-sent events: `created`, `updated`, `deleted` (and `reset`), each with an `id` to resume from; data: " +
				`{"url": "…", "etag": "…", "resource": {…}} (no resource on deleted)`},
		}}}
		list["429"].(obj)["description"] = "Too Many Requests (also: this principal's change streams are at `feed_max_streams`)"
		listParams = append(listParams,
			obj{"name": "Last-Event-ID", "in": "header", "description": "change feed: resume after this event id", "schema": obj{"type": "string"}},
			obj{"name": lastEventIDParam, "in": "query", "description": "change feed: resume after this event id (for clients that cannot set Last-Event-ID)", "schema": obj{"type": "integer", "minimum": 0}})
		paths[h.Prefix+base] = obj{
			"get": obj{"operationId": "list_" + c.Name, "summary": "List " + c.Name, "tags": tags, "parameters": listParams, "responses": list,
				"description": "A page of " + c.Name + " (`page` from 1, `limit` up to " + strconv.Itoa(maxLimit) + "), sorted by `sort` and filtered by `field=value`. " +
					"With `Accept: text/event-stream`, the collection's change feed instead: every change from now (or after `Last-Event-ID`), filtered as the list is" + ownedNote(c) +
					"; a `reset` event when the id is older than the change log (list again, then follow)."},
			"post": obj{"operationId": "create_" + singular(c), "summary": "Create " + one, "tags": tags, "parameters": append([]any{idemKey}, params...),
				"description": "Creates " + one + "; `Location` names it. An existing key is a 409; invalid fields are a 422 with a pointer to each.", "requestBody": obj{"required": true, "content": obj{"application/json": obj{"schema": inRef}}}, "responses": create},
		}
		itemParams := append(append([]any{}, params...), obj{"name": c.Key, "in": "path", "required": true, "schema": obj{"type": "string"}})
		get := errorResponses(401, 403, 404, 429)
		get["200"] = docResp("The " + singular(c))
		get["304"] = obj{"description": "Not Modified: the If-None-Match tag is current", "headers": hdrRef("ETag", "X-Request-Id")}
		put := errorResponses(400, 401, 403, 404, 412, 413, 415, 422, 428, 429)
		put["200"] = docResp("Updated")
		patch := errorResponses(400, 401, 403, 404, 409, 412, 413, 415, 422, 428, 429)
		patch["200"] = docResp("Updated")
		del := errorResponses(401, 403, 404, 409, 412, 428, 429)
		del["204"] = obj{"description": "Deleted"}
		paths[h.Prefix+base+"/{"+c.Key+"}"] = obj{
			"parameters": itemParams,
			"get": obj{"operationId": "get_" + singular(c), "summary": "Get " + one, "tags": tags, "responses": get,
				"parameters": []any{openapidoc.ParamRef(openapidoc.ParamIfNoneMatch)}, "description": "The " + singular(c) + ", with its ETag; `If-None-Match` with a current tag is a 304."},
			"put": obj{"operationId": "replace_" + singular(c), "summary": "Replace " + one, "tags": tags, "responses": put,
				"parameters": []any{ifMatch}, "description": "Replaces the whole " + singular(c) + ". With `If-Match`, a stale tag is a 412 and nothing changes.",
				"requestBody": obj{"required": true, "content": obj{"application/json": obj{"schema": inRef}}}},
			"patch": obj{"operationId": "update_" + singular(c), "summary": "Update " + one + " with a JSON merge patch", "tags": tags, "responses": patch,
				"parameters": []any{idemKey, ifMatch}, "description": "Applies a JSON merge patch (RFC 7396). With `If-Match`, a stale tag is a 412 and nothing changes.",
				"requestBody": obj{"required": true, "content": obj{mergePatchType: obj{"schema": obj{"type": "object"}}, "application/json": obj{"schema": obj{"type": "object"}}}}},
			"delete": obj{"operationId": "delete_" + singular(c), "summary": "Delete " + one, "tags": tags, "responses": del,
				"parameters": []any{ifMatch}, "description": "Deletes the " + singular(c) + h.cascadeNote(c) + ". With `If-Match`, a stale tag is a 412."},
		}
	}
	paths[h.Prefix+"/health"] = obj{"get": obj{
		"operationId": "health", "summary": "Health check", "tags": []string{"service"}, "security": []any{},
		"description": "Answers while the gateway is up; needs no key.",
		"responses": obj{"200": obj{"description": "Up", "content": obj{"application/json": obj{"schema": obj{
			"type": "object", "properties": obj{"status": obj{"type": "string"}, "version": obj{"type": "string"}}, "required": []string{"status", "version"},
		}}}}},
	}}
	paths[h.Prefix+"/openapi.json"] = obj{"get": obj{
		"operationId": "openapi", "summary": "This document", "tags": []string{"service"}, "security": []any{},
		"description": "The OpenAPI 3.1 description of this API, generated from the configured collections; needs no key.",
		"responses":   obj{"200": obj{"description": "The document", "content": obj{"application/json": obj{"schema": obj{"type": "object"}}}}},
	}}
	tagList = append(tagList, obj{"name": "service", "description": "Health and the API description"})
	doc := obj{
		"openapi": "3.1.0",
		"info": obj{"title": "restgate resources", "version": "v1",
			"description": "Conventional REST collections behind the restgate gateway: API keys with scopes, rate limits (RateLimit headers), ETags with conditional requests, Idempotency-Key, and RFC 9457 problem details for every error.",
			"contact":     obj{"name": "restgate", "url": "https://github.com/restgate/restgate"},
			"license":     obj{"name": "See the repository", "url": "https://github.com/restgate/restgate"}},
		// relative: the origin this document is fetched from (OpenAPI 3.1
		// §4.8.5), whatever Host or scheme reached it
		"servers": []any{obj{"url": "/", "description": "the origin this document was fetched from"}},
		"tags":    tagList,
		"paths":   paths,
		"components": obj{
			"schemas":         schemas,
			"headers":         openapidoc.Headers("ETag", "Last-Modified", "Location", "X-Request-Id", "RateLimit", "RateLimit-Policy", "Retry-After"),
			"parameters":      openapidoc.Parameters(),
			"securitySchemes": openapidoc.SecuritySchemes(h.APIKeyHeader),
		},
		// one requirement: a request carries one credential
		"security": []any{obj{openapidoc.SchemeBearer: []string{}}},
	}
	return json.Marshal(doc)
}

// article puts "a" or "an" before a noun.
func article(noun string) string {
	if noun != "" && strings.ContainsRune("aeiouAEIOU", rune(noun[0])) {
		return "an " + noun
	}
	return "a " + noun
}

func parentNote(c *Collection) string {
	if c.parent == nil {
		return ""
	}
	return ", nested under " + c.parent.Name
}

// cascadeNote says what else a delete removes.
func (h *Handler) cascadeNote(c *Collection) string {
	for _, child := range h.Collections {
		if child.parent == c && child.Cascade {
			return " and its " + child.Name
		}
	}
	return ""
}

func schemaName(c *Collection) string {
	s := singular(c)
	if s == "" {
		return "Document"
	}
	return string(s[0]&^0x20) + s[1:]
}

func ownedNote(c *Collection) string {
	if c.Owned {
		return ", the caller's own documents only"
	}
	return ""
}
