package docs

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// componentSections are the components a service document may bring.
// Security schemes are not taken: a client of the gateway authenticates to
// the gateway, with the gateway's schemes.
var componentSections = []string{"schemas", "responses", "parameters", "examples", "requestBodies", "headers", "links", "callbacks", "pathItems"}

// skeleton is the base document when nothing behind the spec path serves
// one (no resources handler): an API of services only.
func skeleton(title string) obj {
	return obj{
		"openapi": "3.1.0",
		"info": obj{"title": title, "version": "v1",
			"description": "The services behind the restgate gateway: API keys with scopes, rate limits (RateLimit headers), ETags with conditional requests, Idempotency-Key, and RFC 9457 problem details for every error.",
			"contact":     obj{"name": "restgate", "url": "https://github.com/restgate/restgate"}},
		"servers":  []any{obj{"url": "/", "description": "the origin this document was fetched from"}},
		"paths":    obj{},
		"security": []any{obj{schemeBearer: []any{}}},
	}
}

// merger builds one document from a base and the services' documents.
type merger struct {
	doc    obj
	scopes func(method string) string
	// warn reports a part of a service document that was left out
	warn func(svc *Service, msg string)
}

// merge returns base with every service's paths mounted under its prefix,
// its components merged, and the gateway's additions on its operations.
// base and the documents are not modified.
func merge(base obj, services []*Service, docs []obj, scopes func(string) string, apiKeyHeader string, warn func(*Service, string)) obj {
	m := &merger{doc: deepCopy(base).(obj), scopes: scopes, warn: warn}
	if _, ok := m.doc["paths"].(obj); !ok {
		m.doc["paths"] = obj{}
	}
	comps, _ := m.doc["components"].(obj)
	if comps == nil {
		comps = obj{}
		m.doc["components"] = comps
	}
	// the gateway's own components, unless the base has them already
	for section, entries := range gatewayComponents(apiKeyHeader) {
		sec, _ := comps[section].(obj)
		if sec == nil {
			sec = obj{}
			comps[section] = sec
		}
		for name, v := range entries {
			if _, ok := sec[name]; !ok {
				sec[name] = v
			}
		}
	}
	for i, svc := range services {
		if docs[i] != nil {
			m.add(svc, deepCopy(docs[i]).(obj))
		}
	}
	return m.doc
}

// add merges one service's document (a copy the merger may change).
func (m *merger) add(svc *Service, doc obj) {
	comps, _ := m.doc["components"].(obj)
	theirs, _ := doc["components"].(obj)

	// rename the service's components that collide with different ones
	// already in the document, then rewrite its references to them
	renames := map[string]string{}
	for _, section := range componentSections {
		ours, _ := comps[section].(obj)
		for name, v := range asObj(theirs[section]) {
			if have, ok := ours[name]; ok && !reflect.DeepEqual(have, v) {
				renames["#/components/"+section+"/"+name] = "#/components/" + section + "/" + m.freeName(ours, asObj(theirs[section]), svc.componentPrefix()+name)
			}
		}
	}
	if len(renames) > 0 {
		doc = rewriteRefs(doc, renames).(obj)
		theirs, _ = doc["components"].(obj)
		renamed := obj{}
		for _, section := range componentSections {
			src := asObj(theirs[section])
			if src == nil {
				continue
			}
			dst := obj{}
			for name, v := range src {
				if to, ok := renames["#/components/"+section+"/"+name]; ok {
					name = to[strings.LastIndexByte(to, '/')+1:]
				}
				dst[name] = v
			}
			renamed[section] = dst
		}
		theirs = renamed
	}

	schemes := m.schemes()
	params, _ := comps["parameters"].(obj)
	allParams := obj{}
	for k, v := range params {
		allParams[k] = v
	}
	for k, v := range asObj(theirs["parameters"]) {
		if _, ok := allParams[k]; !ok {
			allParams[k] = v
		}
	}
	paths := m.doc["paths"].(obj)
	tag := svc.tag()
	ids := m.operationIDs()
	names := make([]string, 0, len(asObj(doc["paths"])))
	for p := range asObj(doc["paths"]) {
		names = append(names, p)
	}
	sort.Strings(names)
	prefixed := svc.pathsPrefixed(names)
	added := 0
	for _, p := range names {
		item, ok := asObj(doc["paths"])[p].(obj)
		if !ok {
			continue
		}
		mounted := svc.mount(p, prefixed)
		if _, taken := paths[mounted]; taken {
			m.warn(svc, fmt.Sprintf("path %s is already in the document; the service's is left out", mounted))
			continue
		}
		delete(item, "servers")
		for _, method := range methods {
			op, ok := item[method].(obj)
			if !ok {
				continue
			}
			delete(op, "servers")
			if id, ok := op["operationId"].(string); ok {
				if ids[id] {
					id = m.freeID(ids, svc.componentPrefix()+id)
					op["operationId"] = id
				}
				ids[id] = true
			}
			if len(asList(op["tags"])) == 0 {
				op["tags"] = []any{tag}
			}
			upper := strings.ToUpper(method)
			scope := m.scopes(upper)
			d, _ := op["description"].(string)
			if d == "" {
				d = svc.describe(op)
			}
			op["description"] = strings.TrimSpace(d) + "\n\nThrough the gateway: an API key with the `" + scope + "` scope."
			addGateway(op, upper, scope, schemes, allParams)
		}
		// a path-level identity header is the gateway's, too
		var kept []any
		for _, p := range asList(item["parameters"]) {
			name, in := paramName(asObj(p), allParams)
			if in != "header" || !isIdentityHeader(name) {
				kept = append(kept, p)
			}
		}
		if kept != nil {
			item["parameters"] = kept
		} else {
			delete(item, "parameters")
		}
		paths[mounted] = item
		added++
	}

	// the components the kept paths use, and what those use in turn
	used := reachable(paths, theirs)
	for _, section := range componentSections {
		for name, v := range asObj(theirs[section]) {
			if !used["#/components/"+section+"/"+name] {
				continue
			}
			sec, _ := comps[section].(obj)
			if sec == nil {
				sec = obj{}
				comps[section] = sec
			}
			sec[name] = v
		}
	}
	m.addTag(tag, svc, doc, added)
}

