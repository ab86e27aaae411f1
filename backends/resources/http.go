package resources

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/httpcond"
	"github.com/restgate/restgate/internal/jsonptr"
	"github.com/restgate/restgate/modules/problem"
)

const (
	allowCollection = "GET, HEAD, POST"
	allowDocument   = "GET, HEAD, PUT, PATCH, DELETE"
	mergePatchType  = "application/merge-patch+json"
)

func unauthenticated() *problem.Problem {
	return problem.New(http.StatusUnauthorized, "this collection belongs to its users: authenticate first")
}

func (h *Handler) serveCollection(w http.ResponseWriter, r *http.Request, t target) error {
	w.Header().Set("Cache-Control", t.coll.CacheControl)
	who := h.caller(r)
	if t.coll.Owned && who.user == "" {
		return h.fail(w, r, unauthenticated())
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		// the list and the change feed are two representations of the
		// collection, picked by Accept
		w.Header().Add("Vary", "Accept")
		if wantsFeed(r) {
			return h.feed(w, r, t, who)
		}
		return h.list(w, r, t, who)
	case http.MethodPost:
		return h.create(w, r, t, who)
	}
	w.Header().Set("Allow", allowCollection)
	return h.fail(w, r, problem.New(http.StatusMethodNotAllowed, r.Method+" is not allowed on a collection"))
}

func (h *Handler) serveDocument(w http.ResponseWriter, r *http.Request, t target) error {
	w.Header().Set("Cache-Control", t.coll.CacheControl)
	who := h.caller(r)
	if t.coll.Owned && who.user == "" {
		return h.fail(w, r, unauthenticated())
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return h.get(w, r, t, who)
	case http.MethodPut, http.MethodPatch:
		return h.write(w, r, t, who)
	case http.MethodDelete:
		return h.remove(w, r, t, who)
	}
	w.Header().Set("Allow", allowDocument)
	return h.fail(w, r, problem.New(http.StatusMethodNotAllowed, r.Method+" is not allowed on a document"))
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	q, p := h.listQuery(r, t)
	if p != nil {
		return h.fail(w, r, p)
	}
	if t.coll.Owned && !who.admin {
		q.Owner = who.user
	}
	if t.coll.parent != nil {
		if _, err := h.store.Get(r.Context(), t.coll.parent.Name, "", t.parentKey); err != nil {
			return h.storeFail(w, r, err, t.coll.parent, t.parentKey)
		}
	}
	docs, total, err := h.store.List(r.Context(), q)
	if err != nil {
		return h.storeFail(w, r, err, t.coll, "")
	}
	items := make([]json.RawMessage, 0, len(docs))
	for _, d := range docs {
		b, err := h.render(t.coll, d)
		if err != nil {
			return h.storeFail(w, r, err, t.coll, d.Key)
		}
		items = append(items, b)
	}
	maxPage := (total + q.Limit - 1) / q.Limit
	body, err := json.Marshal(map[string]any{
		"items":      items,
		"pagination": map[string]int{"total_count": total, "max_page": max(maxPage, 1)},
	})
	if err != nil {
		return h.storeFail(w, r, err, t.coll, "")
	}
	writeJSON(w, r, http.StatusOK, body)
	return nil
}

// listQuery reads page, limit, sort and equality filters.
func (h *Handler) listQuery(r *http.Request, t target) (ListQuery, *problem.Problem) {
	c := t.coll
	q := ListQuery{Collection: c.Name, Parent: t.parentKey, Limit: defaultLimit}
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return q, paramProblem("", "the query string is malformed")
	}
	page := 1
	for name, vals := range values {
		if len(vals) != 1 {
			return q, paramProblem(name, "must be given once")
		}
		v := vals[0]
		switch name {
		case "page":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1_000_000 {
				return q, paramProblem(name, "must be a whole number from 1")
			}
			page = n
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxLimit {
				return q, paramProblem(name, fmt.Sprintf("must be a whole number from 1 to %d", maxLimit))
			}
			q.Limit = n
		case "sort":
			for _, part := range strings.Split(v, ",") {
				// a '+' in a query string arrives as a space
				part = strings.TrimSpace(part)
				o := Order{Field: strings.TrimPrefix(strings.TrimPrefix(part, "+"), "-"), Desc: strings.HasPrefix(part, "-")}
				field, ok := c.sortable[o.Field]
				if !ok {
					return q, paramProblem(name, fmt.Sprintf("cannot sort on %q; sortable fields: %s", o.Field, strings.Join(c.sortableNames(), ", ")))
				}
				o.Field = field
				q.Sort = append(q.Sort, o)
			}
		default:
			field, ok := c.sortable[name]
			if !ok {
				return q, paramProblem(name, fmt.Sprintf("is not a parameter or a field of %s", c.Name))
			}
			val, err := c.filterValue(name, v)
			if err != nil {
				return q, paramProblem(name, err.Error())
			}
			q.Filters = append(q.Filters, Filter{Field: field, Value: val})
		}
	}
	q.Offset = (page - 1) * q.Limit
	return q, nil
}

