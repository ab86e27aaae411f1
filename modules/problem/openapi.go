package problem

// Schema is the OpenAPI 3.1 schema of a problem document as Write sends
// it: the one definition the gateway's documents (resources' and the
// merged one of api_docs) reference. Each call returns a new map, so a
// caller may change its copy.
func Schema() map[string]any {
	type obj = map[string]any
	return obj{
		"type":        "object",
		"description": "An RFC 9457 problem: every error the gateway sends, and every error a backend sends after the gateway has put it in this shape.",
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
				"required": []any{"detail"},
			}},
		},
		"required": []any{"type", "title", "status", "code"},
	}
}
