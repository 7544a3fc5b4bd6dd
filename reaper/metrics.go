package reaper

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the reaper does. A nil *Metrics counts nothing.
type Metrics struct {
	expired, deleted, bytesFreed, quarantined, passes prometheus.Counter
}

// NewMetrics registers the reaper's metrics on reg:
// artifactstore_reaper_expired_packages_total,
// artifactstore_reaper_deleted_objects_total,
// artifactstore_reaper_freed_bytes_total,
// artifactstore_reaper_quarantined_files_total and
// artifactstore_reaper_passes_total.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "artifactstore_reaper_" + name, Help: help})
	}
	m := &Metrics{
		expired:     c("expired_packages_total", "Packages whose retention expired."),
		deleted:     c("deleted_objects_total", "Objects whose bytes were deleted because nothing live referenced them."),
		bytesFreed:  c("freed_bytes_total", "Bytes freed by deleted objects."),
		quarantined: c("quarantined_files_total", "Files no row knew, moved to quarantine."),
		passes:      c("passes_total", "Reaper passes run (complete or not)."),
	}
	reg.MustRegister(m.expired, m.deleted, m.bytesFreed, m.quarantined, m.passes)
	return m
}

// pass counts what one pass did, also when it stopped half-way.
func (m *Metrics) pass(rep Report) {
	if m == nil {
		return
	}
	m.passes.Inc()
	m.expired.Add(float64(rep.Expired))
	m.deleted.Add(float64(rep.Deleted))
	m.bytesFreed.Add(float64(rep.BytesFreed))
	m.quarantined.Add(float64(rep.Quarantined))
}
