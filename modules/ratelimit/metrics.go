package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/restgate/restgate/internal/metrics"
)

// zoneCounters are one zone's decision counters (admitted, refused,
// would_refuse, undecided: the store could not decide), looked up once at
// provision time.
type zoneCounters struct {
	admitted, refused, wouldRefuse, undecided prometheus.Counter
}

func countersFor(zone string) zoneCounters {
	d := metrics.RateLimitDecisions
	return zoneCounters{
		admitted:    d.WithLabelValues(zone, "admitted"),
		refused:     d.WithLabelValues(zone, "refused"),
		wouldRefuse: d.WithLabelValues(zone, "would_refuse"),
		undecided:   d.WithLabelValues(zone, "undecided"),
	}
}