// schemes are the security schemes a proxied operation accepts, either one.
func (m *merger) schemes() []string {
	sec := asObj(asObj(m.doc["components"])["securitySchemes"])
	var out []string
	for _, s := range []string{schemeBearer, schemeAPIKey} {
		if sec[s] != nil {
			out = append(out, s)
		}
	}
	return out
}

// addTag lists the service's tag (and the tags its document defines).
func (m *merger) addTag(tag string, svc *Service, doc obj, added int) {
	tags := asList(m.doc["tags"])
	have := map[string]bool{}
	for _, t := range tags {
		if n, ok := asObj(t)["name"].(string); ok {
			have[n] = true
		}
	}
	// never the document's URL: an internal address has no place in a
	// public document
	info := asObj(doc["info"])
	title, _ := info["title"].(string)
	desc := "The service under " + svc.Prefix
	if title != "" {
		desc = title + ", under " + svc.Prefix
	}
	if d, _ := info["description"].(string); d != "" {
		desc += ": " + d
	}
	if added > 0 {
		if top := asObj(m.doc["info"]); top != nil {
			d, _ := top["description"].(string)
			name := title
			if name == "" {
				name = svc.Name
			}
			top["description"] = strings.TrimSpace(d + "\n\nAlso behind this gateway: " + name + ", under `" + svc.Prefix + "`.")
		}
	}
	if !have[tag] && added > 0 {
		tags = append(tags, obj{"name": tag, "description": desc})
		have[tag] = true
	}
	for _, t := range asList(doc["tags"]) {
		if n, ok := asObj(t)["name"].(string); ok && !have[n] {
			tags = append(tags, t)
			have[n] = true
		}
	}
	// tags the operations use that no one defined (Spectral's
	// operation-tag-defined)
	for _, item := range asObj(m.doc["paths"]) {
		for _, method := range methods {
			for _, t := range asList(asObj(asObj(item)[method])["tags"]) {
				if n, ok := t.(string); ok && !have[n] {
					tags = append(tags, obj{"name": n, "description": "Operations tagged " + n + " by " + svc.Prefix})
					have[n] = true
				}
			}
		}
	}
	if len(tags) > 0 {
		m.doc["tags"] = tags
	}
}

func (m *merger) operationIDs() map[string]bool {
	ids := map[string]bool{}
	for _, item := range asObj(m.doc["paths"]) {
		for _, method := range methods {
			if id, ok := asObj(asObj(item)[method])["operationId"].(string); ok {
				ids[id] = true
			}
		}
	}
	return ids
}

// freeName returns name, or name with a number, that is in neither set.
func (m *merger) freeName(ours, theirs obj, name string) string {
	for i := 2; ; i++ {
		_, a := ours[name]
		_, b := theirs[name]
		if !a && !b {
			return name
		}
		name = strings.TrimRight(name, "0123456789") + strconv.Itoa(i)
	}
}

func (m *merger) freeID(ids map[string]bool, id string) string {
	base := id
	for i := 2; ids[id]; i++ {
		id = base + strconv.Itoa(i)
	}
	return id
}

// reachable returns the local references used by paths, followed through
// the components in theirs.
func reachable(paths obj, theirs obj) map[string]bool {
	seen := map[string]bool{}
	var queue []string
	collectRefs(paths, func(ref string) {
		if !seen[ref] {
			seen[ref] = true
			queue = append(queue, ref)
		}
	})
	for len(queue) > 0 {
		ref := queue[0]
		queue = queue[1:]
		section, name, ok := splitRef(ref)
		if !ok {
			continue
		}
		collectRefs(asObj(theirs[section])[name], func(r string) {
			if !seen[r] {
				seen[r] = true
				queue = append(queue, r)
			}
		})
	}
	return seen
}

