// Package metrics holds restgate's Prometheus collectors: one place for
// their names and labels. Every label has a small fixed set of values (an
// outcome, a status, a zone an operator named): never a key, user, path or
// address.
//
// The collectors live for the process, so their counts survive config
// reloads; each module registers them with the registry of the config it
// belongs to (Caddy makes one per config and serves it on the admin API's
// /metrics).
package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "restgate"

// Auth outcomes, one per request that api_auth decided.
var (
	authOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "auth", Name: "requests_total",
		Help: "Requests api_auth decided, by outcome: ok, missing, invalid, insufficient_scope, anonymous (an anonymous method or a public path), preflight.",
	}, []string{"outcome"})
	AuthOK                = authOutcomes.WithLabelValues("ok")
	AuthMissing           = authOutcomes.WithLabelValues("missing")
	AuthInvalid           = authOutcomes.WithLabelValues("invalid")
	AuthInsufficientScope = authOutcomes.WithLabelValues("insufficient_scope")
	AuthAnonymous         = authOutcomes.WithLabelValues("anonymous")
	AuthPreflight         = authOutcomes.WithLabelValues("preflight")

	keyReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "auth", Name: "key_reloads_total",
		Help: "Key-file reloads after a change, by result (ok, failed: the previous keys were kept).",
	}, []string{"result"})
	KeyReloadOK     = keyReloads.WithLabelValues("ok")
	KeyReloadFailed = keyReloads.WithLabelValues("failed")

	KeysLoaded = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "auth", Name: "keys_loaded",
		Help: "API keys loaded by the most recent successful load.",
	})
)

// Cache events and size (api_etag's shared cache).
var (
	cacheEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "cache", Name: "events_total",
		Help: "Shared-cache events: hit, miss, stored, revalidated (a stored response refreshed by a 304), evicted (dropped for room), invalidated (dropped after a write), stale_fill (a response not stored because a write invalidated its resource while it was being fetched).",
	}, []string{"event"})
	CacheHit         = cacheEvents.WithLabelValues("hit")
	CacheMiss        = cacheEvents.WithLabelValues("miss")
	CacheStored      = cacheEvents.WithLabelValues("stored")
	CacheRevalidated = cacheEvents.WithLabelValues("revalidated")
	CacheEvicted     = cacheEvents.WithLabelValues("evicted")
	CacheInvalidated = cacheEvents.WithLabelValues("invalidated")
	CacheStaleFill   = cacheEvents.WithLabelValues("stale_fill")

	CacheBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "cache", Name: "bytes",
		Help: "Bytes the shared cache's entries use (the figure max_size bounds).",
	})
)

// Responses to conditional requests, and errors rendered, at api_errors.
var (
	conditional = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "http", Name: "conditional_responses_total",
		Help: "Responses with a precondition status: 304 Not Modified, 412 Precondition Failed, 428 Precondition Required.",
	}, []string{"status"})
	NotModified          = conditional.WithLabelValues("304")
	PreconditionFailed   = conditional.WithLabelValues("412")
	PreconditionRequired = conditional.WithLabelValues("428")

	errorsRendered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "errors", Name: "rendered_total",
		Help: "Problem responses api_errors sent, by status class (4xx, 5xx) and source (gateway: raised by a handler; backend: an upstream's error response).",
	}, []string{"class", "source"})
	errorsByClass = [2][2]prometheus.Counter{
		{errorsRendered.WithLabelValues("4xx", "gateway"), errorsRendered.WithLabelValues("4xx", "backend")},
		{errorsRendered.WithLabelValues("5xx", "gateway"), errorsRendered.WithLabelValues("5xx", "backend")},
	}
)

// Source says who produced an error response.
type Source int

const (
	Gateway Source = iota
	Backend
)

// ErrorRendered counts one problem response.
func ErrorRendered(status int, src Source) {
	class := 0
	if status >= 500 {
		class = 1
	}
	errorsByClass[class][src].Inc()
}

// Conditional counts a response whose status answers a precondition.
func Conditional(status int) {
	switch status {
	case 304:
		NotModified.Inc()
	case 412:
		PreconditionFailed.Inc()
	case 428:
		PreconditionRequired.Inc()
	}
}

// RateLimitDecisions counts rate-limit decisions by zone (an operator's
// name) and outcome (admitted, refused, would_refuse).
var RateLimitDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: namespace, Subsystem: "rate_limit", Name: "decisions_total",
	Help: "Rate-limit decisions by zone and outcome (admitted, refused, would_refuse, undecided).",
}, []string{"zone", "outcome"})

var all = []prometheus.Collector{
	authOutcomes, keyReloads, KeysLoaded, cacheEvents, CacheBytes,
	conditional, errorsRendered, RateLimitDecisions,
}

// Register adds every restgate collector to reg (a config's registry);
// registering again with the same registry is not an error. A nil reg
// (a module provisioned outside Caddy, in a unit test) is ignored.
func Register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range all {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}
