// Package status answers "is the pipeline healthy?" on one screen: work
// waiting in each JetStream consumer, recent dead letters (failures apart
// from refusals), abandoned staged uploads, the storage backends' free
// space, who leads each single-active role, projector and relay lag,
// objects by state, bytes stored, the next expiries and scrub coverage.
package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/storage"
)

// Consumer is the backlog of one durable consumer.
type Consumer struct {
	Name string `json:"name"`
	// Stream is the consumer's stream; Kind is "commands" or "events"
	// (the replicator's consumer of the events stream).
	Stream      string `json:"stream,omitempty"`
	Kind        string `json:"kind,omitempty"`
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// Absent is set for an events consumer (the replicator's) that does
	// not exist, or whose stream does not: the role that uses it is not
	// deployed, which is no problem.
	Absent bool   `json:"absent,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Expiry is a package that will expire next.
type Expiry struct {
	Package     string    `json:"package"`
	Class       string    `json:"class"`
	RetainUntil time.Time `json:"retain_until"`
}

// Report is everything status shows.
type Report struct {
	At        time.Time  `json:"at"`
	Healthy   bool       `json:"healthy"`
	Problems  []string   `json:"problems,omitempty"`
	Notes     []string   `json:"notes,omitempty"`
	NATSError string     `json:"nats_error,omitempty"`
	Consumers []Consumer `json:"consumers,omitempty"`
	// DeadLetters is every message of the dead-letter stream (kept 30
	// days); RecentDeadLetters counts the window's by kind.
	DeadLetters       uint64        `json:"dead_letters"`
	RecentDeadLetters []DeadLetters `json:"recent_dead_letters,omitempty"`
	Staged            Staged        `json:"staged"`
	AbandonedStaged   Staged        `json:"abandoned_staged"`
	Backends          []Backend     `json:"backends,omitempty"`
	Leaders           []Leader      `json:"leaders,omitempty"`

	LogHead            int64   `json:"log_head"`
	ProjectorCheckpt   int64   `json:"projector_checkpoint"`
	ProjectorLagEvents int64   `json:"projector_lag_events"`
	ProjectorLagSecs   float64 `json:"projector_lag_seconds"`
	RelayCheckpoint    int64   `json:"relay_checkpoint"`
	// ProjectorStop is set while the projector is stopped on the log (an
	// altered, gapped or forged row, an unknown event).
	ProjectorStop *ProjectorStop `json:"projector_stop,omitempty"`
	// LastCheckpoint is the newest signed checkpoint in the database's
	// checkpoints table, if any.
	LastCheckpoint *Checkpoint `json:"last_checkpoint,omitempty"`

	ObjectsByState  map[catalog.LocationState]int64 `json:"objects_by_state"`
	BytesStored     int64                           `json:"bytes_stored"`
	PackagesByState map[catalog.PackageState]int64  `json:"packages_by_state"`
	LegalHolds      int64                           `json:"legal_holds"`
	NextExpiries    []Expiry                        `json:"next_expiries"`

	ScrubInterval      time.Duration `json:"scrub_interval"`
	ScrubbedInInterval int64         `json:"scrubbed_in_interval"`
	NeverVerified      int64         `json:"never_verified"`
	LastVerification   *time.Time    `json:"last_verification,omitempty"`
	ScrubCoveragePct   float64       `json:"scrub_coverage_percent"`
}

// ProjectorStop is why the projector stopped.
type ProjectorStop struct {
	At      time.Time `json:"at"`
	Reason  string    `json:"reason"`
	Message string    `json:"message"`
}

// Checkpoint is the newest signed checkpoint of the log's chain head.
type Checkpoint struct {
	Sequence int64     `json:"sequence"`
	SignedAt time.Time `json:"signed_at"`
}

// Sources are what status reads. JS may be nil when NATS is unreachable;
// NATSErr then says why. Zero values of the optional fields turn their
// part of the report off.
type Sources struct {
	Pool           *pgxpool.Pool
	JS             jetstream.JetStream
	NATSErr        error
	CommandsStream string
	Consumers      []string
	// EventsStream and EventConsumers are the durable consumers of the
	// events stream (the replicator's); one that is absent, or whose
	// stream is, is noted, not a problem: no replicator is deployed.
	EventsStream   string
	EventConsumers []string
	DeadLetters    string
	Projector      string
	Relay          string
	ScrubInterval  time.Duration
	// MaxLag is the projector lag in events above which the pipeline is
	// reported unhealthy.
	MaxLag int64
	Now    func() time.Time

	// DeadLetterPrefix is the subject prefix of dead letters
	// (<prefix>.<consumer>.<kind>); with DeadLetterWindow set, the
	// window's dead letters are counted by kind, and a failure is a
	// problem.
	DeadLetterPrefix string
	DeadLetterWindow time.Duration
	// Topology names the staging bucket and the ingest consumer; with
	// StagedMaxAge set, staged uploads older than it that nothing will
	// consume are a problem (bus.AbandonedStaged), Handled telling which
	// command ids were handled.
	Topology     bus.Topology
	StagedMaxAge time.Duration
	Handled      func(ctx context.Context, ids []string) (map[string]bool, error)
	// Backends reports the storage backends' health and space; a backend
	// unhealthy or with less free space than MinFreeBytes or
	// MinFreePercent is a problem.
	Backends       func(ctx context.Context) map[string]storage.Health
	MinFreeBytes   uint64
	MinFreePercent float64
	// LeaderLocks are the single-active roles whose leader is shown
	// (besides the projector's, found from Projector).
	LeaderLocks []LeaderLock
}

// Gather builds the report. It fails only when PostgreSQL cannot be read;
// NATS problems are reported inside the report.
func Gather(ctx context.Context, src Sources) (Report, error) {
	now := time.Now
	if src.Now != nil {
		now = src.Now
	}
	r := Report{At: now().UTC(), ScrubInterval: src.ScrubInterval, ObjectsByState: map[catalog.LocationState]int64{}, PackagesByState: map[catalog.PackageState]int64{}}
	if src.JS == nil {
		msg := "unreachable"
		if src.NATSErr != nil {
			msg = src.NATSErr.Error()
		}
		r.NATSError = msg
		r.Problems = append(r.Problems, "NATS: "+msg)
	} else {
		gatherNATS(ctx, src, &r)
	}
	if err := gatherDB(ctx, src, &r); err != nil {
		return r, err
	}
	if c := r.ObjectsByState[catalog.LocationCorrupt]; c > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d corrupt objects: run 'artifactstore explain ADDR' and restore them", c))
	}
	if m := r.ObjectsByState[catalog.LocationMissing]; m > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d missing objects", m))
	}
	if src.Backends != nil {
		gatherBackends(ctx, src, &r)
	}
	if err := gatherLeaders(ctx, src, &r); err != nil {
		return r, err
	}
	if st := r.ProjectorStop; st != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("projector STOPPED since %s (%s): %s; run 'artifactstore audit --checkpoints', restore the log, then restart the projector",
			st.At.UTC().Format(time.RFC3339), st.Reason, st.Message))
	}
	if src.MaxLag > 0 && r.ProjectorLagEvents > src.MaxLag {
		r.Problems = append(r.Problems, fmt.Sprintf("projector is %d events behind: is 'artifactstore project' running?", r.ProjectorLagEvents))
	}
	r.Healthy = len(r.Problems) == 0
	return r, nil
}

func gatherNATS(ctx context.Context, src Sources, r *Report) {
	for _, name := range src.Consumers {
		c, err := consumerBacklog(ctx, src.JS, src.CommandsStream, name)
		c.Kind = "commands"
		if err != nil {
			c.Error = err.Error()
			r.Problems = append(r.Problems, fmt.Sprintf("consumer %s: %v (has its worker role ever started?)", name, err))
		}
		r.Consumers = append(r.Consumers, c)
	}
	for _, name := range src.EventConsumers {
		c, err := consumerBacklog(ctx, src.JS, src.EventsStream, name)
		c.Kind = "events"
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound):
			c.Absent = true
			r.Notes = append(r.Notes, fmt.Sprintf("consumer %s on stream %s: absent (no replicator deployed; `artifactstore topology apply` creates it)", name, src.EventsStream))
		case err != nil:
			c.Error = err.Error()
			r.Problems = append(r.Problems, fmt.Sprintf("consumer %s on stream %s: %v", name, src.EventsStream, err))
		}
		r.Consumers = append(r.Consumers, c)
	}
	if src.DeadLetters != "" {
		s, err := src.JS.Stream(ctx, src.DeadLetters)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err == nil {
				r.DeadLetters = info.State.Msgs
			}
		}
		if err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("dead-letter stream %s: %v", src.DeadLetters, err))
		} else if src.DeadLetterWindow > 0 && src.DeadLetterPrefix != "" {
			gatherDeadLetters(ctx, src, r)
		}
	}
	if src.StagedMaxAge > 0 && src.Topology.StagingBucket != "" {
		gatherStaging(ctx, src, r)
	}
}

// consumerBacklog reads the backlog of the durable consumer name of
// stream.
func consumerBacklog(ctx context.Context, js jetstream.JetStream, stream, name string) (Consumer, error) {
	c := Consumer{Name: name, Stream: stream}
	cons, err := js.Consumer(ctx, stream, name)
	if err != nil {
		return c, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return c, err
	}
	c.Pending, c.AckPending, c.Redelivered = info.NumPending, info.NumAckPending, info.NumRedelivered
	return c, nil
}

// catalogReader is what status reads of the projections and of the
// projector's progress.
type catalogReader interface {
	Checkpoint(ctx context.Context, projector string) (int64, error)
	ProjectorStop(ctx context.Context, projector string) (*catalog.Stop, error)
	LocationCounts(ctx context.Context) (map[catalog.LocationState]catalog.StateCount, error)
	PackageCounts(ctx context.Context) (map[catalog.PackageState]int64, error)
	LegalHolds(ctx context.Context) (int64, error)
	NextExpiries(ctx context.Context, limit int) ([]catalog.Expiry, error)
	ScrubCoverage(ctx context.Context, since time.Time) (catalog.Coverage, error)
}

var _ catalogReader = (*catalog.Catalog)(nil)

// nextExpiries is how many of the next expiries the report lists.
const nextExpiries = 5

func gatherDB(ctx context.Context, src Sources, r *Report) error {
	q := src.Pool
	var cat catalogReader = catalog.New(q)
	if err := q.QueryRow(ctx, `SELECT last_sequence FROM event_log_head`).Scan(&r.LogHead); err != nil {
		return fmt.Errorf("read the log head (has 'artifactstore migrate up' run?): %w", err)
	}
	cp, err := cat.Checkpoint(ctx, src.Projector)
	if err != nil {
		return err
	}
	r.ProjectorCheckpt = cp
	r.ProjectorLagEvents = r.LogHead - r.ProjectorCheckpt
	if r.ProjectorLagEvents > 0 {
		var oldest time.Time
		if err := q.QueryRow(ctx, `SELECT occurred_at FROM events WHERE sequence = $1`, r.ProjectorCheckpt+1).Scan(&oldest); err == nil {
			r.ProjectorLagSecs = r.At.Sub(oldest).Seconds()
		}
	}
	if err := optionalInt(ctx, q, `SELECT sequence FROM relay_checkpoints WHERE relay = $1`, src.Relay, &r.RelayCheckpoint); err != nil {
		return err
	}
	stop, err := cat.ProjectorStop(ctx, src.Projector)
	if err != nil {
		return err
	}
	if stop != nil {
		r.ProjectorStop = &ProjectorStop{At: stop.At, Reason: stop.Reason, Message: stop.Message}
	}
	var ck Checkpoint
	err = q.QueryRow(ctx, `SELECT sequence, signed_at FROM event_checkpoints ORDER BY sequence DESC LIMIT 1`).Scan(&ck.Sequence, &ck.SignedAt)
	switch {
	case err == nil:
		r.LastCheckpoint = &ck
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("read the newest checkpoint: %w", err)
	}

	locs, err := cat.LocationCounts(ctx)
	if err != nil {
		return err
	}
	for state, n := range locs {
		r.ObjectsByState[state] = n.Locations
		if state != catalog.LocationDeleted {
			r.BytesStored += n.Bytes
		}
	}
	if r.PackagesByState, err = cat.PackageCounts(ctx); err != nil {
		return err
	}
	if r.LegalHolds, err = cat.LegalHolds(ctx); err != nil {
		return err
	}
	exp, err := cat.NextExpiries(ctx, nextExpiries)
	if err != nil {
		return err
	}
	for _, e := range exp {
		r.NextExpiries = append(r.NextExpiries, Expiry{Package: e.Package, Class: e.Class, RetainUntil: e.RetainUntil})
	}

	cv, err := cat.ScrubCoverage(ctx, r.At.Add(-src.ScrubInterval))
	if err != nil {
		return err
	}
	r.ScrubbedInInterval, r.NeverVerified, r.LastVerification = cv.Since, cv.Never, cv.Last
	if cv.Live > 0 {
		r.ScrubCoveragePct = 100 * float64(r.ScrubbedInInterval) / float64(cv.Live)
	}
	return nil
}

func optionalInt(ctx context.Context, q *pgxpool.Pool, sql, arg string, dst *int64) error {
	err := q.QueryRow(ctx, sql, arg).Scan(dst)
	if errors.Is(err, pgx.ErrNoRows) {
		*dst = 0
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}