func paramProblem(name, detail string) *problem.Problem {
	p := problem.New(http.StatusUnprocessableEntity, "invalid query parameter")
	if name != "" {
		p.Detail = "invalid query parameter " + strconv.Quote(name)
	}
	p.Errors = []problem.FieldError{{Parameter: name, Detail: detail}}
	return p
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	d, err := h.store.Get(r.Context(), t.coll.Name, t.parentKey, t.key)
	if err == nil && !who.sees(t.coll, d) {
		err = ErrNotFound
	}
	if err != nil {
		return h.storeFail(w, r, err, t.coll, t.key)
	}
	setValidators(w, d)
	switch httpcond.Evaluate(r, true, etagOf(d), lastModified(d)) {
	case httpcond.NotModified:
		w.WriteHeader(http.StatusNotModified)
		return nil
	case httpcond.Failed:
		return h.fail(w, r, preconditionFailed())
	}
	body, err := h.render(t.coll, d)
	if err != nil {
		return h.storeFail(w, r, err, t.coll, t.key)
	}
	writeJSON(w, r, http.StatusOK, body)
	return nil
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	doc, p := h.readBody(w, r, false)
	if p != nil {
		return h.fail(w, r, p)
	}
	c := t.coll
	if errs := c.validate(doc, true); len(errs) > 0 {
		return h.fail(w, r, invalid(errs))
	}
	key := uuid.NewString()
	if c.Key != defaultKey {
		key = doc[c.Key].(string)
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return h.fail(w, r, problem.New(http.StatusUnprocessableEntity, "the document cannot be stored: "+err.Error()))
	}
	now := h.now().UTC()
	owner := ""
	if c.Owned {
		owner = who.user
	}
	// the store may run the transaction again: each run starts from the
	// request alone, never from what an aborted run changed
	var d *Doc
	var status int
	err = h.store.Update(r.Context(), func(tx Tx) error {
		d = &Doc{Collection: c.Name, Parent: t.parentKey, Key: key, Body: body, Owner: owner, Version: 1, Created: now}
		status = http.StatusCreated
		if c.parent != nil {
			if err := tx.Pin(c.parent.Name, "", t.parentKey); err != nil {
				return notFoundOr(err, c.parent, t.parentKey)
			}
		}
		err := tx.Insert(d)
		if !errors.Is(err, ErrExists) {
			return err
		}
		cur, gerr := tx.Get(c.Name, t.parentKey, key)
		if gerr != nil {
			return gerr
		}
		if !c.Upsert || !who.sees(c, cur) {
			return problem.Error(http.StatusConflict, "already_exists", fmt.Sprintf("%s %q already exists", singular(c), key))
		}
		if httpcond.Evaluate(r, true, etagOf(cur), lastModified(cur)) == httpcond.Failed {
			return stale(cur)
		}
		d = &Doc{Collection: c.Name, Parent: t.parentKey, Key: key, Body: body, Owner: cur.Owner,
			Version: cur.Version + 1, Created: cur.Created, Modified: now}
		status = http.StatusOK
		return tx.Replace(d)
	})
	if err != nil {
		return h.storeFail(w, r, err, c, key)
	}
	if status == http.StatusCreated {
		w.Header().Set("Location", h.location(t, key))
	}
	return h.respondDoc(w, r, status, c, d)
}

