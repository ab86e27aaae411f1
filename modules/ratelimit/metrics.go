package ratelimit

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts decisions by zone and outcome (admitted, refused,
// would_refuse), never by key: the labels stay few.
type metrics struct {
	decisions *prometheus.CounterVec
}

func registerMetrics(reg *prometheus.Registry) (*metrics, error) {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "restgate",
		Subsystem: "rate_limit",
		Name:      "decisions_total",
		Help:      "Rate-limit decisions by zone and outcome.",
	}, []string{"zone", "outcome"})
	if reg == nil {
		return &metrics{decisions: cv}, nil
	}
	if err := reg.Register(cv); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		cv = are.ExistingCollector.(*prometheus.CounterVec)
	}
	return &metrics{decisions: cv}, nil
}

// zoneCounters are one zone's counters, looked up once at provision time.
type zoneCounters struct {
	admitted, refused, wouldRefuse prometheus.Counter
}

func (m *metrics) forZone(zone string) zoneCounters {
	return zoneCounters{
		admitted:    m.decisions.WithLabelValues(zone, "admitted"),
		refused:     m.decisions.WithLabelValues(zone, "refused"),
		wouldRefuse: m.decisions.WithLabelValues(zone, "would_refuse"),
	}
}
