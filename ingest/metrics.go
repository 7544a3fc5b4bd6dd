package ingest

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/artifactstore/artifactstore/commands"
)

// Metrics counts what an ingester does. A nil *Metrics counts nothing.
type Metrics struct {
	bytes      prometheus.Counter
	objects    *prometheus.CounterVec
	rejections *prometheus.CounterVec
	failures   *prometheus.CounterVec
	duration   prometheus.Histogram
	groupSize  prometheus.Histogram
	groupTime  prometheus.Histogram
	repairs    *prometheus.CounterVec
}

// NewMetrics registers the ingester's metrics on reg:
// artifactstore_ingest_bytes_total, artifactstore_ingest_objects_total
// {deduplicated}, artifactstore_ingest_rejections_total{code},
// artifactstore_ingest_failures_total{code} and the
// histograms artifactstore_ingest_duration_seconds (a command's handling,
// from delivery to commit and reply), artifactstore_ingest_commit_group_size
// (commands per group commit: near 1 under load means commits do not
// batch), artifactstore_ingest_commit_seconds (one group's transaction)
// and artifactstore_ingest_repairs_total{was} (stored copies a re-upload
// replaced because they were corrupt or missing).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "artifactstore_ingest_bytes_total",
			Help: "Bytes of blobs ingested (deduplicated ones included).",
		}),
		objects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_ingest_objects_total",
			Help: "Files ingested, by whether the backend already held their bytes.",
		}, []string{"deduplicated"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_ingest_rejections_total",
			Help: "Commands rejected, by reason code.",
		}, []string{"code"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_ingest_failures_total",
			Help: "Commands the ingester gave up on (answered failed), by code: unavailable, insufficient_storage, internal.",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "artifactstore_ingest_duration_seconds",
			Help:    "Time to handle one command, from delivery to commit and reply.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1 ms .. 33 s
		}),
		groupSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "artifactstore_ingest_commit_group_size",
			Help:    "Commands committed together in one transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10), // 1 .. 512
		}),
		groupTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "artifactstore_ingest_commit_seconds",
			Help:    "Time of one group commit's transaction, the ingest lock held.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}),
	}
	m.repairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "artifactstore_ingest_repairs_total",
		Help: "Stored copies replaced by a re-upload's verified bytes, by what was wrong with them (corrupt, missing).",
	}, []string{"was"})
	m.objects.WithLabelValues("false")
	m.objects.WithLabelValues("true")
	m.repairs.WithLabelValues("corrupt")
	m.repairs.WithLabelValues("missing")
	reg.MustRegister(m.bytes, m.objects, m.rejections, m.failures, m.duration, m.groupSize, m.groupTime, m.repairs)
	return m
}

// outcome counts one committed outcome.
func (m *Metrics) outcome(r commands.Reply) {
	if m == nil {
		return
	}
	switch r.Status {
	case commands.StatusRejected:
		m.rejections.WithLabelValues(r.Code).Inc()
	case commands.StatusStored, commands.StatusRepaired:
		m.bytes.Add(float64(r.Size))
		m.objects.WithLabelValues(strconv.FormatBool(r.Deduplicated)).Inc()
		if r.Status == commands.StatusRepaired && !r.Duplicate {
			m.repairs.WithLabelValues(r.Repaired).Inc()
		}
	}
}

// failed counts a command answered as failed.
func (m *Metrics) failed(code string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(code).Inc()
}

func (m *Metrics) handled(d time.Duration) {
	if m == nil {
		return
	}
	m.duration.Observe(d.Seconds())
}

func (m *Metrics) committed(jobs int, d time.Duration) {
	if m == nil {
		return
	}
	m.groupSize.Observe(float64(jobs))
	m.groupTime.Observe(d.Seconds())
}