// write serves PUT (full replace) and PATCH (JSON merge patch).
func (h *Handler) write(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	c := t.coll
	patch := r.Method == http.MethodPatch
	in, p := h.readBody(w, r, patch)
	if p != nil {
		return h.fail(w, r, p)
	}
	if k, ok := in[c.Key]; ok && c.Key != defaultKey && k != t.key {
		return h.fail(w, r, invalid([]problem.FieldError{{Pointer: "/" + jsonptr.Escape(c.Key), Detail: "must equal the key in the URL; a key cannot change"}}))
	}
	var d *Doc
	err := h.store.Update(r.Context(), func(tx Tx) error {
		cur, err := tx.Get(c.Name, t.parentKey, t.key)
		if err == nil && !who.sees(c, cur) {
			err = ErrNotFound
		}
		if err != nil {
			return notFoundOr(err, c, t.key)
		}
		if httpcond.Evaluate(r, true, etagOf(cur), lastModified(cur)) == httpcond.Failed {
			return stale(cur)
		}
		doc := in
		if patch {
			var fields map[string]any
			if err := decodeJSON(cur.Body, &fields); err != nil {
				return err
			}
			doc = mergePatch(fields, in).(map[string]any)
		}
		if c.Key != defaultKey {
			doc[c.Key] = t.key
		}
		if errs := c.validate(doc, !patch); len(errs) > 0 {
			return invalid(errs)
		}
		body, err := json.Marshal(doc)
		if err != nil {
			return problem.Error(http.StatusUnprocessableEntity, "", "the document cannot be stored: "+err.Error())
		}
		d = &Doc{Collection: c.Name, Parent: t.parentKey, Key: t.key, Body: body, Owner: cur.Owner,
			Version: cur.Version + 1, Created: cur.Created, Modified: h.now().UTC()}
		return tx.Replace(d)
	})
	if err != nil {
		return h.storeFail(w, r, err, c, t.key)
	}
	return h.respondDoc(w, r, http.StatusOK, c, d)
}

func (h *Handler) remove(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	c := t.coll
	err := h.store.Update(r.Context(), func(tx Tx) error {
		cur, err := tx.Get(c.Name, t.parentKey, t.key)
		if err == nil && !who.sees(c, cur) {
			err = ErrNotFound
		}
		if err != nil {
			return notFoundOr(err, c, t.key)
		}
		if httpcond.Evaluate(r, true, etagOf(cur), lastModified(cur)) == httpcond.Failed {
			return stale(cur)
		}
		for _, child := range c.children {
			if child.Cascade {
				if err := tx.DeleteChildren(child.Name, t.key); err != nil {
					return err
				}
				continue
			}
			n, err := tx.CountChildren(child.Name, t.key)
			if err != nil {
				return err
			}
			if n > 0 {
				return problem.Error(http.StatusConflict, "has_children",
					fmt.Sprintf("%s %q has %d %s; delete them first", singular(c), t.key, n, child.Name))
			}
		}
		return tx.Delete(c.Name, t.parentKey, t.key)
	})
	if err != nil {
		return h.storeFail(w, r, err, c, t.key)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// readBody reads a JSON object from the request, within MaxBody.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, patch bool) (map[string]any, *problem.Problem) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" && !(patch && mt == mergePatchType) {
		accepted := "application/json"
		if patch {
			accepted = mergePatchType + ", application/json"
			w.Header().Set("Accept-Patch", accepted)
		}
		return nil, problem.New(http.StatusUnsupportedMediaType, "send the document as "+accepted)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, h.MaxBody))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	if err == nil && dec.Decode(new(json.RawMessage)) != io.EOF {
		err = errors.New("data after the JSON value")
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, problem.New(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", h.MaxBody))
	case errors.Is(err, io.EOF):
		return nil, problem.New(http.StatusBadRequest, "the body is empty; send a JSON object")
	case err != nil:
		return nil, problem.New(http.StatusBadRequest, "the body is not valid JSON: "+err.Error())
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, invalid([]problem.FieldError{{Pointer: "", Detail: "must be a JSON object"}})
	}
	return obj, nil
}

func invalid(errs []problem.FieldError) *problem.Problem {
	p := problem.New(http.StatusUnprocessableEntity, "the document is invalid; see errors")
	p.Errors = errs
	return p
}

func preconditionFailed() *problem.Problem {
	p := problem.New(http.StatusPreconditionFailed, "the document has changed since you read it; retry with the ETag this answer carries (the document's current one)")
	return p
}

// staleWrite is a write whose precondition failed against cur, inside the
// write's transaction: its 412 carries cur's ETag and Last-Modified, so a
// client can read what it conflicts with and retry without guessing.
type staleWrite struct{ cur *Doc }

func (e *staleWrite) Error() string { return "precondition failed" }

func stale(cur *Doc) error { return &staleWrite{cur} }

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergePatch(tm[k], v)
	}
	return tm
}

