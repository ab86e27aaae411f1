package resources

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/restgate/restgate/internal/httpcond"
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
	w.Header().Set("ETag", h.openapiETag)
	if httpcond.Evaluate(r, true, h.openapiETag, time.Time{}) == httpcond.NotModified {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	writeJSON(w, r, http.StatusOK, h.openapi)
	return nil
}

// openAPI builds an OpenAPI 3.1 document of the collections.
func (h *Handler) openAPI() ([]byte, error) {
	type obj = map[string]any
	schemas := obj{
		"Problem": obj{
			"type": "object",
			"properties": obj{
				"type":       obj{"type": "string", "format": "uri-reference"},
				"title":      obj{"type": "string"},
				"status":     obj{"type": "integer"},
				"detail":     obj{"type": "string"},
				"instance":   obj{"type": "string"},
				"code":       obj{"type": "string"},
				"request_id": obj{"type": "string"},
				"errors": obj{"type": "array", "items": obj{
					"type": "object",
					"properties": obj{
						"pointer":   obj{"type": "string"},
						"parameter": obj{"type": "string"},
						"detail":    obj{"type": "string"},
					},
					"required": []string{"detail"},
				}},
			},
			"required": []string{"type", "title", "status", "code"},
		},
		"Pagination": obj{
			"type": "object",
			"properties": obj{
				"total_count": obj{"type": "integer", "minimum": 0},
				"max_page":    obj{"type": "integer", "minimum": 1},
			},
			"required": []string{"total_count", "max_page"},
		},
	}
	problemResp := func(desc string) obj {
		return obj{"description": desc, "content": obj{"application/problem+json": obj{"schema": obj{"$ref": "#/components/schemas/Problem"}}}}
	}
	errorResponses := func(codes ...int) obj {
		out := obj{}
		for _, c := range codes {
			out[strconv.Itoa(c)] = problemResp(http.StatusText(c))
		}
		return out
	}
	paths := obj{}
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
		docResp := func(desc string) obj {
			return obj{
				"description": desc,
				"headers": obj{
					"ETag":          obj{"schema": obj{"type": "string"}},
					"Last-Modified": obj{"schema": obj{"type": "string"}},
				},
				"content": obj{"application/json": obj{"schema": ref}},
			}
		}
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
		idemKey := obj{"$ref": "#/components/parameters/IdempotencyKey"}
		create := errorResponses(400, 401, 403, 404, 409, 413, 415, 422, 429)
		create["201"] = docResp("Created")
		if c.Upsert {
			create["200"] = docResp("Updated (upsert)")
		}
		list := errorResponses(401, 403, 404, 422, 429)
		list["200"] = obj{"description": "A page of " + c.Name, "content": obj{"application/json": obj{"schema": obj{
			"type":       "object",
			"properties": obj{"items": obj{"type": "array", "items": ref}, "pagination": obj{"$ref": "#/components/schemas/Pagination"}},
			"required":   []string{"items", "pagination"},
		}}}}
		paths[h.Prefix+base] = obj{
			"get":  obj{"operationId": "list_" + c.Name, "summary": "List " + c.Name, "parameters": listParams, "responses": list},
			"post": obj{"operationId": "create_" + singular(c), "summary": "Create a " + singular(c), "parameters": append([]any{idemKey}, params...), "requestBody": obj{"required": true, "content": obj{"application/json": obj{"schema": inRef}}}, "responses": create},
		}
		itemParams := append(append([]any{}, params...), obj{"name": c.Key, "in": "path", "required": true, "schema": obj{"type": "string"}})
		get := errorResponses(401, 403, 404, 429)
		get["200"] = docResp("The " + singular(c))
		get["304"] = obj{"description": "Not Modified"}
		put := errorResponses(400, 401, 403, 404, 412, 413, 415, 422, 429)
		put["200"] = docResp("Updated")
		patch := errorResponses(400, 401, 403, 404, 409, 412, 413, 415, 422, 429)
		patch["200"] = docResp("Updated")
		del := errorResponses(401, 403, 404, 409, 412, 429)
		del["204"] = obj{"description": "Deleted"}
		paths[h.Prefix+base+"/{"+c.Key+"}"] = obj{
			"parameters": itemParams,
			"get":        obj{"operationId": "get_" + singular(c), "summary": "Get a " + singular(c), "responses": get},
			"put":        obj{"operationId": "replace_" + singular(c), "summary": "Replace a " + singular(c), "requestBody": obj{"required": true, "content": obj{"application/json": obj{"schema": inRef}}}, "responses": put},
			"patch":      obj{"operationId": "update_" + singular(c), "summary": "Update a " + singular(c) + " with a JSON merge patch", "parameters": []any{idemKey}, "requestBody": obj{"required": true, "content": obj{mergePatchType: obj{"schema": obj{"type": "object"}}, "application/json": obj{"schema": obj{"type": "object"}}}}, "responses": patch},
			"delete":     obj{"operationId": "delete_" + singular(c), "summary": "Delete a " + singular(c), "responses": del},
		}
	}
	doc := obj{
		"openapi": "3.1.0",
		"info":    obj{"title": "restgate resources", "version": "v1"},
		"paths":   paths,
		"components": obj{
			"schemas": schemas,
			"parameters": obj{
				"IdempotencyKey": obj{
					"name": "Idempotency-Key", "in": "header", "required": false,
					"description": "Makes a retry of this request take effect once (draft-ietf-httpapi-idempotency-key-header): a quoted string unique to the operation, such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\". A retry with the same key and request gets the first response (with Idempotent-Replayed: true); one while the first is in flight gets 409; the same key with another request gets 422.",
					"schema": obj{"type": "string", "maxLength": 257},
				},
			},
			"securitySchemes": obj{
				"bearer": obj{"type": "http", "scheme": "bearer"},
				"apiKey": obj{"type": "apiKey", "in": "header", "name": h.APIKeyHeader},
			},
		},
		"security": []any{obj{"bearer": []string{}}, obj{"apiKey": []string{}}},
	}
	return json.Marshal(doc)
}

func schemaName(c *Collection) string {
	s := singular(c)
	if s == "" {
		return "Document"
	}
	return string(s[0]&^0x20) + s[1:]
}