// splitRef splits "#/components/<section>/<name>".
func splitRef(ref string) (section, name string, ok bool) {
	rest, ok := strings.CutPrefix(ref, "#/components/")
	if !ok {
		return "", "", false
	}
	section, name, ok = strings.Cut(rest, "/")
	if ok {
		name = unescapePointer(name)
	}
	return section, name, ok && !strings.Contains(name, "/")
}

func unescapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

// collectRefs calls fn with every "$ref" string in v.
func collectRefs(v any, fn func(string)) {
	switch v := v.(type) {
	case obj:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "$ref" {
				fn(s)
				continue
			}
			collectRefs(x, fn)
		}
	case []any:
		for _, x := range v {
			collectRefs(x, fn)
		}
	}
}

// rewriteRefs returns v with every "$ref" in renames (or under one of them)
// replaced.
func rewriteRefs(v any, renames map[string]string) any {
	switch v := v.(type) {
	case obj:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "$ref" {
				for from, to := range renames {
					if s == from || strings.HasPrefix(s, from+"/") {
						v[k] = to + s[len(from):]
						break
					}
				}
				continue
			}
			v[k] = rewriteRefs(x, renames)
		}
	case []any:
		for i, x := range v {
			v[i] = rewriteRefs(x, renames)
		}
	}
	return v
}

// checkDocument reports why a service document cannot be merged, or nil:
// it must be OpenAPI 3.0 or 3.1 with paths, its operations objects with
// responses, and every reference local and resolvable (a reference to
// another file would be resolved against the gateway's document).
func checkDocument(doc obj) error {
	v, _ := doc["openapi"].(string)
	if !strings.HasPrefix(v, "3.1.") && !strings.HasPrefix(v, "3.0.") {
		if s, ok := doc["swagger"].(string); ok {
			return fmt.Errorf("swagger %s documents are not supported: serve OpenAPI 3.0 or 3.1", s)
		}
		return fmt.Errorf("not an OpenAPI 3.0 or 3.1 document (openapi: %q)", v)
	}
	paths, ok := doc["paths"].(obj)
	if !ok {
		return fmt.Errorf("no paths object")
	}
	for p, item := range paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("path %q does not start with /", p)
		}
		im, ok := item.(obj)
		if !ok {
			return fmt.Errorf("path %s is not an object", p)
		}
		for _, method := range methods {
			if op, ok := im[method]; ok {
				if _, ok := asObj(op)["responses"].(obj); !ok {
					return fmt.Errorf("%s %s has no responses", strings.ToUpper(method), p)
				}
			}
		}
	}
	var bad error
	comps := asObj(doc["components"])
	collectRefs(doc, func(ref string) {
		if bad != nil {
			return
		}
		section, name, ok := splitRef(ref)
		if !ok {
			bad = fmt.Errorf("reference %q is not to this document's components", ref)
			return
		}
		if _, ok := asObj(comps[section])[name]; !ok {
			bad = fmt.Errorf("reference %q resolves to nothing", ref)
		}
	})
	return bad
}

// upgrade turns an OpenAPI 3.0 document's schemas into 3.1's (JSON Schema
// 2020-12): `nullable: true` becomes a "null" type, boolean
// exclusiveMinimum/exclusiveMaximum become numbers.
func upgrade(doc obj) {
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.0.") {
		return
	}
	doc["openapi"] = "3.1.0"
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case obj:
			if n, ok := v["nullable"].(bool); ok {
				delete(v, "nullable")
				if n {
					nullable(v)
				}
			}
			for _, k := range [][2]string{{"exclusiveMinimum", "minimum"}, {"exclusiveMaximum", "maximum"}} {
				if b, ok := v[k[0]].(bool); ok {
					delete(v, k[0])
					if lim, ok := v[k[1]]; ok && b {
						v[k[0]] = lim
						delete(v, k[1])
					}
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
}

// nullable lets a schema also be null.
func nullable(s obj) {
	switch t := s["type"].(type) {
	case string:
		s["type"] = []any{t, "null"}
	case []any:
		if !slices.Contains(t, any("null")) {
			s["type"] = append(t, "null")
		}
	default:
		inner := obj{}
		for k, v := range s {
			if k != "description" && k != "title" {
				inner[k] = v
				delete(s, k)
			}
		}
		s["anyOf"] = []any{inner, obj{"type": "null"}}
		return
	}
	if e, ok := s["enum"].([]any); ok && !slices.Contains(e, nil) {
		s["enum"] = append(e, nil)
	}
}

func asObj(v any) obj {
	o, _ := v.(obj)
	return o
}

// deepCopy copies a decoded JSON value.
func deepCopy(v any) any {
	switch v := v.(type) {
	case obj:
		c := make(obj, len(v))
		for k, x := range v {
			c[k] = deepCopy(x)
		}
		return c
	case []any:
		c := make([]any, len(v))
		for i, x := range v {
			c[i] = deepCopy(x)
		}
		return c
	}
	return v
}

// methodScopes returns the scope each method needs: api_auth's default
// (read for GET, HEAD and OPTIONS, write for the rest) with overrides.
func methodScopes(overrides map[string]string) func(string) string {
	return func(method string) string {
		if s, ok := overrides[method]; ok {
			return s
		}
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return "read"
		}
		return "write"
	}
}
