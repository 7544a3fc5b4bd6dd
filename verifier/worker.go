// Package verifier scrubs stored objects: it re-reads their bytes through
// the data plane, recomputes BLAKE3, SHA-256, the size and the BLAKE3 tree
// (building a legacy object's, rewriting a damaged one), and appends
// object.verified, object.corrupt or object.missing to the event log.
//
// Two roles live here:
//
//   - [Worker]: any number of processes share one durable JetStream consumer
//     of verify requests (commands.Verify). Each verification is idempotent by
//     request id, which is the command id of the appended event: a
//     redelivered request appends nothing twice and is answered with the
//     outcome recorded the first time. A [ByteLimiter] caps the bytes per
//     second one worker reads, so that scrubbing does not starve ingest.
//   - [Scheduler]: one active instance (elected with internal/leader)
//     periodically finds objects whose last verification is older than the
//     scrub interval, never-verified first, and publishes verify requests
//     for them in bounded batches, remembering in scrub_queue what it queued
//     when so that nothing is queued twice within one interval.
//
// [RequestAll] is the on-demand side: it publishes requests for chosen
// objects and collects the replies (`artifactstore verify --package P`).
// [ReadReporter] is the read side: when a served read finds bytes that do
// not match their tree, it verifies the object at once, so that the
// damage is in the log within seconds rather than at the next scrub.
//
// The verifier records state; it does not serve bytes. The projector turns
// the events into storage_locations.state, which the read path checks, so a
// corrupt object is never served as good.
package verifier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// DataPlane is what a worker needs of the data plane: a streaming
// re-read and re-digest of one object.
type DataPlane interface {
	Verify(ctx context.Context, backendID string, addr digest.Address, exp dataplane.Expected) (dataplane.VerifyResult, error)
}

// EventLog is what a worker needs of the event log.
type EventLog interface {
	Append(ctx context.Context, batches ...events.Batch) ([]events.Result, error)
	ByCommand(ctx context.Context, commandID string) ([]events.Event, error)
}

// locations is what a worker reads of the projections: the recorded
// digests, size and state of the copy it verifies.
type locations interface {
	Location(ctx context.Context, addr digest.Address, backendID string) (catalog.Location, error)
}

var _ locations = (*catalog.Catalog)(nil)

// Errors of a verification that no retry can fix. Handle rejects the
// request (dead letter) and replies with OutcomeError.
var (
	// ErrUnknownLocation: the catalog has no location of the address on
	// that backend (never stored there, or not projected yet).
	ErrUnknownLocation = errors.New("verifier: no stored object at this address on this backend")
	// ErrDeleted: the object was deleted by the reaper; there is nothing
	// to verify.
	ErrDeleted = errors.New("verifier: the object was deleted")
)

// WorkerConfig configures a [Worker]. Zero values take the defaults filled
// in by withDefaults.
type WorkerConfig struct {
	// Concurrency is how many verifications one worker runs at once (the
	// consumer's handler slots). Default 4.
	Concurrency int
	// Actor is recorded as the actor of every event. Default "verifier".
	Actor string
	// RetryDelay, when positive, is the redelivery delay after a database
	// or storage failure. Default 0: the consume loop's backoff
	// (bus.RetryBudget).
	RetryDelay time.Duration
	// Logger receives the worker's log lines. Default: discard.
	Logger *zerolog.Logger
	// Consumer tunes the JetStream consume loop; its Concurrency and
	// Logger are taken from the fields above.
	Consumer bus.ConsumerOptions
	// Metrics counts verified bytes and outcomes; nil counts nothing.
	Metrics *Metrics
	// JetStream and Topology are where Start consumes verify requests
	// (the durable verify consumer). Only Start needs them; Topology
	// defaults to bus.DefaultTopology().
	JetStream jetstream.JetStream
	Topology  bus.Topology
}

func (c WorkerConfig) withDefaults() WorkerConfig {
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.Actor == "" {
		c.Actor = "verifier"
	}
	if c.RetryDelay < 0 {
		c.RetryDelay = 0
	}
	if c.Logger == nil {
		nop := zerolog.Nop()
		c.Logger = &nop
	}
	if c.Topology.CommandsStream == "" {
		c.Topology = bus.DefaultTopology()
	}
	return c
}

// Worker verifies objects on request. Handle is its bus.Handler; Verify is
// the same without the bus; Start and Stop (of the embedded
// bus.WorkerService: the lifecycle of internal/service) run it on the
// durable verify consumer. Safe for concurrent use.
type Worker struct {
	*bus.WorkerService
	dp     DataPlane
	log    EventLog
	locs   locations
	codec  *events.Codec
	nc     *nats.Conn // for replies; nil: no replies
	cfg    WorkerConfig
	logger zerolog.Logger
}

