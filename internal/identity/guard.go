package identity

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ErrUnprotected is the error of a request context that api_errors locked
// (`require_auth`) and nothing unlocked: no api_auth checked the request,
// and no public declaration covered it.
var ErrUnprotected = errors.New("this route on the API host is not behind api_auth and is not declared public")

// The fail-closed guard. api_errors (with require_auth) hands the rest of
// the chain a request whose context is already done, with ErrUnprotected:
// anything that honours its context — reverse_proxy's transport first,
// which refuses a done context before it dials — does nothing. api_auth
// unlocks the request it passes on, once it has authenticated it or found
// it public: the context is then the client's again, with every value
// added since. Handlers that ignore their context (respond, file_server)
// are caught on the way out: a success that was never unlocked is refused.
//
// A handler before api_auth that needs I/O for its own decision (the
// per-IP rate limiter's Redis call) uses Live(ctx) for it, never the
// request's context: see Live.

// gate is the lock: one context wrapper, made once by Lock, that Unlock
// opens in place (no second wrapper, no second request copy). While shut it
// is done, with ErrUnprotected; once open it is the client's context again,
// with every value added since (those contexts wrap the gate).
type gate struct {
	context.Context // the client's context
	open            atomic.Bool
}

type liveKey struct{}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// shut is a context that is already done, for AfterFunc on a shut gate.
var shut = func() context.Context { c, cancel := context.WithCancel(context.Background()); cancel(); return c }()

func (g *gate) Done() <-chan struct{} {
	if g.open.Load() {
		return g.Context.Done()
	}
	return closed
}

func (g *gate) Err() error {
	if g.open.Load() {
		return g.Context.Err()
	}
	return ErrUnprotected
}

func (g *gate) Deadline() (deadline time.Time, ok bool) {
	if g.open.Load() {
		return g.Context.Deadline()
	}
	return time.Time{}, false
}

func (g *gate) Value(key any) any {
	switch key.(type) {
	case liveKey:
		return g.Context // the client's context
	case gateKey:
		return g
	}
	return g.Context.Value(key)
}

// AfterFunc lets contexts derived from an open gate follow the client's
// without a goroutine each (context.WithCancel looks for it); on a shut
// gate f runs at once, as on any done context.
func (g *gate) AfterFunc(f func()) func() bool {
	if g.open.Load() {
		return context.AfterFunc(g.Context, f)
	}
	return context.AfterFunc(shut, f)
}

type gateKey struct{}

// Live returns the context a handler uses for its own I/O while the
// request may still be locked (the rate limiter's Redis calls before
// api_auth): it ends when the client goes away, as the client's does, but
// carries no request values, so it cannot stand in for the request's
// context: a handler must never pass it on to next or to anything that
// serves the request (reverse_proxy, a backend), which still sees a done
// context until api_auth unlocks it. For a request that was never locked,
// or that api_auth unlocked, it returns ctx itself.
func Live(ctx context.Context) context.Context {
	if ctx.Err() != ErrUnprotected {
		return ctx
	}
	live, ok := ctx.Value(liveKey{}).(context.Context)
	if !ok {
		return ctx
	}
	return liveOnly{live}
}

// liveOnly is a context's liveness without its values.
type liveOnly struct{ context.Context }

func (liveOnly) Value(any) any { return nil }

// AfterFunc lets contexts derived from this one (a call's timeout) follow
// the client's without a goroutine each.
func (l liveOnly) AfterFunc(f func()) func() bool { return context.AfterFunc(l.Context, f) }

const passedVar = "restgate.auth.passed"

// Lock returns r with a done context: see ErrUnprotected.
func Lock(r *http.Request) *http.Request {
	return r.WithContext(&gate{Context: r.Context()})
}

// Unlock gives r its client's live context back, and records that the
// request was let through (authenticated or public). It opens the gate Lock
// made, in place, and returns r itself: every context derived from the
// request's since the lock (held by the handlers before api_auth too) is
// live from then on, as the request now is.
func Unlock(r *http.Request) *http.Request {
	caddyhttp.SetVar(r.Context(), passedVar, true)
	if g, ok := r.Context().Value(gateKey{}).(*gate); ok {
		g.open.Store(true)
	}
	return r
}

// Answered records that the gateway answered r itself (a CORS preflight):
// nothing behind it served the request.
func Answered(r *http.Request) { caddyhttp.SetVar(r.Context(), passedVar, true) }

// Passed reports whether api_auth let r through (or the gateway answered it).
func Passed(r *http.Request) bool {
	ok, _ := caddyhttp.GetVar(r.Context(), passedVar).(bool)
	return ok
}
