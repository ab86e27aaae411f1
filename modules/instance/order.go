package instance

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/restgate/restgate/backends/resources"
	"github.com/restgate/restgate/modules/apiauth"
	"github.com/restgate/restgate/modules/cors"
	"github.com/restgate/restgate/modules/etag"
	"github.com/restgate/restgate/modules/idempotency"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/ratelimit"
)

// stage is a handler that an ordering rule names.
type stage uint8

const (
	stEncode stage = iota
	stErrors
	stCORS
	stLimitIP
	stAuth
	stLimit
	stIdempotency
	stETag
	numStages
)

var stageNames = [numStages]string{
	"encode", "api_errors", "api_cors", ratelimit.DirectiveIP, "api_auth", "api_rate_limit", "api_idempotency", "api_etag",
}

func (s stage) String() string { return stageNames[s] }

// stages is a set of stages.
type stages uint16

func setOf(ss ...stage) stages {
	var set stages
	for _, s := range ss {
		set |= 1 << s
	}
	return set
}

func (set stages) has(s stage) bool { return set&(1<<s) != 0 }

// each calls fn for the set's stages in request-path order.
func (set stages) each(fn func(stage)) {
	for set != 0 {
		s := stage(bits.TrailingZeros16(uint16(set)))
		fn(s)
		set &^= 1 << s
	}
}

// stageOf names the stage of a handler, if an ordering rule names it. A
// rate limit that shares its refunds (what `api_rate_limit_ip` sets) is the
// one meant for before api_auth.
func stageOf(h caddyhttp.MiddlewareHandler) (stage, bool) {
	switch h := h.(type) {
	case *encode.Encode:
		return stEncode, true
	case *problem.Handler:
		return stErrors, true
	case *cors.Handler:
		return stCORS, true
	case *ratelimit.Handler:
		if h.ShareRefunds {
			return stLimitIP, true
		}
		return stLimit, true
	case *apiauth.Handler:
		return stAuth, true
	case *idempotency.Handler:
		return stIdempotency, true
	case *etag.Handler:
		return stETag, true
	}
	return 0, false
}

// orderRule: on every way a request can take through an API site, each
// handler of first runs before (outside) each handler of then that it
// meets. A handler the way does not pass imposes nothing.
type orderRule struct {
	first, then stages
	// everyPath: where the API site holds first at all, a request that
	// passes a handler of then must have passed first already (api_errors
	// is the site's front door, not one door among several)
	everyPath bool
	// why says what goes wrong otherwise, in the words of the one that
	// runs too early
	why string
	// hint, if any, follows the generic fix
	hint string
}

// orderRules are the orderings restgate's handlers depend on, the one
// place they are written down: caddyfile/directives.go gives Caddyfile
// users this order at one nesting level, and checkOrder refuses any
// configuration (a `route` block, handlers split between the site and a
// `handle`, JSON) that breaks it.
var orderRules = []orderRule{
	{
		first: setOf(stEncode), then: setOf(stErrors),
		why: "api_errors reads a backend's error body to keep its message, and cannot once encode has compressed it",
	},
	{
		first: setOf(stEncode), then: setOf(stETag),
		why: "api_etag would hash and cache compressed bytes; inside encode it hashes the body the backend sent and encode marks the ETag per encoding",
	},
	{
		first: setOf(stErrors), then: setOf(stCORS, stLimitIP, stAuth, stLimit, stIdempotency, stETag), everyPath: true,
		why: "api_errors must be outermost: it puts the request target in its canonical form and removes client-sent identity headers before any module reads them, installs the require_auth guard, and renders the errors the others return",
	},
	{
		first: setOf(stCORS), then: setOf(stLimitIP, stAuth, stLimit, stIdempotency, stETag),
		why: "api_cors answers preflights, which no limit may count and api_auth must not ask for a key, and puts its headers on the responses the others refuse or replay",
	},
	{
		first: setOf(stLimitIP), then: setOf(stAuth),
		why:  "the per-IP limit throttles guessed keys, so a request api_auth refuses must already be counted",
		hint: "; a limit that keys on the principal, after api_auth, is api_rate_limit (without share_refunds)",
	},
	{
		first: setOf(stLimitIP), then: setOf(stLimit),
		why: "api_rate_limit refunds what api_rate_limit_ip admitted when it refuses a request",
	},
	{
		first: setOf(stAuth), then: setOf(stLimit),
		why:  "it keys on the principal api_auth sets (before api_auth every request counts against its client IP)",
		hint: "; a limit meant for before api_auth is api_rate_limit_ip (share_refunds in JSON)",
	},
	{
		first: setOf(stAuth), then: setOf(stIdempotency),
		why: "it scopes each Idempotency-Key to the principal api_auth sets: before api_auth, one client's retry could replay another's answer",
	},
	{
		first: setOf(stAuth), then: setOf(stETag),
		why: "its cache could answer a request api_auth would refuse",
	},
	{
		first: setOf(stLimitIP, stLimit), then: setOf(stIdempotency, stETag),
		why: "a request a limit refuses must never claim an Idempotency-Key or be answered from api_etag's cache",
	},
	{
		first: setOf(stIdempotency), then: setOf(stETag),
		why: "api_idempotency answers a retry before api_etag's cache or If-Match lock could act on it twice",
	},
}

