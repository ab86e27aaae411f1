package resources

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/restgate/restgate/modules/problem"
)

const (
	eventStreamType = "text/event-stream"
	// lastEventIDParam is the query form of Last-Event-ID, for clients
	// that cannot set headers. Field names are identifiers, so no
	// collection's filter can be spelled with a hyphen.
	lastEventIDParam = "last-event-id"
	// feedRetry is the reconnection delay a stream asks for, in ms.
	feedRetry = 2000

	defaultFeedRetention    = 24 * time.Hour
	defaultFeedMaxChanges   = 100_000
	defaultFeedHeartbeat    = 15 * time.Second
	defaultFeedMaxStreams   = 8
	defaultFeedWriteTimeout = 30 * time.Second
)

// wantsFeed reports whether a GET of a collection asks for its change
// feed: text/event-stream accepted, and preferred to JSON.
func wantsFeed(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	stream, json := -1.0, -1.0
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			q := 1.0
			if s, ok := params["q"]; ok {
				if q, err = strconv.ParseFloat(s, 64); err != nil {
					continue
				}
			}
			switch mt {
			case eventStreamType:
				stream = max(stream, q)
			case "application/json":
				json = max(json, q)
			}
		}
	}
	return stream > 0 && stream >= json
}

// feedQuery is what a stream follows.
type feedQuery struct {
	ListQuery
	resume    bool  // a Last-Event-ID was given
	resumeID  int64 // and its value; -1 when it is not one of ours
	principal string
}

// parseFeed reads the collection's filters (page, limit and sort do not
// apply and are ignored) and the resume position.
func (h *Handler) parseFeed(r *http.Request, t target, who caller) (feedQuery, *problem.Problem) {
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return feedQuery{}, paramProblem("", "the query string is malformed")
	}
	var fq feedQuery
	if v, ok := values[lastEventIDParam]; ok {
		if len(v) != 1 {
			return fq, paramProblem(lastEventIDParam, "must be given once")
		}
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || n < 0 {
			return fq, paramProblem(lastEventIDParam, "must be an event id this feed sent")
		}
		fq.resume, fq.resumeID = true, n
		values.Del(lastEventIDParam)
	}
	for _, p := range []string{"page", "limit", "sort"} {
		values.Del(p)
	}
	// the header is what EventSource sends on reconnecting, to the URL
	// it first opened: it wins over the query form
	if v := strings.TrimSpace(r.Header.Get("Last-Event-ID")); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			n = -1
		}
		fq.resume, fq.resumeID = true, n
	}
	lr := *r
	u := *r.URL
	u.RawQuery = values.Encode()
	lr.URL = &u
	q, p := h.listQuery(&lr, t)
	if p != nil {
		return fq, p
	}
	fq.ListQuery = q
	if t.coll.Owned && !who.admin {
		fq.Owner = who.user
	}
	fq.principal = who.user
	if fq.principal == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		fq.principal = "addr:" + host
	}
	return fq, nil
}

// feed serves a collection's change feed: every change after the resume
// position (or from now), as server-sent events, until the client goes,
// a write to it stalls past FeedWriteTimeout, or the server shuts down.
func (h *Handler) feed(w http.ResponseWriter, r *http.Request, t target, who caller) error {
	fq, p := h.parseFeed(r, t, who)
	if p != nil {
		return h.fail(w, r, p)
	}
	ctx := r.Context()
	if t.coll.parent != nil {
		if _, err := h.store.Get(ctx, t.coll.parent.Name, "", t.parentKey); err != nil {
			return h.storeFail(w, r, err, t.coll.parent, t.parentKey)
		}
	}
	release, ok := h.hub.acquire(fq.principal, h.FeedMaxStreams)
	if !ok {
		w.Header().Set("Retry-After", "5")
		p := problem.New(http.StatusTooManyRequests, fmt.Sprintf("you have %d change streams open on this gateway, the most allowed; close one first", h.FeedMaxStreams))
		p.Code = "too_many_streams"
		return h.fail(w, r, p)
	}
	defer release()
	wake, unsubscribe := h.hub.subscribe()
	defer unsubscribe()
	latest, err := h.hub.log.latestChange(ctx)
	if err != nil {
		return h.storeFail(w, r, err, t.coll, "")
	}

	hdr := w.Header()
	hdr.Set("Content-Type", eventStreamType)
	hdr.Set("Cache-Control", "no-store")
	hdr.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	s := &stream{h: h, w: w, rc: rc, t: t, q: fq}
	s.buf.WriteString("retry: " + strconv.Itoa(feedRetry) + "\n\n")

	cursor := latest
	if fq.resume {
		cursor = fq.resumeID
		if cursor < 0 || cursor > latest {
			s.reset(latest, "the event id is not one this feed sent")
			cursor = latest
		}
	}
	s.sent = cursor
	if err := s.flush(); err != nil {
		return nil
	}

	tick, stopTick := h.feedTicker(time.Duration(h.FeedHeartbeat))
	defer stopTick()
	for {
		batch, ok := h.hub.after(cursor, feedPage)
		if !ok {
			var pruned int64
			batch, pruned, err = h.hub.log.changesSince(ctx, cursor, feedPage)
			if err != nil {
				if ctx.Err() == nil {
					h.logger.Warn("change feed: cannot read the change log; the stream ends", zap.String("collection", t.coll.Name), zap.Error(err))
				}
				return nil
			}
			if cursor < pruned {
				if latest, err = h.hub.log.latestChange(ctx); err != nil {
					return nil
				}
				s.reset(latest, fmt.Sprintf("the change log no longer holds every change after id %d", cursor))
				cursor = latest
				batch = nil
			}
		}
		for _, c := range batch {
			s.add(c)
			cursor = c.seq
		}
		if err := s.flush(); err != nil {
			return nil
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-wake:
		case <-tick:
			s.buf.WriteString(": heartbeat\n")
			if cursor > s.sent {
				// past changes this stream does not show: a client that
				// resumes from here need not scan them again
				s.buf.WriteString("id: " + strconv.FormatInt(cursor, 10) + "\n")
				s.sent = cursor
			}
			s.buf.WriteString("\n")
			if err := s.flush(); err != nil {
				return nil
			}
		case <-ctx.Done():
			return nil
		case <-h.feedDone:
			return nil
		}
	}
}