// NewWorker returns a worker reading the locations to verify from the
// catalog in db. nc, used for replies only, may be nil.
func NewWorker(dp DataPlane, log EventLog, db catalog.DB, codec *events.Codec, nc *nats.Conn, cfg WorkerConfig) *Worker {
	cfg = cfg.withDefaults()
	w := &Worker{
		dp: dp, log: log, locs: catalog.New(db), codec: codec, nc: nc, cfg: cfg,
		logger: cfg.Logger.With().Str("service", "verifier").Logger(),
	}
	w.WorkerService = bus.NewWorkerService(bus.CommandWorker{
		Name: "verifier", JetStream: cfg.JetStream, Topology: cfg.Topology, Durable: cfg.Topology.VerifyConsumer,
		Handler: w.Handle, Answer: w.Answer, Concurrency: cfg.Concurrency, Logger: w.logger, Options: cfg.Consumer,
	})
	return w
}

// Handle is the bus.Handler of verify requests. It replies (when the
// request names a reply subject) once the outcome is recorded, and maps
// failures to the bus's outcomes: an undecodable request, an unknown or
// deleted object or an unknown backend is rejected (dead letter, no
// retry); anything else is retried with backoff.
func (w *Worker) Handle(ctx context.Context, m bus.Message) error {
	asJSON := commands.IsJSON(m.ContentType)
	req, err := commands.DecodeVerify(w.codec, m.Data, asJSON, m.CommandID)
	replyTo := m.ReplyTo
	if replyTo == "" {
		replyTo = req.ReplyTo
	}
	if err != nil {
		w.reply(replyTo, commands.VerifyReply{V: commands.Version, RequestID: req.RequestID, Outcome: commands.OutcomeError, Code: commands.CodeMalformed, Reason: err.Error()}, asJSON)
		return bus.Reject(err, commands.CodeMalformed)
	}
	rep, err := w.Verify(ctx, req)
	if err != nil {
		code := ""
		switch {
		case errors.Is(err, ErrUnknownLocation):
			code = commands.CodeUnknownLocation
		case errors.Is(err, ErrDeleted):
			code = commands.CodeDeleted
		case errors.Is(err, storage.ErrUnknownBackend):
			code = commands.CodeUnknownBackend
		}
		if code == "" {
			dep := bus.DependencyStorage
			if isDatabaseError(err) {
				dep = bus.DependencyPostgres
			}
			return &bus.RetryError{Err: err, Delay: w.cfg.RetryDelay, Dependency: dep}
		}
		w.reply(replyTo, commands.VerifyReply{V: commands.Version, RequestID: req.RequestID, Address: req.Address.String(),
			BackendID: req.BackendID, Outcome: commands.OutcomeError, Code: code, Reason: err.Error()}, asJSON)
		return bus.Reject(err, code)
	}
	w.reply(replyTo, rep, asJSON)
	return nil
}

// Verify re-reads the object of req and appends the outcome under the
// request id, unless that id was handled before: then it returns the
// recorded outcome (Duplicate) without reading anything.
func (w *Worker) Verify(ctx context.Context, req commands.Verify) (commands.VerifyReply, error) {
	log := w.logger.With().Str("request_id", req.RequestID).Str("address", req.Address.String()).
		Str("backend_id", req.BackendID).Str("origin", req.Origin).Logger()
	if prior, err := w.log.ByCommand(ctx, req.RequestID); err == nil {
		rep, err := w.replyFromEvent(req, prior[0])
		rep.Duplicate = true
		log.Debug().Str("outcome", rep.Outcome).Msg("request handled before; replying with the recorded outcome")
		return rep, err
	} else if !errors.Is(err, events.ErrCommandNotFound) {
		return commands.VerifyReply{}, fmt.Errorf("verifier: look up request %s: %w", req.RequestID, err)
	}

	loc, err := w.location(ctx, req.Address, req.BackendID)
	if err != nil {
		return commands.VerifyReply{}, err
	}
	res, err := w.dp.Verify(ctx, req.BackendID, req.Address, dataplane.Expected{
		BLAKE3: &loc.BLAKE3, SHA256: &loc.SHA256, Size: loc.Size,
	})
	if err != nil {
		return commands.VerifyReply{}, fmt.Errorf("verifier: %w", err)
	}

	var payload events.Payload
	switch {
	case res.Missing:
		payload = events.ObjectMissingV1{Address: req.Address, BackendID: req.BackendID}
	case res.Verified:
		payload = events.ObjectVerifiedV1{Address: req.Address, BackendID: req.BackendID, Size: res.Actual.Size}
	default:
		payload = events.ObjectCorruptV1{
			Address: req.Address, BackendID: req.BackendID,
			ActualBLAKE3: res.Actual.BLAKE3[:], ActualSHA256: res.Actual.SHA256[:],
			ActualSize: res.Actual.Size, ExpectedSize: loc.Size,
		}
	}
	results, err := w.log.Append(ctx, events.Batch{CommandID: req.RequestID, Events: []events.Draft{{
		SubjectKind: events.SubjectObject, SubjectID: req.Address.String(), Actor: w.cfg.Actor, Payload: payload,
	}}})
	if err != nil {
		return commands.VerifyReply{}, fmt.Errorf("verifier: append the outcome of %s: %w", req.Address, err)
	}
	rep, err := w.replyFromEvent(req, results[0].Events[0])
	rep.Duplicate = results[0].Duplicate
	rep.ExpectedSize = loc.Size
	if !rep.Duplicate && !res.Verified {
		rep.Reason = res.Reason
	}
	if !rep.Duplicate && res.Verified {
		rep.Tree = string(res.Tree)
		switch res.Tree {
		case dataplane.TreeRebuilt:
			rep.Reason = "the bytes are intact but their stored BLAKE3 tree was damaged (" + res.TreeDetail + "); it was rebuilt from the bytes"
			log.Warn().Str("tree", res.TreeDetail).Msg("stored tree was damaged; rebuilt from the verified bytes")
		case dataplane.TreeBuilt:
			log.Info().Msg("object stored before trees existed; its tree was built")
		}
	}
	if !rep.Duplicate {
		w.cfg.Metrics.observe(rep.Outcome, res.Actual.Size)
	}
	switch {
	case rep.Duplicate:
		log.Debug().Str("outcome", rep.Outcome).Msg("request appended concurrently by another worker")
	case rep.Outcome == commands.OutcomeVerified:
		log.Debug().Int64("size", rep.ActualSize).Msg("object verified")
	default:
		log.Error().Str("outcome", rep.Outcome).Str("reason", res.Reason).Int64("sequence", rep.Sequence).Msg("object failed verification")
	}
	return rep, err
}