// checkOrder refuses a configuration in which a way through an API site
// runs restgate's handlers out of the order they depend on (orderRules),
// naming the server, the route and what to change, one line per rule
// broken.
func checkOrder(app *caddyhttp.App) error {
	found := misorders(app)
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("refusing this configuration: restgate's handlers run out of the order they depend on:\n\t%s", strings.Join(found, "\n\t"))
}

// misorders walks every way a request can take through each server that
// holds an API site (site-level routes, subroutes from `handle` and
// `route`, matchers, route groups, named routes) and returns one line per
// rule broken, sorted. Error routes (`handle_errors`) are not part of the
// request chain and are not walked.
func misorders(app *caddyhttp.App) []string {
	if app == nil {
		return nil
	}
	o := orderWalk{seen: map[string]bool{}}
	for _, name := range sortedKeys(app.Servers) {
		srv := app.Servers[name]
		if !slices.ContainsFunc(srv.Routes, func(r caddyhttp.Route) bool { return holdsAPI(r, false) }) {
			continue
		}
		o.server, o.named = name, srv.NamedRoutes
		ways := []way{{}}
		for _, r := range srv.Routes {
			ways = o.route(r, ways, holdsAPI(r, false))
		}
		for _, w := range ways {
			o.end(w)
		}
	}
	slices.Sort(o.found)
	return o.found
}

// way is one way through the route tree, as far as the walk has come.
type way struct {
	ran    stages
	api    bool              // it entered an API site
	site   stages            // what the API sites it entered hold
	groups []string          // the route groups it has satisfied, sorted
	where  []string          // the matchers of the routes it entered, outermost first
	at     [numStages]string // where (route()) each stage it ran first ran
}

// key identifies what decides a way's future: two ways with one key meet
// every later handler alike, so only the first is kept.
func (w way) key() string {
	return fmt.Sprintf("%x|%t|%x|%s", w.ran, w.api, w.site, strings.Join(w.groups, "\x00"))
}

func (w way) route() string { return strings.Join(w.where, " → ") }

type orderWalk struct {
	server string
	named  map[string]*caddyhttp.Route
	found  []string
	seen   map[string]bool // found, as a set
	depth  int             // named routes being walked, against loops
}

// route returns the ways that go on after r (matched or not). top marks a
// top-level route of an API site.
func (o *orderWalk) route(r caddyhttp.Route, in []way, top bool) []way {
	var out []way
	m := describe(r.MatcherSets)
	for _, w := range in {
		if r.Group != "" && slices.Contains(w.groups, r.Group) {
			out = append(out, w) // its group has answered already
			continue
		}
		if len(r.MatcherSets) > 0 {
			out = append(out, w) // not matched
		}
		if m != "" {
			w.where = append(w.where[:len(w.where):len(w.where)], m)
		}
		if r.Group != "" {
			w.groups = append(w.groups[:len(w.groups):len(w.groups)], r.Group)
			slices.Sort(w.groups)
		}
		if top {
			w.api = true
			w.site |= stagesIn(r.Handlers)
		}
		for _, w := range o.handlers(r.Handlers, []way{w}) {
			if r.Terminal {
				o.end(w)
			} else {
				out = append(out, w)
			}
		}
	}
	return merge(out)
}