// stream is one open change feed.
type stream struct {
	h    *Handler
	w    http.ResponseWriter
	rc   *http.ResponseController
	t    target
	q    feedQuery
	buf  bytes.Buffer // the events of one batch, at most feedPage
	sent int64        // the last id sent
}

// add writes c's event if the stream shows it.
func (s *stream) add(c *change) {
	d := c.doc
	if d.Collection != s.q.Collection || d.Parent != s.q.Parent || (s.q.Owner != "" && d.Owner != s.q.Owner) {
		return
	}
	if len(s.q.Filters) > 0 && !matches(s.q.Filters, d) {
		return
	}
	data, err := s.h.eventData(s.t.coll, c)
	if err != nil {
		s.h.logger.Error("change feed: cannot render a change", zap.String("collection", d.Collection), zap.Int64("id", c.seq), zap.Error(err))
		return
	}
	fmt.Fprintf(&s.buf, "id: %d\nevent: %s\ndata: %s\n\n", c.seq, c.op, data)
	s.sent = c.seq
}

// reset tells the client that changes may be missing before id latest:
// list the collection again, then follow from here.
func (s *stream) reset(latest int64, why string) {
	data, _ := json.Marshal(map[string]string{
		"reason": why + "; list the collection again, then follow this feed from here",
		"url":    s.h.collectionURL(s.t),
	})
	fmt.Fprintf(&s.buf, "id: %d\nevent: reset\ndata: %s\n\n", latest, data)
	s.sent = latest
}

// flush sends what is buffered within FeedWriteTimeout.
func (s *stream) flush() error {
	if s.buf.Len() == 0 {
		return nil
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(time.Duration(s.h.FeedWriteTimeout)))
	_, err := s.w.Write(s.buf.Bytes())
	s.buf.Reset()
	if err == nil {
		err = s.rc.Flush()
	}
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// eventData is a change's event data as every watcher of c sees it: the
// document's URL, its ETag and (unless deleted) its representation, as a
// GET would return it.
func (h *Handler) eventData(c *Collection, ch *change) ([]byte, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.renderer == c {
		return ch.data, nil
	}
	ev := struct {
		URL      string          `json:"url"`
		ETag     string          `json:"etag"`
		Resource json.RawMessage `json:"resource,omitempty"`
	}{URL: h.location(target{coll: c, parentKey: ch.doc.Parent}, ch.doc.Key), ETag: etagOf(ch.doc)}
	if ch.op != opDeleted {
		var err error
		if ev.Resource, err = h.render(c, ch.doc); err != nil {
			return nil, err
		}
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	ch.renderer, ch.data = c, data
	return data, nil
}

func (h *Handler) collectionURL(t target) string {
	if t.coll.parent != nil {
		return h.Prefix + "/" + t.coll.parent.Name + "/" + url.PathEscape(t.parentKey) + "/" + t.coll.Name
	}
	return h.Prefix + "/" + t.coll.Name
}

// matches reports whether d satisfies every equality filter, as the
// store's list would (values as Collection.filterValue gives them).
func matches(filters []Filter, d *Doc) bool {
	var fields map[string]any
	for _, f := range filters {
		var v any
		switch f.Field {
		case keyField:
			v = d.Key
		case metaCreated:
			v = d.Created.UTC().Format(timeLayout)
		case metaModified:
			if d.Modified.IsZero() {
				return false
			}
			v = d.Modified.UTC().Format(timeLayout)
		default:
			if fields == nil && decodeJSON(d.Body, &fields) != nil {
				return false
			}
			v = fields[f.Field]
		}
		switch want := f.Value.(type) {
		case string:
			if s, ok := v.(string); !ok || s != want {
				return false
			}
		case float64:
			n, ok := v.(json.Number)
			if !ok {
				return false
			}
			x, err := n.Float64()
			if err != nil || x != want {
				return false
			}
		case int: // a boolean, as 1 or 0
			if b, ok := v.(bool); !ok || b != (want == 1) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// feedTicker is the heartbeat's ticker (tests replace newTicker).
func (h *Handler) feedTicker(d time.Duration) (<-chan time.Time, func()) {
	if h.newTicker != nil {
		return h.newTicker(d)
	}
	t := time.NewTicker(d)
	return t.C, t.Stop
}
