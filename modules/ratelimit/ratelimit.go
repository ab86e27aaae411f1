// Package ratelimit implements http.handlers.api_rate_limit: token buckets
// (store.go) per principal or per client IP in bounded LRUs,
// all-or-nothing across zones, with the IETF RateLimit-Policy and RateLimit
// headers on every response.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/restgate/restgate/internal/fieldvalue"
	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/internal/metrics"
	"github.com/restgate/restgate/internal/trace"
	"github.com/restgate/restgate/modules/problem"
	"github.com/restgate/restgate/modules/redisapp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Modes.
const (
	ModeEnforce    = "enforce"
	ModeReportOnly = "report_only"
)

// Handler admits a request only if every zone that applies to it has a
// token for the request's key; a zone that admitted it gets its token back
// when a later zone (here, or in an earlier api_rate_limit handler of the
// same request) refuses it, so a refused request spends nothing anywhere.
//
// Every response that passed through a zone carries `RateLimit-Policy` and
// `RateLimit` (draft-ietf-httpapi-ratelimit-headers); a refusal is a 429 with
// `Retry-After` and a problem of type quota-exceeded listing
// `violated-policies`.
//
// Placeholder set on refusal: `{http.rate_limit.exceeded.name}` (the zone).
type Handler struct {
	// The zones. Each request is checked against every zone whose matchers
	// it meets.
	Zones []*Zone `json:"zones,omitempty"`

	// `enforce` (default) refuses with 429; `report_only` sets the headers
	// and logs what it would refuse, and refuses nothing.
	Mode string `json:"mode,omitempty"`

	// Also send X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset.
	LegacyHeaders bool `json:"legacy_headers,omitempty"`

	// Log the key (a user name or an IP address) of refused requests.
	// Default: off, since keys identify people.
	LogKey bool `json:"log_key,omitempty"`

	// Keep this handler's admitted reservations for a later api_rate_limit
	// in the same route to refund if it refuses the request. The Caddyfile's
	// `api_rate_limit_ip` sets it.
	ShareRefunds bool `json:"share_refunds,omitempty"`

	// Where the buckets live: `local` (default: this process's memory),
	// `redis` (the redis app's server, shared by every gateway that uses it:
	// one round trip decides all of this handler's zones, on Redis's clock;
	// the app must be configured with an address), or `auto` (redis when
	// the redis app is configured with an address, else local).
	Store string `json:"store,omitempty"`

	// With store redis or auto, what happens while Redis cannot decide:
	// `allow` admits requests (fail open, without RateLimit headers) and
	// `deny` refuses them with a 503 problem (fail closed). Required with
	// redis and auto.
	OnError string `json:"on_error,omitempty"`

	now     func() time.Time
	logger  *zap.Logger
	sampled *zap.Logger // logger, sampled: refusals and undecided requests
	events  *caddyevents.App
	ctx     caddy.Context
	redis   *redisapp.App
	shared  *redisDecider // the redis store; nil for the local one

	// Pair's partners (pair.go): a per-IP handler before api_auth leaves
	// its asks to pairedUser; a per-principal one after it decides
	// pairedIP's asks with its own.
	pairedUser, pairedIP *Handler

	// policyAfter is the RateLimit-Policy value last made from an earlier
	// handler's and all of this one's zones: the same on every request of
	// a chain, so made once and shared.
	policyAfter *atomic.Pointer[policyMemo]
}