// handlers walks a route's handlers and returns the ways that go on past
// its last one.
func (o *orderWalk) handlers(hs []caddyhttp.MiddlewareHandler, ways []way) []way {
	for _, h := range hs {
		switch h := h.(type) {
		case *caddyhttp.Subroute:
			for _, r := range h.Routes {
				ways = o.route(r, ways, false)
			}
			continue
		case *caddyhttp.Invoke:
			if r, ok := o.named[h.Name]; ok && o.depth < 8 {
				o.depth++
				ways = o.route(*r, ways, false)
				o.depth--
			}
			continue
		}
		if s, ok := stageOf(h); ok {
			for i := range ways {
				ways[i] = o.run(ways[i], s)
			}
			continue
		}
		if answers(h) {
			for _, w := range ways {
				o.end(w)
			}
			return nil
		}
	}
	return ways
}

// run records that way w passes stage s, and every rule that breaks: a
// handler that should run after s has run already.
func (o *orderWalk) run(w way, s stage) way {
	for _, rule := range orderRules {
		if !rule.first.has(s) {
			continue
		}
		(w.ran & rule.then).each(func(early stage) {
			o.report(w, fmt.Sprintf("%s runs before %s on %s: %s; put %s after %s (at the site's level the Caddyfile orders them for you)%s",
				early, s, o.on(w.route()), rule.why, early, s, rule.hint))
		})
	}
	if !w.ran.has(s) {
		w.at[s] = w.route()
	}
	w.ran |= 1 << s
	return w
}

// end checks a way that ends (a handler answered, a terminal route, the
// end of the server's routes) against the everyPath rules.
func (o *orderWalk) end(w way) {
	for _, rule := range orderRules {
		if !rule.everyPath || w.site&rule.first == 0 || w.ran&rule.first != 0 {
			continue
		}
		(w.ran & rule.then).each(func(early stage) {
			var first []string
			rule.first.each(func(s stage) { first = append(first, s.String()) })
			missing := strings.Join(first, " or ")
			o.report(w, fmt.Sprintf("%s runs without %s before it on %s: %s; put %s before %s, at the site's level",
				early, missing, o.on(w.at[early]), rule.why, missing, early))
		})
	}
}

func (o *orderWalk) report(w way, line string) {
	if !w.api || o.seen[line] {
		return
	}
	o.seen[line] = true
	o.found = append(o.found, line)
}

// on names a server and a route for an operator.
func (o *orderWalk) on(route string) string {
	if route == "" {
		return o.server + " (every request)"
	}
	return fmt.Sprintf("%s route %q", o.server, route)
}

// merge keeps one way per key, the first.
func merge(ways []way) []way {
	if len(ways) < 2 {
		return ways
	}
	seen := make(map[string]bool, len(ways))
	out := ways[:0:0]
	for _, w := range ways {
		if k := w.key(); !seen[k] {
			seen[k] = true
			out = append(out, w)
		}
	}
	return out
}

// stagesIn returns the stages a route's handlers hold, subroutes included.
func stagesIn(hs []caddyhttp.MiddlewareHandler) stages {
	var set stages
	for _, h := range hs {
		if sr, ok := h.(*caddyhttp.Subroute); ok {
			for _, r := range sr.Routes {
				set |= stagesIn(r.Handlers)
			}
		} else if s, ok := stageOf(h); ok {
			set |= 1 << s
		}
	}
	return set
}

// answers reports whether a handler answers every request it gets, so no
// handler after it runs.
func answers(h caddyhttp.MiddlewareHandler) bool {
	switch h := h.(type) {
	case *reverseproxy.Handler, *resources.Handler, *caddyhttp.StaticResponse, *caddyhttp.StaticError:
		return true
	case *fileserver.FileServer:
		return !h.PassThru
	}
	return false
}