// render returns a document's public representation.
func (h *Handler) render(c *Collection, d *Doc) (json.RawMessage, error) {
	var fields map[string]any
	if err := decodeJSON(d.Body, &fields); err != nil {
		return nil, err
	}
	for _, f := range c.Fields {
		if f.WriteOnly {
			delete(fields, f.Name)
		}
	}
	if c.Key == defaultKey {
		fields[defaultKey] = d.Key
	}
	fields[metaCreated] = d.Created.UTC().Format(timeLayout)
	if d.Modified.IsZero() {
		fields[metaModified] = nil
	} else {
		fields[metaModified] = d.Modified.UTC().Format(timeLayout)
	}
	if c.Owned {
		fields[metaOwner] = d.Owner
	}
	return json.Marshal(fields)
}

func (h *Handler) respondDoc(w http.ResponseWriter, r *http.Request, status int, c *Collection, d *Doc) error {
	body, err := h.render(c, d)
	if err != nil {
		return h.storeFail(w, r, err, c, d.Key)
	}
	setValidators(w, d)
	writeJSON(w, r, status, body)
	return nil
}

func setValidators(w http.ResponseWriter, d *Doc) {
	w.Header().Set("ETag", etagOf(d))
	w.Header().Set("Last-Modified", lastModified(d).Format(http.TimeFormat))
}

// etagOf is a strong validator that changes with every write and differs
// between a document and a later one created under the same key.
func etagOf(d *Doc) string {
	return `"` + strconv.FormatInt(d.Created.UnixMicro(), 36) + "-" + strconv.FormatInt(d.Version, 10) + `"`
}

func lastModified(d *Doc) time.Time {
	if d.Modified.IsZero() {
		return d.Created
	}
	return d.Modified
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// storeFail answers an error from the store or a transaction.
func (h *Handler) storeFail(w http.ResponseWriter, r *http.Request, err error, c *Collection, key string) error {
	var p *problem.Problem
	var sw *staleWrite
	switch {
	case errors.As(err, &p):
	case errors.As(err, &sw):
		setValidators(w, sw.cur)
		p = preconditionFailed()
	case errors.Is(err, ErrNotFound):
		p = notFound(c, key)
	case errors.Is(err, ErrBusy):
		p = h.retryLater(w, r, err, c, "store_busy", "a write gave up on conflicting writes",
			"this write conflicted with concurrent writes on every attempt and was not made; retry shortly")
	case errors.Is(err, ErrUnavailable):
		p = h.retryLater(w, r, err, c, "store_unavailable", "the document store is unavailable",
			"the document store cannot be reached right now; nothing was changed by this request unless a later read shows it; retry shortly")
	default:
		h.logger.Error("resource store error", zap.String("collection", c.Name),
			zap.String("request_id", problem.RequestIDFromRequest(r)), zap.Error(err))
		p = problem.New(http.StatusInternalServerError, "the document store failed; quote the request_id when you report it")
	}
	return h.fail(w, r, p)
}

// retryLater logs why the store could not answer and returns the 503
// problem, with Retry-After, that a client retries shortly.
func (h *Handler) retryLater(w http.ResponseWriter, r *http.Request, err error, c *Collection, code, why, detail string) *problem.Problem {
	h.logger.Warn(why, zap.String("collection", c.Name),
		zap.String("request_id", problem.RequestIDFromRequest(r)), zap.Error(err))
	w.Header().Set("Retry-After", "1")
	p := problem.New(http.StatusServiceUnavailable, detail)
	p.Code = code
	return p
}

func notFoundOr(err error, c *Collection, key string) error {
	if errors.Is(err, ErrNotFound) {
		return notFound(c, key)
	}
	return err
}

func notFound(c *Collection, key string) *problem.Problem {
	if key == "" {
		return problem.New(http.StatusNotFound, fmt.Sprintf("there is no collection %q", c.Name))
	}
	return problem.New(http.StatusNotFound, fmt.Sprintf("%s %q does not exist", singular(c), key))
}

// singular names one document of c: "events" → "event".
func singular(c *Collection) string {
	return strings.TrimSuffix(c.Name, "s")
}

func (h *Handler) location(t target, key string) string {
	if t.coll.parent != nil {
		return h.Prefix + "/" + t.coll.parent.Name + "/" + url.PathEscape(t.parentKey) + "/" + t.coll.Name + "/" + url.PathEscape(key)
	}
	return h.Prefix + "/" + t.coll.Name + "/" + url.PathEscape(key)
}

func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

func (c *Collection) sortableNames() []string {
	names := make([]string, 0, len(c.sortable))
	for n := range c.sortable {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