// policyMemo is a RateLimit-Policy value and the earlier handler's value
// it was made from.
type policyMemo struct {
	prev  string
	value []string // shared, clipped: never changed in place
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_rate_limit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// StoreAuto is the store that follows the redis app: redis when it is
// configured with an address, else local.
const StoreAuto = "auto"

// maxZones bounds the zones of one handler (the per-request bookkeeping
// lives on the stack).
const maxZones = 8

// Provision sets defaults and attaches each zone to its state, which
// survives config reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.policyAfter = new(atomic.Pointer[policyMemo])
	h.ctx = ctx
	h.logger = ctx.Logger()
	// refusal and undecided lines: the first 10 a second (of each
	// message), then one in 100
	h.sampled = h.logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 10, 100)
	}))
	if h.now == nil {
		h.now = time.Now
	}
	if h.Mode == "" {
		h.Mode = ModeEnforce
	}
	// emit events only where the operator configured the events app (and so
	// may have subscribed to them)
	if app, err := ctx.AppIfConfigured("events"); err == nil {
		h.events, _ = app.(*caddyevents.App)
	}
	if err := metrics.Register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	switch h.Store {
	case "", StoreLocal:
	case StoreRedis, StoreAuto:
		// auto needs on_error too, so that a configuration that loads
		// without Redis also loads with it
		if h.OnError != OnErrorAllow && h.OnError != OnErrorDeny {
			return fmt.Errorf("store %s needs an explicit on_error: allow (admit requests while Redis is down) or deny (refuse them with 503)", h.Store)
		}
		get := redisapp.Get
		if h.Store == StoreAuto {
			get = redisapp.Enabled
		}
		app, err := get(ctx)
		if err != nil {
			return err
		}
		if app != nil {
			h.redis = app
			h.shared = &redisDecider{app: app}
		}
	default:
		return fmt.Errorf("store must be %s, %s or %s, not %q", StoreLocal, StoreRedis, StoreAuto, h.Store)
	}
	for _, z := range h.Zones {
		if err := z.provision(ctx); err != nil {
			return fmt.Errorf("zone %q: %v", z.Name, err)
		}
		z.counters = countersFor(z.Name)
		if h.redis != nil {
			z.redisPrefix = z.redisKeyPrefix(h.redis)
		}
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.Mode != ModeEnforce && h.Mode != ModeReportOnly {
		return fmt.Errorf("mode must be %s or %s", ModeEnforce, ModeReportOnly)
	}
	if len(h.Zones) == 0 {
		return fmt.Errorf("no zones")
	}
	if len(h.Zones) > maxZones {
		return fmt.Errorf("at most %d zones per handler", maxZones)
	}
	names := map[string]bool{}
	for _, z := range h.Zones {
		if names[z.Name] {
			return fmt.Errorf("zone %q declared twice", z.Name)
		}
		names[z.Name] = true
		if err := z.validate(); err != nil {
			return fmt.Errorf("zone %q: %v", z.Name, err)
		}
	}
	return nil
}

// Cleanup releases the zones' state.
func (h *Handler) Cleanup() error {
	var errs []error
	for _, z := range h.Zones {
		errs = append(errs, z.release())
	}
	return errors.Join(errs...)
}

// refunds holds the admitted decisions of earlier handlers in a request,
// in one allocation for the usual handler or two of one zone each.
type refunds struct {
	decisions []Decision
	inline    [2]Decision
}

const refundsVar = "restgate.rate_limit.refunds"

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	now := h.now()
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var asks [maxZones]ask
	m := 0
	for _, z := range h.Zones {
		if z.applies(r) {
			asks[m] = ask{zone: z, key: z.keyFor(r, repl)}
			m++
		}
	}
	if h.pairedUser != nil && m > 0 {
		return h.deferTo(w, r, next, repl, asks[:m], now)
	}
	if h.pairedIP != nil {
		if d := h.takeDeferred(r); d != nil {
			return h.decidePair(w, r, next, repl, d, asks[:m], now)
		}
	}
	return h.serve(w, r, next, repl, asks[:m], now)
}

// serve decides asks with this handler's store alone and answers.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, asks []ask, now time.Time) error {
	if len(asks) == 0 {
		return next.ServeHTTP(w, r)
	}
	var decided [maxZones]Decision
	var n int
	if h.shared != nil {
		var err error
		// the decision is this handler's own I/O: before api_auth the
		// request's context is done (api_errors require_auth), the
		// client's liveness is not
		if n, err = h.shared.decide(identity.Live(r.Context()), asks, now, decided[:]); err != nil {
			if err := h.undecided(w, r, asks, err); err != nil {
				return err
			}
			return next.ServeHTTP(w, r)
		}
	} else {
		n = decideLocal(asks, now, decided[:])
	}
	return h.serveDecided(w, r, next, repl, asks[:n], decided[:n])
}

// serveDecided answers a decision of this handler's zones (settle) and
// passes an admitted request on, keeping its reservations for a later
// handler to refund (ShareRefunds) until next returns.
func (h *Handler) serveDecided(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, asks []ask, decided []Decision) error {
	if len(decided) == 0 {
		return next.ServeHTTP(w, r)
	}
	admitted, err := h.settle(w, r, repl, asks, decided)
	if err != nil {
		return err
	}
	if admitted && h.ShareRefunds {
		if rf := h.keepForRefund(r, decided); rf != nil {
			defer releaseRefunds(r, rf)
		}
	}
	return next.ServeHTTP(w, r)
}

