// Package retention handles the commands that change a package's
// retention: a legal hold (hold), its release (release) and a change of
// retention class or retain-until (retain). Any number of processes share
// the durable JetStream consumer "retention" on the retention subject
// (bus.CmdRetention); each command is decided and committed in one
// PostgreSQL transaction together with its event, under the same
// transaction-level advisory lock the ingesters and the reaper take, so
// that a hold set while the reaper decides is never missed.
//
// # Rules
//
//   - Every change appends one event with the command's actor:
//     legal_hold.set, legal_hold.released or retention.changed.
//   - A retain-until may be lengthened, never shortened, for a package whose
//     class says so (may_shorten false in retention_classes:
//     release-evidence, permanent-record). A refused change is replied to
//     with code retention_shorten_refused and recorded as a
//     command.rejected event under the command id.
//   - A legal hold blocks expiry whatever the class and retain-until. A hold
//     on a package that already expired is accepted: it keeps the bytes the
//     reaper has not deleted yet (deleted bytes are gone).
//   - An expired package's retention can no longer be changed
//     (package_expired).
//   - A command that would change nothing (hold of a package held for the
//     same reason, release of a package without hold, retain to the same
//     class and date) appends nothing and is answered "unchanged".
//
// Every effect is idempotent by command id: a redelivered command appends
// nothing a second time and is answered with the recorded outcome.
package retention

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// EventLog is what the handler needs of the event log (*events.Log).
type EventLog interface {
	AppendTx(ctx context.Context, tx pgx.Tx, batches ...events.Batch) ([]events.Result, error)
	ByCommand(ctx context.Context, commandID string) ([]events.Event, error)
}

var _ EventLog = (*events.Log)(nil)

