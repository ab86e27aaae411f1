package ratelimit

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/restgate/restgate/internal/identity"
	"github.com/restgate/restgate/modules/problem"
)

// One round trip for both limits.
//
// The default chain runs a per-IP handler (api_rate_limit_ip) just before
// api_auth and a per-principal one (api_rate_limit) just after it. On
// Redis each would be one script call: two round trips, one after the
// other, per request. Paired (Pair), the per-IP handler decides nothing
// itself: it leaves its asks in the request, and the per-principal handler
// decides them with its own zones in one script, all or nothing (in a
// Redis Cluster, the per-slot split of any handler's zones applies). Each
// handler still answers for its own zones: headers, counters, trace
// events, log lines, the 429 naming the zone, report_only, on_error and
// refunds are what they are unpaired.
//
// Whatever api_auth passes on (an authenticated request, an anonymous or
// public one, a preflight) reaches the per-principal handler, which decides
// before anything after it serves the request. What api_auth refuses never
// does: the per-IP handler then decides its asks itself once api_auth has
// returned, before the answer leaves. Over the per-IP limit, its 429
// replaces api_auth's answer, WWW-Authenticate included, so that a client
// over the limit never learns whether its credential was valid.

// deferredVar is the request variable that holds a paired per-IP
// handler's asks (a *deferred).
const deferredVar = "restgate.rate_limit.deferred"

// deferred is a paired per-IP handler's asks for one request.
type deferred struct {
	by    *Handler // the per-IP handler
	asks  [maxZones]ask
	n     int
	taken bool     // the per-principal handler decides them
	rf    *refunds // what it kept of them for refunds, released when by's next returns
}

var deferredPool = sync.Pool{New: func() any { return new(deferred) }}

// Pair lets ip, a per-IP handler (ShareRefunds) that runs just before
// api_auth, leave its decisions to user, the handler that runs just after
// api_auth, so that one Redis script decides both handlers' zones. The
// caller (the restgate app's route walk) has checked that nothing else
// runs between them; Pair checks that they can share a decision: both on
// the same Redis, with the same mode and on_error. Call it after both are
// provisioned and before they serve; an error says why they were not
// paired, and both then work as they do alone.
func Pair(ip, user *Handler) error {
	switch {
	case ip == nil || user == nil || ip == user:
		return errors.New("two handlers are needed")
	case !ip.ShareRefunds:
		return errors.New("the first is not a per-IP limit (api_rate_limit_ip)")
	case ip.shared == nil || user.shared == nil:
		return errors.New("not both on Redis (store redis, or auto with an address)")
	case ip.redis != user.redis:
		return errors.New("not on the same redis app")
	case ip.Mode != user.Mode:
		return errors.New("their modes differ")
	case ip.OnError != user.OnError:
		return errors.New("their on_error policies differ")
	case ip.pairedUser != nil || ip.pairedIP != nil || user.pairedUser != nil || user.pairedIP != nil:
		return errors.New("already paired")
	}
	ip.pairedUser, user.pairedIP = user, ip
	return nil
}

// deferTo is a paired per-IP handler's ServeHTTP: it leaves asks to its
// partner and calls next (api_auth). When api_auth did not pass the request
// on, it decides them itself (decideAlone).
func (h *Handler) deferTo(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, asks []ask, now time.Time) error {
	d := deferredPool.Get().(*deferred)
	d.by = h
	d.n = copy(d.asks[:], asks)
	caddyhttp.SetVar(r.Context(), deferredVar, d)
	err := next.ServeHTTP(w, r)
	caddyhttp.SetVar(r.Context(), deferredVar, nil)
	taken, rf := d.taken, d.rf
	*d = deferred{}
	deferredPool.Put(d)
	if rf != nil {
		releaseRefunds(r, rf)
	}
	if taken {
		return err
	}
	return h.decideAlone(w, r, repl, asks, now, err)
}

// decideAlone decides a paired per-IP handler's asks for a request that
// api_auth refused (authErr), as it would have before api_auth: tokens
// spent on failed authentications stay spent, and a refusal (429, or 503
// with on_error deny) replaces api_auth's answer.
func (h *Handler) decideAlone(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, asks []ask, now time.Time, authErr error) error {
	if authErr == nil {
		// api_auth passes every request it does not refuse to the partner,
		// which takes the asks; a request served without them is a bug
		h.logger.Error("a request passed api_auth without reaching the paired per-principal rate limit; its per-IP limit was decided after it was served",
			zap.String("request_id", problem.RequestIDFromRequest(r)))
	}
	var decided [maxZones]Decision
	n, err := h.shared.decide(identity.Live(r.Context()), asks, now, decided[:])
	if err != nil {
		if err := h.undecided(w, r, asks, err); err != nil {
			w.Header().Del("Www-Authenticate")
			return err
		}
		return authErr
	}
	if _, err := h.settle(w, r, repl, asks[:n], decided[:n]); err != nil {
		w.Header().Del("Www-Authenticate")
		return err
	}
	return authErr
}

// takeDeferred returns the asks that h's paired per-IP handler left in r,
// marked as taken, or nil.
func (h *Handler) takeDeferred(r *http.Request) *deferred {
	d, _ := caddyhttp.GetVar(r.Context(), deferredVar).(*deferred)
	if d == nil || d.by != h.pairedIP || d.taken {
		return nil
	}
	d.taken = true
	return d
}

// decidePair decides the per-IP handler's deferred asks and own (this
// handler's) in one call, and answers as the two handlers would have one
// after the other.
func (h *Handler) decidePair(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, d *deferred, own []ask, now time.Time) error {
	ip, k := d.by, d.n
	var all [2 * maxZones]ask
	copy(all[:], d.asks[:k])
	m := k + copy(all[k:], own)
	var decided [2 * maxZones]Decision
	n, err := h.shared.decide(identity.Live(r.Context()), all[:m], now, decided[:])
	if err != nil {
		// each handler counts, logs and answers for its zones; they share
		// on_error
		if err := ip.undecided(w, r, all[:k], err); err != nil {
			return err
		}
		if len(own) > 0 {
			if err := h.undecided(w, r, own, err); err != nil {
				return err
			}
		}
		return next.ServeHTTP(w, r)
	}
	if n <= k && !decided[n-1].Admitted {
		// a per-IP zone refused, and nothing was taken: the per-IP
		// handler's 429, as before api_auth
		if _, err := ip.settle(w, r, repl, all[:n], decided[:n]); err != nil {
			return err
		}
		// report_only: the per-IP handler lets the request on, and this
		// one decides its own zones alone, as unpaired
		return h.serve(w, r, next, repl, own, now)
	}
	ipDecided := decided[:k]
	ownRefused := !decided[n-1].Admitted
	if ownRefused {
		// unpaired, the per-IP zones took their tokens and said so before
		// this handler refused and gave them back: the same headers and
		// counters, with nothing taken
		for i := range ipDecided {
			ipDecided[i].Admitted = true
			ipDecided[i].setState(ipDecided[i].tokens - 1)
		}
	}
	_, _ = ip.settle(w, r, repl, all[:k], ipDecided) // admitted: no error
	// a paired per-IP handler shares its refunds (Pair)
	if !ownRefused {
		d.rf = ip.keepForRefund(r, ipDecided)
	}
	return h.serveDecided(w, r, next, repl, own, decided[k:n])
}