// settle writes the RateLimit fields of a decision of this handler's zones
// (decided[i] is asks[i]'s, up to and including the first refused one) and
// accounts for it: counters and trace events, and for a refusal the
// refunds of earlier handlers, the log line and the event. It reports
// whether the request was admitted; a refusal is the 429 error, or nil in
// report_only (the request goes on).
func (h *Handler) settle(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, asks []ask, decided []Decision) (bool, error) {
	var applied [maxZones]*Zone
	n := len(decided)
	refused := -1
	for i := range n {
		applied[i] = asks[i].zone
		if !decided[i].Admitted {
			refused = i
		}
	}
	h.setHeaders(w.Header(), applied[:n], decided)

	if refused < 0 {
		for i := range n {
			applied[i].counters.admitted.Inc()
			trace.RateLimit(r.Context(), applied[i].Name, trace.Admitted, decided[i].Remaining)
		}
		return true, nil
	}

	// refused: nothing admitted for this request may stay spent in an
	// earlier handler either (whose tokens were taken some time ago: a
	// refund is one whole token, whenever it is made); the decider has
	// spent nothing in this one
	h.refundEarlier(r)
	z, d := applied[refused], decided[refused]
	trace.RateLimit(r.Context(), z.Name, trace.Refused, d.Remaining)
	h.reportRefusal(r, z, d)
	if h.Mode == ModeReportOnly {
		z.counters.wouldRefuse.Inc()
		return false, nil
	}
	z.counters.refused.Inc()
	if repl != nil {
		repl.Set("http.rate_limit.exceeded.name", z.Name)
	}
	w.Header().Set("Retry-After", strconv.FormatInt(ceilSeconds(d.NextIn), 10))
	p := problem.New(http.StatusTooManyRequests, fmt.Sprintf("the %q limit of %d requests per %s is used up; retry after the Retry-After delay", z.Name, z.Events, time.Duration(z.Window)))
	p.Type = problem.TypeQuotaExceeded
	p.Code = "rate_limited"
	p.Extensions = map[string]any{"violated-policies": []string{z.Name}}
	return false, caddyhttp.Error(http.StatusTooManyRequests, p)
}

// undecided handles a request that the store could not decide (Redis is
// down or slow): on_error allow admits it (nil: the request goes on),
// without RateLimit headers; deny refuses it with a 503 problem. Either way
// the operator is told why (sampled), since neither answer says it to
// anyone else.
func (h *Handler) undecided(w http.ResponseWriter, r *http.Request, asks []ask, err error) error {
	for _, a := range asks {
		a.zone.counters.undecided.Inc()
		trace.RateLimit(r.Context(), a.zone.Name, trace.Undecided, -1)
	}
	h.reportUndecided(r, asks, err)
	if h.OnError == OnErrorAllow {
		return nil
	}
	// refused: the earlier handlers' tokens go back, as on a 429
	h.refundEarlier(r)
	if retry := h.redis.RetryIn(); retry > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(ceilSeconds(retry), 10))
	}
	return problem.Error(http.StatusServiceUnavailable, "rate_limit_unavailable",
		"the gateway cannot check the rate limit right now, so the request was not served; retry shortly")
}

// refundEarlier gives back what earlier handlers admitted r for (the per-IP
// zone before auth): r is refused here, so nothing it was admitted for may
// stay spent.
func (h *Handler) refundEarlier(r *http.Request) {
	if rf, ok := caddyhttp.GetVar(r.Context(), refundsVar).(*refunds); ok {
		for i := range rf.decisions {
			rf.decisions[i].Refund(h.now())
		}
		rf.decisions = rf.decisions[:0]
	}
}

// refundsPool recycles the refunds of finished requests: an admitted
// request that is never refunded allocates nothing for it.
var refundsPool = sync.Pool{New: func() any { return new(refunds) }}

// keepForRefund records decided for a later handler's refusal to refund.
// It returns the refunds it made, which the caller releases once next has
// returned (nothing reads them after that), or nil when an earlier handler
// made them.
func (h *Handler) keepForRefund(r *http.Request, decided []Decision) *refunds {
	rf, ok := caddyhttp.GetVar(r.Context(), refundsVar).(*refunds)
	if ok {
		rf.decisions = append(rf.decisions, decided...)
		return nil
	}
	rf = refundsPool.Get().(*refunds)
	rf.decisions = append(rf.inline[:0], decided...)
	caddyhttp.SetVar(r.Context(), refundsVar, rf)
	return rf
}

// releaseRefunds takes rf out of r's variables and recycles it.
func releaseRefunds(r *http.Request, rf *refunds) {
	caddyhttp.SetVar(r.Context(), refundsVar, nil)
	clear(rf.decisions)
	clear(rf.inline[:])
	rf.decisions = nil
	refundsPool.Put(rf)
}

// reportUndecided logs why the store could not decide a request, at warn
// level, sampled; a client that went away before the answer is no news for
// the operator (debug).
func (h *Handler) reportUndecided(r *http.Request, asks []ask, err error) {
	lvl := zapcore.WarnLevel
	if errors.Is(err, context.Canceled) && identity.Live(r.Context()).Err() != nil {
		lvl = zapcore.DebugLevel
	}
	if c := h.sampled.Check(lvl, "rate limit undecided: the store could not answer"); c != nil {
		zones := make([]string, len(asks))
		for i, a := range asks {
			zones[i] = a.zone.Name
		}
		c.Write(
			zap.Strings("zones", zones),
			zap.String("store", h.Store),
			zap.String("on_error", h.OnError),
			zap.String("request_id", problem.RequestIDFromRequest(r)),
			zap.Error(err),
		)
	}
}

