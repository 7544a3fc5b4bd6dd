package status

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/artifactstore/artifactstore/catalog"
)

// Collector exports the status report as Prometheus gauges, gathered afresh
// at each scrape: consumer backlogs, dead letters, log head and projector
// lag, objects and bytes by state, packages by state, scrub coverage.
type Collector struct {
	src     Sources
	timeout time.Duration

	up, consumerPending, consumerAckPending, deadLetters *prometheus.Desc
	logHead, projectorLag, projectorLagSeconds, relayLag *prometheus.Desc
	projectorStopped, checkpointSeq                      *prometheus.Desc
	objects, bytesStored, packages, legalHolds           *prometheus.Desc
	scrubCoverage, neverVerified                         *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector over src. Register it on the registry of
// the process's ops server.
func NewCollector(src Sources) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("artifactstore_"+name, help, labels, nil)
	}
	return &Collector{
		src: src, timeout: 5 * time.Second,
		up:                  d("status_up", "1 when the last status scrape read PostgreSQL."),
		consumerPending:     d("consumer_pending_commands", "Commands (events, for the replicator's consumer) waiting in a durable consumer, not yet delivered.", "consumer"),
		consumerAckPending:  d("consumer_ack_pending_commands", "Commands (events, for the replicator's consumer) delivered to a worker and not yet acknowledged.", "consumer"),
		deadLetters:         d("dead_letters", "Commands in the dead-letter stream."),
		logHead:             d("event_log_head_sequence", "Sequence of the last committed event."),
		projectorLag:        d("projector_lag_events", "Events committed but not yet projected."),
		projectorLagSeconds: d("projector_lag_seconds", "Age of the oldest event not yet projected."),
		relayLag:            d("relay_lag_events", "Events committed but not yet published to the events stream."),
		projectorStopped:    d("projector_stopped", "1 while the projector is stopped on the event log (reason: log_altered, gap, beyond_head, unknown_event, malformed); run 'artifactstore audit --checkpoints'.", "reason"),
		checkpointSeq:       d("checkpoint_signed_sequence", "Sequence covered by the newest signed checkpoint in the database."),
		objects:             d("objects", "Stored object locations by state.", "state"),
		bytesStored:         d("stored_bytes", "Bytes of object locations not deleted."),
		packages:            d("packages", "Packages by state.", "state"),
		legalHolds:          d("packages_on_legal_hold", "Packages on legal hold."),
		scrubCoverage:       d("scrub_coverage_ratio", "Share of live objects verified within the scrub interval."),
		neverVerified:       d("objects_never_verified", "Live objects never verified."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.consumerPending, c.consumerAckPending, c.deadLetters, c.logHead,
		c.projectorLag, c.projectorLagSeconds, c.relayLag, c.projectorStopped, c.checkpointSeq, c.objects, c.bytesStored, c.packages, c.legalHolds,
		c.scrubCoverage, c.neverVerified} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	r, err := Gather(ctx, c.src)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	g(c.up, 1)
	for _, cons := range r.Consumers {
		if cons.Error == "" && !cons.Absent {
			g(c.consumerPending, float64(cons.Pending), cons.Name)
			g(c.consumerAckPending, float64(cons.AckPending), cons.Name)
		}
	}
	if r.NATSError == "" {
		g(c.deadLetters, float64(r.DeadLetters))
	}
	g(c.logHead, float64(r.LogHead))
	g(c.projectorLag, float64(r.ProjectorLagEvents))
	g(c.projectorLagSeconds, r.ProjectorLagSecs)
	g(c.relayLag, float64(r.LogHead-r.RelayCheckpoint))
	if r.ProjectorStop != nil {
		g(c.projectorStopped, 1, r.ProjectorStop.Reason)
	} else {
		g(c.projectorStopped, 0, "")
	}
	if r.LastCheckpoint != nil {
		g(c.checkpointSeq, float64(r.LastCheckpoint.Sequence))
	}
	for _, state := range catalog.LocationStates() {
		g(c.objects, float64(r.ObjectsByState[state]), string(state))
	}
	g(c.bytesStored, float64(r.BytesStored))
	for state, n := range r.PackagesByState {
		g(c.packages, float64(n), string(state))
	}
	g(c.legalHolds, float64(r.LegalHolds))
	g(c.scrubCoverage, r.ScrubCoveragePct/100)
	g(c.neverVerified, float64(r.NeverVerified))
}
