package resources

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/restgate/restgate/internal/jsonptr"
	"github.com/restgate/restgate/modules/problem"
)

// Collection is one configured collection of JSON documents.
type Collection struct {
	// The collection's name, as it appears in the URL (`/v1/<name>`).
	Name string `json:"name"`

	// The field that identifies a document. Default: `id`, a UUID4 the
	// backend generates. Any other name is a natural key the client supplies
	// (a string of 1 to 256 characters, without `/` or control characters).
	Key string `json:"key,omitempty"`

	// The collection this one nests under, one level deep:
	// `/v1/<parent>/{key}/<name>/{key}`. A document of a missing parent is 404.
	Parent string `json:"parent,omitempty"`

	// Deleting a parent document deletes its children in this collection too.
	// Default: false (the delete is refused with 409 while children exist).
	Cascade bool `json:"cascade,omitempty"`

	// The declared fields. With none, documents are free-form objects; with
	// some, other fields are refused (422).
	Fields []Field `json:"fields,omitempty"`

	// A POST whose key exists updates that document (200) instead of failing
	// with 409.
	Upsert bool `json:"upsert,omitempty"`

	// Each document records the user that created it (from the identity
	// header the gateway sets); users see and change only their own, unless
	// they hold the admin scope.
	Owned bool `json:"owned,omitempty"`

	// The Cache-Control header of the collection's responses (documents,
	// lists, and answers to writes; problems always carry `no-store`).
	// Default: `no-cache` (a cache may store a response but must revalidate
	// it with its ETag on every use, so no one is served a stale
	// document), and `private, no-cache` for an owned collection, whose
	// value must include `private` or `no-store` (each user's documents are
	// for no shared cache). The gateway marks its responses to
	// authenticated requests `private` as well.
	CacheControl string `json:"cache_control,omitempty"`

	fields   map[string]*Field
	sortable map[string]string // query name → store field name (keyField for the key)
	parent   *Collection
	children []*Collection
}

// Field is one declared field of a collection.
type Field struct {
	Name string `json:"name"`

	// One of string, number, integer, boolean, object, array. Default: any
	// JSON value.
	Type string `json:"type,omitempty"`

	// A document without this field is refused (422).
	Required bool `json:"required,omitempty"`

	// The allowed values.
	Enum []any `json:"enum,omitempty"`

	// The value a new document gets when the field is absent.
	Default any `json:"default,omitempty"`

	// Stored but never returned, listed, filtered or sorted on (secrets).
	WriteOnly bool `json:"write_only,omitempty"`
}

const (
	metaCreated  = "created_at"
	metaModified = "modified_at"
	metaOwner    = "owner"
	defaultKey   = "id"
	maxKeyLen    = 256
	maxDepth     = 32
)

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

var fieldTypes = []string{"", "string", "number", "integer", "boolean", "object", "array"}

// prepare checks the collection and precomputes its lookups.
func (c *Collection) prepare() error {
	if !identifier.MatchString(c.Name) {
		return fmt.Errorf("collection name %q: want letters, digits and _", c.Name)
	}
	if c.Key == "" {
		c.Key = defaultKey
	}
	if !identifier.MatchString(c.Key) {
		return fmt.Errorf("collection %s: key %q: want letters, digits and _", c.Name, c.Key)
	}
	if err := c.prepareCacheControl(); err != nil {
		return fmt.Errorf("collection %s: cache_control: %v", c.Name, err)
	}
	c.fields = make(map[string]*Field, len(c.Fields))
	c.sortable = map[string]string{ // query name → store field name
		c.Key:        keyField,
		metaCreated:  metaCreated,
		metaModified: metaModified,
	}
	for i := range c.Fields {
		f := &c.Fields[i]
		if !identifier.MatchString(f.Name) {
			return fmt.Errorf("collection %s: field name %q: want letters, digits and _", c.Name, f.Name)
		}
		if f.Name == metaCreated || f.Name == metaModified || f.Name == metaOwner {
			return fmt.Errorf("collection %s: field %q is managed by the backend", c.Name, f.Name)
		}
		if _, dup := c.fields[f.Name]; dup {
			return fmt.Errorf("collection %s: field %q declared twice", c.Name, f.Name)
		}
		if !slices.Contains(fieldTypes, f.Type) {
			return fmt.Errorf("collection %s: field %s: unknown type %q", c.Name, f.Name, f.Type)
		}
		if f.Name == c.Key {
			if c.Key == defaultKey {
				return fmt.Errorf("collection %s: field id is generated; use another key to supply your own", c.Name)
			}
			if f.Type != "" && f.Type != "string" || f.WriteOnly {
				return fmt.Errorf("collection %s: key field %s must be a readable string", c.Name, f.Name)
			}
		}
		for _, v := range f.Enum {
			if err := f.check(v); err != nil {
				return fmt.Errorf("collection %s: field %s: enum value %v: %v", c.Name, f.Name, v, err)
			}
		}
		if f.Default != nil {
			if err := f.check(f.Default); err != nil {
				return fmt.Errorf("collection %s: field %s: default %v: %v", c.Name, f.Name, f.Default, err)
			}
		}
		c.fields[f.Name] = f
		if !f.WriteOnly && f.Name != c.Key && f.Type != "object" && f.Type != "array" {
			c.sortable[f.Name] = f.Name
		}
	}
	return nil
}

// Cache-Control defaults: every use revalidates (the documents carry
// ETags), and an owned collection's documents stay out of shared caches.
const (
	defaultCacheControl = "no-cache"
	ownedCacheControl   = "private, no-cache"
)