// reportRefusal logs a refusal (sampled: under a flood the log must not
// become the flood) and emits the event. Fields are built only when the
// line is written.
func (h *Handler) reportRefusal(r *http.Request, z *Zone, d Decision) {
	if c := h.sampled.Check(zapcore.InfoLevel, "rate limit exceeded"); c != nil {
		fields := []zap.Field{
			zap.String("zone", z.Name),
			zap.String("mode", h.Mode),
			zap.Duration("retry_in", d.NextIn),
			zap.String("request_id", problem.RequestIDFromRequest(r)),
		}
		if h.LogKey {
			fields = append(fields, zap.String("key", z.keyFor(r, nil)))
		}
		c.Write(fields...)
	}
	if h.events != nil {
		h.events.Emit(h.ctx, "rate_limit_exceeded", map[string]any{"zone": z.Name, "mode": h.Mode})
	}
}

// setHeaders writes RateLimit-Policy and RateLimit for the zones that
// applied. Each is one field line, to which a later handler's zones are
// appended as list members: the same list as separate lines would be
// (RFC 9110 §5.3), in fewer header lines to write and parse.
func (h *Handler) setHeaders(hdr http.Header, zones []*Zone, decided []Decision) {
	var arr [256]byte // on the stack for the usual one or two zones
	buf := listStart(arr[:0], hdr["Ratelimit"])
	for i, z := range zones {
		if i > 0 {
			buf = append(buf, ", "...)
		}
		buf = appendItem(buf, z.quotedName, decided[i])
	}
	hdr["Ratelimit"] = fieldvalue.Of(buf)

	old := hdr["Ratelimit-Policy"]
	memoize := len(old) == 1 && len(zones) == len(h.Zones) && h.policyAfter != nil
	var m *policyMemo
	if memoize {
		m = h.policyAfter.Load()
	}
	if len(old) == 0 && len(zones) == 1 {
		hdr["Ratelimit-Policy"] = zones[0].policyHeader // shared, clipped: never changed in place
	} else if m != nil && m.prev == old[0] {
		hdr["Ratelimit-Policy"] = m.value
	} else {
		buf = listStart(arr[:0], old)
		for i, z := range zones {
			if i > 0 {
				buf = append(buf, ", "...)
			}
			buf = append(buf, z.policy...)
		}
		v := []string{string(buf)}
		hdr["Ratelimit-Policy"] = v[:1:1]
		if memoize {
			h.policyAfter.Store(&policyMemo{prev: old[0], value: v[:1:1]})
		}
	}
	if h.LegacyHeaders {
		// the most constrained zone speaks for the request
		lo := 0
		for i := range decided {
			if decided[i].Remaining < decided[lo].Remaining {
				lo = i
			}
		}
		hdr.Set("X-Ratelimit-Limit", strconv.Itoa(zones[lo].Events))
		hdr.Set("X-Ratelimit-Remaining", strconv.Itoa(int(decided[lo].Remaining)))
		hdr.Set("X-Ratelimit-Reset", strconv.FormatInt(ceilSeconds(decided[lo].NextIn), 10))
	}
}

// appendItem appends one RateLimit list member, `"name";r=<remaining>;t=<s>`
// where t is the seconds until more quota is available (0 with a full
// bucket; on a 429 it equals Retry-After). quotedName is already an
// sf-string.
func appendItem(b []byte, quotedName string, d Decision) []byte {
	b = append(b, quotedName...)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, int64(math.Floor(d.Remaining)), 10)
	b = append(b, ";t="...)
	return strconv.AppendInt(b, ceilSeconds(d.NextIn), 10)
}

// listStart begins a list field's value with the members an earlier
// handler wrote, if any, ready for more.
func listStart(b []byte, old []string) []byte {
	if len(old) == 0 {
		return b
	}
	return append(append(b, strings.Join(old, ", ")...), ", "...)
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// clientIP is Caddy's client IP (which honours trusted_proxies), masked to
// the zone's IPv6 prefix so that one host cannot rotate through its /64.
func clientIP(r *http.Request, v6prefix int) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		ip, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	if !strings.Contains(ip, ":") {
		return ip
	}
	parsed := net.ParseIP(ip)
	if parsed == nil {
		return ip
	}
	return parsed.Mask(net.CIDRMask(v6prefix, 128)).String() + "/" + strconv.Itoa(v6prefix)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
