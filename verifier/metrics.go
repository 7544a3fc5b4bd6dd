package verifier

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/artifactstore/artifactstore/commands"
)

// Metrics counts what verifier workers do. A nil *Metrics counts nothing.
type Metrics struct {
	bytes    prometheus.Counter
	outcomes *prometheus.CounterVec
}

// NewMetrics registers the verifier's metrics on reg:
// artifactstore_verify_bytes_total and
// artifactstore_verify_outcomes_total{outcome="verified|corrupt|missing"}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "artifactstore_verify_bytes_total",
			Help: "Bytes re-read and re-digested by verifications.",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_verify_outcomes_total",
			Help: "Verifications by outcome: verified, corrupt (found damaged) or missing (found gone).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{commands.OutcomeVerified, commands.OutcomeCorrupt, commands.OutcomeMissing} {
		m.outcomes.WithLabelValues(o) // export zeros, so alerts see the series
	}
	reg.MustRegister(m.bytes, m.outcomes)
	return m
}

func (m *Metrics) observe(outcome string, bytesRead int64) {
	if m == nil {
		return
	}
	m.bytes.Add(float64(bytesRead))
	m.outcomes.WithLabelValues(outcome).Inc()
}