// cacheDirective is one Cache-Control directive (RFC 9111 §5.2): a token,
// optionally = a token or a quoted string.
var cacheDirective = regexp.MustCompile(`^[!#$%&'*+.^_|~0-9A-Za-z` + "`" + `-]+(=([!#$%&'*+.^_|~0-9A-Za-z` + "`" + `-]+|"[^"\\\x00-\x1f\x7f]*"))?$`)

// prepareCacheControl sets the default Cache-Control, or checks and
// normalises the configured one.
func (c *Collection) prepareCacheControl() error {
	if strings.TrimSpace(c.CacheControl) == "" {
		c.CacheControl = defaultCacheControl
		if c.Owned {
			c.CacheControl = ownedCacheControl
		}
		return nil
	}
	var directives []string
	private := false
	for _, d := range strings.Split(c.CacheControl, ",") {
		d = strings.TrimSpace(d)
		if !cacheDirective.MatchString(d) {
			return fmt.Errorf("%q is not a Cache-Control directive", d)
		}
		name, _, _ := strings.Cut(strings.ToLower(d), "=")
		private = private || name == "private" || name == "no-store"
		directives = append(directives, d)
	}
	if c.Owned && !private {
		return fmt.Errorf("%q: an owned collection's documents belong to their users: include private (or no-store)", c.CacheControl)
	}
	c.CacheControl = strings.Join(directives, ", ")
	return nil
}

// check validates a value against the field's type and enum.
func (f *Field) check(v any) error {
	switch f.Type {
	case "string":
		if _, ok := v.(string); !ok {
			return errType("a string")
		}
	case "number":
		if _, ok := asFloat(v); !ok {
			return errType("a number")
		}
	case "integer":
		x, ok := asFloat(v)
		if !ok || x != math.Trunc(x) || math.Abs(x) > 1<<53 {
			return errType("an integer")
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return errType("a boolean")
		}
	case "object":
		if _, ok := v.(map[string]any); !ok {
			return errType("an object")
		}
	case "array":
		if _, ok := v.([]any); !ok {
			return errType("an array")
		}
	}
	if len(f.Enum) > 0 && !slices.ContainsFunc(f.Enum, func(e any) bool { return jsonEqual(e, v) }) {
		return fmt.Errorf("must be one of %s", enumList(f.Enum))
	}
	return nil
}

type errType string

func (e errType) Error() string { return "must be " + string(e) }

func asFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case float64:
		return n, true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	}
	return 0, false
}

func jsonEqual(a, b any) bool {
	fa, aok := asFloat(a)
	fb, bok := asFloat(b)
	if aok && bok {
		return fa == fb
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func enumList(vals []any) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		b, _ := json.Marshal(v)
		parts[i] = string(b)
	}
	return strings.Join(parts, ", ")
}

// validate checks a full document body (POST or PUT) and applies defaults
// when creating. It returns the field errors, if any.
func (c *Collection) validate(doc map[string]any, creating bool) []problem.FieldError {
	var errs []problem.FieldError
	add := func(name, detail string) {
		errs = append(errs, problem.FieldError{Pointer: "/" + jsonptr.Escape(name), Detail: detail})
	}
	for name, v := range doc {
		switch {
		case name == metaCreated || name == metaModified || name == metaOwner || (name == defaultKey && c.Key == defaultKey):
			add(name, "is read-only")
			continue
		case len(c.fields) > 0 && c.fields[name] == nil && name != c.Key:
			add(name, "is not a field of "+c.Name)
			continue
		}
		if v == nil { // null is absence
			delete(doc, name)
			continue
		}
		if d := depth(v, 0); d > maxDepth {
			add(name, "nests deeper than "+strconv.Itoa(maxDepth)+" levels")
			continue
		}
		if f := c.fields[name]; f != nil {
			if err := f.check(v); err != nil {
				add(name, err.Error())
			}
		}
	}
	if c.Key != defaultKey {
		if k, ok := doc[c.Key]; !ok {
			add(c.Key, "is required")
		} else if s, ok := k.(string); !ok || !validKey(s) {
			add(c.Key, "must be a string of 1 to 256 characters without '/' or control characters")
		}
	}
	for i := range c.Fields {
		f := &c.Fields[i]
		if _, ok := doc[f.Name]; ok || f.Name == c.Key {
			continue
		}
		if creating && f.Default != nil {
			doc[f.Name] = f.Default
			continue
		}
		if f.Required {
			add(f.Name, "is required")
		}
	}
	slices.SortFunc(errs, func(a, b problem.FieldError) int { return strings.Compare(a.Pointer, b.Pointer) })
	return errs
}

func depth(v any, d int) int {
	if d > maxDepth {
		return d
	}
	maxd := d
	switch t := v.(type) {
	case map[string]any:
		for _, x := range t {
			maxd = max(maxd, depth(x, d+1))
		}
	case []any:
		for _, x := range t {
			maxd = max(maxd, depth(x, d+1))
		}
	}
	return maxd
}

func validKey(s string) bool {
	if s == "" || len(s) > maxKeyLen {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\uFFFD' {
			return false
		}
	}
	return true
}

// filterValue converts a query-string value to what json_extract yields for
// the field's type, so that `?count=3` matches 3 and `?done=true` matches true.
func (c *Collection) filterValue(name, raw string) (any, error) {
	f := c.fields[name]
	if f == nil {
		return raw, nil // key and meta fields are strings
	}
	switch f.Type {
	case "number", "integer":
		x, err := strconv.ParseFloat(raw, 64)
		if err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, errType("a number")
		}
		if f.Type == "integer" && x != math.Trunc(x) {
			return nil, errType("an integer")
		}
		return x, nil
	case "boolean":
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return nil, errType("true or false")
		}
		if b {
			return 1, nil
		}
		return 0, nil
	case "object", "array":
		return nil, fmt.Errorf("cannot be filtered on")
	}
	return raw, nil
}