// Config configures a [Handler]. Pool, Log and Codec are required; every
// other field has a default filled in by withDefaults.
type Config struct {
	// Pool is the PostgreSQL pool of the log and the command-side state.
	Pool *pgxpool.Pool
	// Log is the event log.
	Log EventLog
	// Codec decodes CBOR commands and encodes replies and payloads.
	Codec *events.Codec
	// NATS is the connection replies are published on; nil sends none.
	NATS *nats.Conn
	// JetStream and Topology are where Start consumes (the durable
	// retention consumer, which must exist: bus.EnsureTopology). Only
	// Start needs them. Topology defaults to bus.DefaultTopology().
	JetStream jetstream.JetStream
	Topology  bus.Topology
	// Concurrency is how many commands one process handles at once.
	// Default 4.
	Concurrency int
	// RetryDelay, when positive, is the redelivery delay after a transient
	// failure. Default 0: the consume loop's backoff (bus.RetryBudget).
	RetryDelay time.Duration
	// Consumer tunes the consume loop; Concurrency and Logger are set from
	// this config.
	Consumer bus.ConsumerOptions
	// Logger receives the handler's log lines. The zero value logs nothing.
	Logger zerolog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if c.Pool == nil || c.Log == nil || c.Codec == nil {
		return c, errors.New("retention: Config needs Pool, Log and Codec")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.RetryDelay < 0 {
		c.RetryDelay = 0
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Topology.CommandsStream == "" {
		c.Topology = bus.DefaultTopology()
	}
	return c, nil
}

// Handler decides retention commands. Apply decides one command without
// the bus; Handle is its bus.Handler; Start and Stop (of the embedded
// bus.WorkerService: the lifecycle of internal/service) run it on the
// durable consumer. Safe for concurrent use.
type Handler struct {
	*bus.WorkerService
	cfg Config
	log zerolog.Logger
	dec *commands.Decoder
}

// New returns a handler; nothing runs until Start.
func New(cfg Config) (*Handler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, log: cfg.Logger.With().Str("service", "retention").Logger(), dec: commands.NewDecoder(cfg.Codec)}
	h.WorkerService = bus.NewWorkerService(bus.CommandWorker{
		Name: "retention", JetStream: cfg.JetStream, Topology: cfg.Topology, Durable: cfg.Topology.RetentionConsumer,
		Handler: h.Handle, Answer: h.Answer, Concurrency: cfg.Concurrency, Logger: h.log, Options: cfg.Consumer,
	})
	return h, nil
}

// Handle is the bus.Handler of retention commands. It replies (when the
// command names a reply subject) once the outcome is committed. A
// malformed or refused command is recorded as a command.rejected event,
// answered, and dead-lettered; a database failure is retried.
func (h *Handler) Handle(ctx context.Context, m bus.Message) error {
	isJSON := commands.IsJSON(m.ContentType)
	c, err := h.dec.DecodeRetention(m.Data, isJSON)
	var rej *commands.Error
	switch {
	case errors.As(err, &rej):
		id := c.CommandID
		if commands.ValidateCommandID(id) != nil || (m.CommandID != "" && m.CommandID != id) {
			id = fallbackID(m)
		}
		c.CommandID = id
		rep, err := h.Refuse(ctx, c, rej)
		if err != nil {
			return h.transient(ctx, err)
		}
		return h.finish(m, rep, isJSON)
	case err != nil:
		return bus.Reject(err, commands.CodeMalformed)
	}
	if m.CommandID != "" && m.CommandID != c.CommandID {
		rej := commands.Rejectf(commands.CodeInvalidCommandID,
			"header Nats-Msg-Id %q differs from command_id %q; send the command id in both or only in the body", m.CommandID, c.CommandID)
		c.CommandID = fallbackID(m)
		rep, err := h.Refuse(ctx, c, rej)
		if err != nil {
			return h.transient(ctx, err)
		}
		return h.finish(m, rep, isJSON)
	}
	rep, err := h.Apply(ctx, c)
	if err != nil {
		return h.transient(ctx, err)
	}
	return h.finish(m, rep, isJSON)
}

func fallbackID(m bus.Message) string {
	if commands.ValidateCommandID(m.CommandID) == nil {
		return m.CommandID
	}
	return fmt.Sprintf("nats-%s-%d", m.Stream, m.StreamSequence)
}

func (h *Handler) transient(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	h.log.Warn().Err(err).Msg("transient failure; the command will be redelivered")
	return &bus.RetryError{Err: err, Delay: h.cfg.RetryDelay, Dependency: bus.DependencyPostgres}
}

// finish replies and returns the consume loop's verdict.
func (h *Handler) finish(m bus.Message, rep commands.Reply, isJSON bool) error {
	if h.cfg.NATS != nil && m.ReplyTo != "" {
		body, err := commands.Encode(h.cfg.Codec, rep, isJSON)
		if err == nil {
			ct := ""
			if isJSON {
				ct = commands.ContentTypeJSON
			}
			err = bus.Reply(h.cfg.NATS, m.ReplyTo, body, ct)
		}
		if err != nil {
			// The outcome is committed: a re-send of the command id gets it.
			h.log.Warn().Err(err).Str("command_id", rep.CommandID).Msg("reply failed")
		}
	}
	if rep.Status == commands.StatusRejected {
		return bus.Reject(rep.Err(), rep.Code)
	}
	return nil
}

// pkgRow is the command-side retention state of one package.
type pkgRow pkgstate.Retention

// decision is the outcome of one command against the package's state.
type decision struct {
	reply  commands.Reply
	draft  *events.Draft // nil: nothing to append
	update func(ctx context.Context, tx pgx.Tx) error
}

// Apply decides c (which must be valid) and commits its event and the
// state change in one transaction. A refusal is a reply with
// commands.StatusRejected (and its event), not an error; an error means nothing
// was decided and the command may be retried.
func (h *Handler) Apply(ctx context.Context, c commands.Retention) (commands.Reply, error) {
	if err := c.Validate(); err != nil {
		var rej *commands.Error
		if errors.As(err, &rej) {
			return h.Refuse(ctx, c, rej)
		}
		return commands.Reply{}, err
	}
	var (
		rep commands.Reply
		dup bool
	)
	err := pkgstate.InTx(ctx, h.cfg.Pool, func(tx pgx.Tx) error {
		var known bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM commands WHERE command_id = $1)`, c.CommandID).Scan(&known); err != nil {
			return fmt.Errorf("look up command id: %w", err)
		}
		if known {
			dup = true
			return nil
		}
		d, err := h.decide(ctx, tx, c)
		if err != nil {
			return err
		}
		rep = d.reply
		if d.draft == nil {
			return nil
		}
		res, err := h.cfg.Log.AppendTx(ctx, tx, events.Batch{CommandID: c.CommandID, Events: []events.Draft{*d.draft}})
		if err != nil {
			return err
		}
		if res[0].Duplicate {
			return fmt.Errorf("command %s was appended concurrently despite the ingest lock", c.CommandID)
		}
		rep.Sequence = res[0].Events[len(res[0].Events)-1].Sequence
		if d.update != nil {
			return d.update(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return commands.Reply{}, fmt.Errorf("retention: %s %q: %w", c.Action, c.Package, err)
	}
	if dup {
		return h.recorded(ctx, c)
	}
	h.log.Info().Str("command_id", c.CommandID).Str("action", c.Action).Str("package", c.Package).
		Str("actor", c.Actor).Str("status", rep.Status).Str("code", rep.Code).Msg("retention command decided")
	return rep, nil
}

// Refuse records rej as the outcome of c (a command.rejected event under
// c.CommandID, which must be a valid command id) and returns the reply.
func (h *Handler) Refuse(ctx context.Context, c commands.Retention, rej *commands.Error) (commands.Reply, error) {
	var dup bool
	var seq int64
	err := pgx.BeginFunc(ctx, h.cfg.Pool, func(tx pgx.Tx) error {
		res, err := h.cfg.Log.AppendTx(ctx, tx, events.Batch{CommandID: c.CommandID, Events: []events.Draft{rejection(c, rej)}})
		if err != nil {
			return err
		}
		dup = res[0].Duplicate
		seq = res[0].Events[len(res[0].Events)-1].Sequence
		return nil
	})
	if err != nil {
		return commands.Reply{}, fmt.Errorf("retention: record refusal of %s: %w", c.CommandID, err)
	}
	if dup {
		return h.recorded(ctx, c)
	}
	h.log.Info().Str("command_id", c.CommandID).Str("code", rej.Code).Str("reason", rej.Reason).Msg("refusing retention command")
	return commands.Reply{V: commands.Version, CommandID: c.CommandID, Action: c.Action, Package: c.Package,
		Status: commands.StatusRejected, Code: rej.Code, Reason: rej.Reason, Sequence: seq}, nil
}

func rejection(c commands.Retention, rej *commands.Error) events.Draft {
	// The refused command's own fields may be what was wrong with it:
	// the actor column is text, so an actor that is not text is not
	// recorded (the reason quotes it).
	actor := c.Actor
	if actor == "" || commands.CheckText(actor, commands.Line) != nil {
		actor = "retention"
	}
	command := "retention"
	if c.Action != "" && commands.CheckText(c.Action, commands.Line) == nil {
		command += "." + c.Action
	}
	return events.Draft{SubjectKind: events.SubjectCommand, SubjectID: c.CommandID, Actor: actor,
		Payload: events.CommandRejectedV1{CommandID: c.CommandID, Command: command, Package: c.Package, Code: rej.Code, Reason: rej.Reason}}
}

func (h *Handler) reject(c commands.Retention, rej *commands.Error) decision {
	d := rejection(c, rej)
	return decision{
		reply: commands.Reply{V: commands.Version, CommandID: c.CommandID, Action: c.Action, Package: c.Package,
			Status: commands.StatusRejected, Code: rej.Code, Reason: rej.Reason},
		draft: &d,
	}
}

// recorded rebuilds the reply of a command id already in the log.
func (h *Handler) recorded(ctx context.Context, c commands.Retention) (commands.Reply, error) {
	evs, err := h.cfg.Log.ByCommand(ctx, c.CommandID)
	if err != nil {
		return commands.Reply{}, fmt.Errorf("retention: read the events of command %s: %w", c.CommandID, err)
	}
	r := commands.Reply{V: commands.Version, CommandID: c.CommandID, Action: c.Action, Package: c.Package, Duplicate: true}
	if len(evs) == 0 {
		return r, fmt.Errorf("retention: command %s has no events", c.CommandID)
	}
	r.Sequence = evs[len(evs)-1].Sequence
	for _, e := range evs {
		p, err := h.cfg.Codec.DecodeEvent(e)
		if err != nil {
			return r, fmt.Errorf("retention: decode event %d: %w", e.Sequence, err)
		}
		switch p := p.(type) {
		case events.CommandRejectedV1:
			r.Status, r.Code, r.Reason = commands.StatusRejected, p.Code, p.Reason
		case events.LegalHoldSetV1:
			r.Status, r.Action, r.Package, r.LegalHold = commands.StatusApplied, commands.ActionHold, p.Package, true
		case events.LegalHoldReleasedV1:
			r.Status, r.Action, r.Package = commands.StatusApplied, commands.ActionRelease, p.Package
		case events.RetentionChangedV1:
			r.Status, r.Action, r.Package, r.Class, r.RetainUntil = commands.StatusApplied, commands.ActionRetain, p.Package, p.Class, p.RetainUntil
		default:
			return r, fmt.Errorf("retention: command id %s belongs to a %s event, not to a retention command; use a fresh command id", c.CommandID, e.Type)
		}
	}
	return r, nil
}

// decide reads the package under the lock and decides c.
func (h *Handler) decide(ctx context.Context, tx pgx.Tx, c commands.Retention) (decision, error) {
	r, err := pkgstate.LockRetention(ctx, tx, c.Package)
	p := pkgRow(r)
	if errors.Is(err, pkgstate.ErrNotFound) {
		return h.reject(c, commands.Rejectf(commands.CodeUnknownPackage,
			"package %q does not exist; check the name (artifactstore status lists packages) and wait for the ingest replies before changing retention", c.Package)), nil
	}
	if err != nil {
		return decision{}, err
	}
	switch c.Action {
	case commands.ActionHold:
		return h.decideHold(c, p), nil
	case commands.ActionRelease:
		return h.decideRelease(c, p), nil
	default:
		return h.decideRetain(ctx, tx, c, p)
	}
}

func (p pkgRow) reply(c commands.Retention, status string) commands.Reply {
	return commands.Reply{V: commands.Version, CommandID: c.CommandID, Action: c.Action, Package: c.Package, Status: status,
		Class: p.Class, RetainUntil: p.RetainUntil, LegalHold: p.Hold}
}

func (h *Handler) decideHold(c commands.Retention, p pkgRow) decision {
	if p.Hold && p.HoldReason != nil && *p.HoldReason == c.Reason {
		return decision{reply: p.reply(c, commands.StatusUnchanged)}
	}
	p.Hold = true
	rep := p.reply(c, commands.StatusApplied)
	if p.ExpiredAt != nil {
		rep.Note = fmt.Sprintf("package %q expired at %s: the hold keeps the bytes the reaper has not deleted yet; deleted bytes are gone",
			c.Package, p.ExpiredAt.UTC().Format(time.RFC3339))
	}
	return decision{
		reply: rep,
		draft: &events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: c.Actor,
			Payload: events.LegalHoldSetV1{Package: c.Package, Reason: c.Reason}},
		update: func(ctx context.Context, tx pgx.Tx) error {
			return pkgstate.SetHold(ctx, tx, c.Package, c.Reason)
		},
	}
}

func (h *Handler) decideRelease(c commands.Retention, p pkgRow) decision {
	if !p.Hold {
		return decision{reply: p.reply(c, commands.StatusUnchanged)}
	}
	p.Hold = false
	return decision{
		reply: p.reply(c, commands.StatusApplied),
		draft: &events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: c.Actor,
			Payload: events.LegalHoldReleasedV1{Package: c.Package, Reason: c.Reason}},
		update: func(ctx context.Context, tx pgx.Tx) error {
			return pkgstate.ReleaseHold(ctx, tx, c.Package)
		},
	}
}

func (h *Handler) decideRetain(ctx context.Context, tx pgx.Tx, c commands.Retention, p pkgRow) (decision, error) {
	if p.ExpiredAt != nil {
		return h.reject(c, commands.Rejectf(commands.CodePackageExpired,
			"package %q expired at %s; its retention can no longer be changed (a legal hold still keeps the bytes not yet deleted: artifactstore hold)",
			c.Package, p.ExpiredAt.UTC().Format(time.RFC3339))), nil
	}
	classes, err := pkgstate.LoadClasses(ctx, tx, p.Class, c.Class)
	if err != nil {
		return decision{}, err
	}
	cur, ok := classes[p.Class]
	if !ok {
		return decision{}, fmt.Errorf("package %q has retention class %q, which retention_classes does not hold; restore the class row", c.Package, p.Class)
	}
	target := p.Class
	if c.Class != "" {
		target = c.Class
	}
	tc, ok := classes[target]
	if !ok {
		return h.reject(c, commands.Rejectf(commands.CodeUnknownClass,
			"retention class %q does not exist; use one of the rows of retention_classes (transient, raw-evidence, summary-evidence, release-evidence, permanent-record)", target)), nil
	}
	var until *time.Time
	switch {
	case tc.NeverExpires && c.RetainUntil != nil:
		return h.reject(c, commands.Rejectf(commands.CodeMalformed,
			"class %q never expires; leave retain_until out", target)), nil
	case tc.NeverExpires:
	case c.RetainUntil != nil:
		t := c.RetainUntil.UTC().Truncate(time.Microsecond)
		until = &t
		if min := tc.RetainUntil(p.CreatedAt); !tc.MayShorten && min != nil && t.Before(*min) {
			return h.reject(c, commands.Rejectf(commands.CodeShortenRefused,
				"class %q keeps a package created at %s at least until %s; retain_until %s is earlier — choose a later date or another class",
				target, p.CreatedAt.UTC().Format(time.RFC3339), min.Format(time.RFC3339), t.Format(time.RFC3339))), nil
		}
	default:
		until = tc.RetainUntil(p.CreatedAt)
	}
	if !cur.MayShorten && earlier(until, p.RetainUntil) {
		return h.reject(c, commands.Rejectf(commands.CodeShortenRefused,
			"package %q is %s and retained until %s; its retention may be lengthened, never shortened, and the change to %s until %s would end it earlier",
			c.Package, p.Class, fmtUntil(p.RetainUntil), target, fmtUntil(until))), nil
	}
	if target == p.Class && sameUntil(until, p.RetainUntil) {
		return decision{reply: p.reply(c, commands.StatusUnchanged)}, nil
	}
	prev := p.RetainUntil
	from := p.Class
	p.Class, p.RetainUntil = target, until
	return decision{
		reply: p.reply(c, commands.StatusApplied),
		draft: &events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: c.Actor,
			Payload: events.RetentionChangedV1{Package: c.Package, FromClass: from, Class: target,
				RetainUntil: until, PrevRetainTill: prev, Reason: c.Reason}},
		update: func(ctx context.Context, tx pgx.Tx) error {
			return pkgstate.SetRetention(ctx, tx, c.Package, target, until)
		},
	}, nil
}

// earlier reports whether retain-until a ends before b (nil: never).
func earlier(a, b *time.Time) bool {
	switch {
	case a == nil:
		return false
	case b == nil:
		return true
	default:
		return a.Before(*b)
	}
}

func sameUntil(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func fmtUntil(t *time.Time) string {
	if t == nil {
		return "never (no expiry)"
	}
	return t.UTC().Format(time.RFC3339)
}