// replyFromEvent builds the reply from the committed event, so that a
// first answer and a duplicate's say the same.
func (w *Worker) replyFromEvent(req commands.Verify, ev events.Event) (commands.VerifyReply, error) {
	rep := commands.VerifyReply{V: commands.Version, RequestID: req.RequestID, Address: req.Address.String(),
		BackendID: req.BackendID, Sequence: ev.Sequence}
	p, err := w.codec.DecodeEvent(ev)
	if err != nil {
		return rep, fmt.Errorf("verifier: decode recorded outcome of request %s: %w", req.RequestID, err)
	}
	switch p := p.(type) {
	case events.ObjectVerifiedV1:
		rep.Outcome, rep.ActualSize, rep.ExpectedSize = commands.OutcomeVerified, p.Size, p.Size
	case events.ObjectCorruptV1:
		rep.Outcome, rep.ActualSize, rep.ExpectedSize = commands.OutcomeCorrupt, p.ActualSize, p.ExpectedSize
		rep.ActualBLAKE3, rep.ActualSHA256 = hexOf(p.ActualBLAKE3), hexOf(p.ActualSHA256)
		rep.Reason = fmt.Sprintf("recorded corrupt: %d bytes (expected %d), blake3 %s", p.ActualSize, p.ExpectedSize, hexOf(p.ActualBLAKE3))
	case events.ObjectMissingV1:
		rep.Outcome, rep.Reason = commands.OutcomeMissing, fmt.Sprintf("backend %q does not hold the object", p.BackendID)
	default:
		return rep, fmt.Errorf("verifier: request id %s was used by a %s event, not a verification; use a fresh request id", req.RequestID, ev.Type)
	}
	return rep, nil
}

// location returns the copy of addr on backendID to verify, or why none
// can be.
func (w *Worker) location(ctx context.Context, addr digest.Address, backendID string) (catalog.Location, error) {
	loc, err := w.locs.Location(ctx, addr, backendID)
	if errors.Is(err, catalog.ErrNotFound) {
		return loc, fmt.Errorf("%w: %s on backend %q; check the address and backend id (artifactstore status), or retry once the projector has caught up", ErrUnknownLocation, addr, backendID)
	}
	if err != nil {
		return loc, fmt.Errorf("verifier: %w", err)
	}
	if loc.State == catalog.LocationDeleted {
		return loc, fmt.Errorf("%w: %s on backend %q", ErrDeleted, addr, backendID)
	}
	return loc, nil
}

func (w *Worker) reply(replyTo string, rep commands.VerifyReply, asJSON bool) {
	if replyTo == "" || w.nc == nil {
		return
	}
	body, err := commands.Encode(w.codec, rep, asJSON)
	if err != nil {
		w.logger.Error().Err(err).Str("request_id", rep.RequestID).Msg("encode reply")
		return
	}
	ct := ""
	if asJSON {
		ct = commands.ContentTypeJSON
	}
	if err := bus.Reply(w.nc, replyTo, body, ct); err != nil {
		// The outcome is recorded; only the waiting client misses it.
		w.logger.Warn().Err(err).Str("request_id", rep.RequestID).Msg("reply not sent")
	}
}

// isDatabaseError reports a failure of PostgreSQL (connection, conflict),
// worth a plain delayed retry rather than the backoff of other errors.
func isDatabaseError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) || pgconn.SafeToRetry(err) || errors.Is(err, events.ErrConflict)
}
