// Package projector builds the projection tables (artifact_packages,
// artifact_files, storage_locations, retention_state) from the event log.
//
// It tails the log in sequence order, waking on the log's LISTEN/NOTIFY
// channel and polling as a fallback, and applies events in batches: one
// transaction locks the projector's checkpoint row, reads the next events
// after it, checks each payload digest, folds the events in memory over the
// rows they touch (see state.apply: a pure function of the rows and the
// event), writes the changed rows with one set-based upsert per table and
// moves the checkpoint, then commits. Each event is therefore applied
// exactly once, whatever crashes, and rebuilding from sequence 0 gives the
// same tables as incremental projection.
//
// Throughput comes from the batch shape: rows are loaded with one query per
// table for all keys of the batch, rows the batch creates go in with COPY
// and rows it changes with one unnest upsert per table; the next batch is
// read and decoded while the current one is written. Between batches the
// leader remembers what is safe to remember while it is the only writer
// (see memo): which expired packages a live location still keeps from
// being reaped, so the reap rule does not search the files table for every
// deleted address, and the rows of recent batches, which need no query.
//
// One projector of a name is active at a time: Run stands for election
// through the leader package (a PostgreSQL session advisory lock,
// [LockKey]); standbys retry every ElectInterval and take over when the
// leader's lock connection dies.
// The checkpoint row lock keeps exactly-once even if two ever overlap.
//
// # Schema evolution
//
// An event whose type or version this binary does not know stops the
// projector (ErrUnknownEvent) instead of being skipped, because skipping it
// would make the tables silently wrong. Roll out a new event type or
// payload version in this order: deploy projectors (and every other reader)
// that understand it first, then the writers that append it. If a projector
// stopped on an unknown event, upgrade it; it resumes at its checkpoint.
// If the effect of a type changes, release the new projector and run
// `artifactstore project --rebuild`.
package projector

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
)

// ErrLogAltered means an event's payload does not match its digest, or
// its chain digest does not link it to its predecessor: the log was
// changed after it was written. The projector stops at that sequence; run
// `artifactstore audit` and restore the log from a backup. Errors wrapping
// it also wrap events.ErrPayloadDigest or events.ErrChainBroken.
var ErrLogAltered = errors.New("the event log was altered")

// ErrUnknownEvent means an event has a type or payload version this
// projector has no effect for; it stops rather than skip it. Upgrade the
// projector (see the package documentation on schema evolution).
var ErrUnknownEvent = errors.New("unknown event type or version")

// ErrGap means the log returned events that do not follow the checkpoint
// without a hole: the log reader broke its contract.
var ErrGap = errors.New("gap in the event log")

// ErrRebuildRunning means another rebuild holds the rebuild lock.
var ErrRebuildRunning = errors.New("another rebuild is running")

// NotifyChannel is the PostgreSQL channel on which the projector announces
// each committed batch ("<name>:<checkpoint>"); WaitFor listens on it.
const NotifyChannel = "artifactstore_projected"

// DefaultName is the projector name of the live tables.
const DefaultName = "projector"

// Log is the part of the event log the projector reads. *events.Log
// implements it.
type Log interface {
	// Read returns up to limit events with a sequence greater than after,
	// in ascending order and without gaps.
	Read(ctx context.Context, after int64, limit int) ([]events.Event, error)
	// Head returns the sequence of the last committed event.
	Head(ctx context.Context) (int64, error)
}

// Decoder checks an event's payload digest and decodes its payload.
// *events.Codec implements it.
type Decoder interface {
	DecodeEvent(e events.Event) (events.Payload, error)
}

var (
	_ Log     = (*events.Log)(nil)
	_ Decoder = (*events.Codec)(nil)
)

// Config configures a Projector. Zero values take the defaults.
type Config struct {
	// BatchSize is the most events applied in one transaction
	// (default 2000, at most events.MaxReadLimit).
	BatchSize int
	// PollInterval is how long the tail waits for a notification before it
	// looks at the log anyway (default 1s).
	PollInterval time.Duration
	// ElectInterval is how often a standby tries to become the leader
	// (default 1s).
	ElectInterval time.Duration
	// Logger receives the projector's log lines (default: none).
	Logger *zerolog.Logger
	// Name names the checkpoint and the leader lock (default DefaultName).
	// Every name writes the same tables, so only one name may project
	// into a database; other names are for tests and tools that keep
	// their own checkpoint.
	Name string
	// Now is the clock for LagSeconds (default time.Now).
	Now func() time.Time
}

func (c *Config) fill() {
	if c.BatchSize <= 0 {
		c.BatchSize = 2000
	}
	if c.BatchSize > events.MaxReadLimit {
		c.BatchSize = events.MaxReadLimit
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.ElectInterval <= 0 {
		c.ElectInterval = time.Second
	}
	if c.Logger == nil {
		l := zerolog.Nop()
		c.Logger = &l
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Projector applies the event log to the projection tables.
type Projector struct {
	pool  *pgxpool.Pool
	log   Log
	codec Decoder
	cfg   Config
	lg    zerolog.Logger

	mu     sync.Mutex
	memos  map[string]*memo // by retention table name
	noMemo bool             // tests: the reference path

	// hook, set only by tests, runs synchronously at each stage of each
	// batch (see stage); an error it returns stops the batch there, as a
	// failure of the database or a crash would. Tests use it to interrupt
	// or kill a projector at a chosen point instead of at a moment.
	hook func(batchPoint) error
}

// stage names a point of a batch at which the test hook runs. At each, a
// crash must leave the tables and the checkpoint either as they were
// before the batch or as the batch leaves them, never in between.
type stage int

const (
	stageLocked    stage = iota + 1 // the checkpoint row is locked
	stageRead                       // the batch's events are read and decoded
	stageFolded                     // the events are folded into rows in memory
	stageWritten                    // the rows and the checkpoint are written, not committed
	stageCommitted                  // the batch committed
	stageSwapped                    // Rebuild: the rebuilt tables are renamed into place, not committed
)

func (s stage) String() string {
	switch s {
	case stageLocked:
		return "locked"
	case stageRead:
		return "read"
	case stageFolded:
		return "folded"
	case stageWritten:
		return "written"
	case stageCommitted:
		return "committed"
	case stageSwapped:
		return "swapped"
	}
	return "stage(" + strconv.Itoa(int(s)) + ")"
}

// batchPoint is where a batch is when the hook runs.
type batchPoint struct {
	Stage      stage
	Checkpoint string // the checkpoint's name
	From       int64  // the checkpoint the batch started at
	To         int64  // the last sequence of the batch (From until it is read, and for an empty batch)
}

// at runs the test hook, if any, at a point of a batch.
func (p *Projector) at(pt batchPoint) error {
	if p.hook == nil {
		return nil
	}
	if err := p.hook(pt); err != nil {
		return fmt.Errorf("batch of %q after %d stopped at stage %s: %w", pt.Checkpoint, pt.From, pt.Stage, err)
	}
	return nil
}

// New returns a projector over the database of pool, reading log and
// decoding with codec.
func New(pool *pgxpool.Pool, log Log, codec Decoder, cfg Config) *Projector {
	cfg.fill()
	return &Projector{
		pool: pool, log: log, codec: codec, cfg: cfg, memos: map[string]*memo{},
		lg: cfg.Logger.With().Str("service", "projector").Str("projector", cfg.Name).Logger(),
	}
}

// RunOnce applies at most one batch to the live tables and returns how many
// events it applied (0 when caught up).
func (p *Projector) RunOnce(ctx context.Context) (int, error) {
	return p.applyBatch(ctx, liveTables, p.cfg.Name, p.cfg.BatchSize)
}

// CatchUp applies batches until the live tables are at the head of the log
// as it was when a batch found nothing more; it returns the events applied.
func (p *Projector) CatchUp(ctx context.Context) (int, error) {
	return p.catchUp(ctx, liveTables, p.cfg.Name)
}

func (p *Projector) catchUp(ctx context.Context, t tables, checkpoint string) (int, error) {
	total := 0
	var pre *fetch
	for {
		var (
			n    int
			last int64
			next *fetch
			idx  *memo
		)
		err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			var err error
			n, last, idx, err = p.applyInTx(ctx, tx, t, checkpoint, p.cfg.BatchSize, pre, &next, true)
			return err
		})
		if err == nil {
			p.putMemo(t, idx)
			if n > 0 {
				err = p.at(batchPoint{stageCommitted, checkpoint, last - int64(n), last})
			}
		}
		if pre != nil {
			pre.stop()
		}
		pre = next
		total += n
		if err != nil || n < p.cfg.BatchSize {
			if pre != nil {
				pre.stop()
			}
			return total, err
		}
	}
}

// fetch is a read of the log (and the decoding of its payloads) running
// ahead of the transaction that will apply it.
type fetch struct {
	after  int64
	done   chan struct{}
	cancel context.CancelFunc
	evs    []events.Event
	pls    []events.Payload
	err    error
}

// stop cancels the read if it still runs and waits for it to end.
func (f *fetch) stop() {
	f.cancel()
	<-f.done
}

func (p *Projector) startFetch(ctx context.Context, after int64, limit int) *fetch {
	ctx, cancel := context.WithCancel(ctx)
	f := &fetch{after: after, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(f.done)
		f.evs, f.pls, f.err = p.read(ctx, after, limit)
	}()
	return f
}

// read returns the events after the sequence after, with their decoded
// payloads. A payload that does not match its digest, a type or version
// without an effect, or a chain digest that is not the link of the event
// to its predecessor (a row forged or altered behind the append path's
// back), stops the projection there.
func (p *Projector) read(ctx context.Context, after int64, limit int) ([]events.Event, []events.Payload, error) {
	evs, err := p.log.Read(ctx, after, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("read events after %d: %w", after, err)
	}
	var prev [32]byte // the chain digest before sequence 1
	if after > 0 && len(evs) > 0 {
		at, err := p.log.Read(ctx, after-1, 1)
		if err != nil {
			return nil, nil, fmt.Errorf("read event %d: %w", after, err)
		}
		if len(at) == 0 || at[0].Sequence != after {
			return nil, nil, fmt.Errorf("%w: the event at checkpoint %d is gone", ErrGap, after)
		}
		prev = at[0].ChainDigest
	}
	payloads := make([]events.Payload, len(evs))
	for i, e := range evs {
		if e.Sequence != after+int64(i)+1 {
			return nil, nil, fmt.Errorf("%w: expected sequence %d after checkpoint %d, got %d", ErrGap, after+int64(i)+1, after, e.Sequence)
		}
		pl, err := p.codec.DecodeEvent(e)
		switch {
		case errors.Is(err, events.ErrPayloadDigest):
			return nil, nil, fmt.Errorf("%w: projection stopped at sequence %d (%s): %w; the checkpoint stays at %d — run `artifactstore audit` and restore the log",
				ErrLogAltered, e.Sequence, e.Type, err, after)
		case errors.Is(err, events.ErrUnknownType):
			return nil, nil, fmt.Errorf("%w: projection stopped at sequence %d: %w; upgrade this projector to a release that knows %q v%d, it resumes at checkpoint %d",
				ErrUnknownEvent, e.Sequence, err, e.Type, e.PayloadVersion, after)
		case err != nil:
			return nil, nil, fmt.Errorf("projection stopped at sequence %d: %w; the checkpoint stays at %d", e.Sequence, err, after)
		}
		if link, err := events.ChainLink(prev, e); err != nil || link != e.ChainDigest {
			return nil, nil, fmt.Errorf("%w: projection stopped at sequence %d (%s): %w: its chain digest is not the link of its columns to its predecessor; the checkpoint stays at %d — run `artifactstore audit` and restore the log",
				ErrLogAltered, e.Sequence, e.Type, events.ErrChainBroken, after)
		}
		prev = e.ChainDigest
		payloads[i] = pl
	}
	return evs, payloads, nil
}

// applyBatch is one transaction: lock the checkpoint, read, check, fold,
// write, move the checkpoint.
func (p *Projector) applyBatch(ctx context.Context, t tables, checkpoint string, limit int) (applied int, err error) {
	var (
		idx  *memo
		last int64
	)
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		applied, last, idx, err = p.applyInTx(ctx, tx, t, checkpoint, limit, nil, nil, true)
		return err
	})
	if err != nil {
		return 0, err
	}
	p.putMemo(t, idx)
	if applied > 0 {
		if err := p.at(batchPoint{stageCommitted, checkpoint, last - int64(applied), last}); err != nil {
			return applied, err
		}
	}
	return applied, nil
}

// applyInTx applies the events after the checkpoint in tx and returns how
// many it applied and the new checkpoint. pre, if not nil, is a read
// started earlier; it is used when it starts at the checkpoint. If next is
// not nil and the batch is full, the read of the following batch is
// started and stored there. With useIdx, the batch uses the projector's
// memo (see memo) and returns it updated; the caller must put it
// back with putMemo only once tx committed.
func (p *Projector) applyInTx(ctx context.Context, tx pgx.Tx, t tables, checkpoint string, limit int, pre *fetch, next **fetch, useIdx bool) (int, int64, *memo, error) {
	var (
		cp  int64
		oid uint32
	)
	b := &pgx.Batch{}
	// Every read of a batch is a lookup of at most a few thousand keys, for
	// which index nested loops are right at any table size. The planner
	// thinks otherwise: pgx caches prepared statements, and after a few
	// executions PostgreSQL may switch to a generic plan, which cannot see
	// how many keys an `= ANY($1)` array holds; and while a catch-up grows
	// the tables faster than autovacuum analyzes them it picks hash joins
	// and sequential scans, whose cost grows with the tables. Either costs
	// up to seconds per batch.
	b.Queue(`SET LOCAL plan_cache_mode = force_custom_plan`)
	b.Queue(`SET LOCAL enable_hashjoin = off`)
	b.Queue(`SET LOCAL enable_mergejoin = off`)
	b.Queue(`SET LOCAL enable_seqscan = off`)
	// Key lookups over large tables get costs above jit_above_cost; JIT
	// compiling them takes longer than running them.
	b.Queue(`SET LOCAL jit = off`)
	// The rows are derived from the log and commit atomically with their
	// checkpoint: a commit lost in a crash is applied again from the log,
	// so the projector need not wait for the WAL flush.
	b.Queue(`SET LOCAL synchronous_commit = off`)
	b.Queue(`INSERT INTO projector_checkpoints (projector) VALUES ($1) ON CONFLICT DO NOTHING`, checkpoint)
	b.Queue(`SELECT sequence FROM projector_checkpoints WHERE projector = $1 FOR UPDATE`, checkpoint).QueryRow(func(row pgx.Row) error {
		return row.Scan(&cp)
	})
	useIdx = useIdx && !p.noMemo
	if useIdx {
		b.Queue(`SELECT to_regclass($1)::oid`, t.retention).QueryRow(func(row pgx.Row) error {
			return row.Scan(&oid)
		})
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, 0, nil, fmt.Errorf("lock checkpoint %q: %w", checkpoint, err)
	}
	if err := p.at(batchPoint{stageLocked, checkpoint, cp, cp}); err != nil {
		return 0, 0, nil, err
	}
	var idx *memo
	if useIdx {
		idx = p.takeMemo(t, cp, oid)
	}
	var (
		evs      []events.Event
		payloads []events.Payload
		err      error
	)
	if pre != nil && pre.after == cp {
		select {
		case <-pre.done:
		case <-ctx.Done():
			return 0, 0, nil, ctx.Err()
		}
		evs, payloads, err = pre.evs, pre.pls, pre.err
	} else {
		evs, payloads, err = p.read(ctx, cp, limit)
	}
	if err != nil {
		return 0, 0, nil, err
	}
	if len(evs) == 0 {
		return 0, cp, idx, nil
	}
	last := evs[len(evs)-1].Sequence
	if err := p.at(batchPoint{stageRead, checkpoint, cp, last}); err != nil {
		return 0, 0, nil, err
	}
	if next != nil && len(evs) == limit {
		// Read and decode the next batch while this one is applied; it is
		// used only if the checkpoint is still where this batch leaves it.
		*next = p.startFetch(ctx, last, limit)
	}
	if useIdx && idx == nil {
		if idx, err = loadMemo(ctx, tx, t, cp, oid); err != nil {
			return 0, 0, nil, err
		}
	}
	// A full batch: the projector is catching up, worth a scan of the keys.
	if idx != nil && len(evs) == limit {
		if err := idx.loadFilters(ctx, tx, t); err != nil {
			return 0, 0, nil, err
		}
	}
	k := collectKeys(payloads)
	s, err := load(ctx, tx, t, k, idx)
	if err != nil {
		return 0, 0, nil, err
	}
	s.warn = func(seq int64, typ events.Type, msg string) {
		p.lg.Warn().Int64("sequence", seq).Str("event_type", string(typ)).Msg("event changes nothing: " + msg)
	}
	for i, e := range evs {
		if err := s.apply(e, payloads[i]); err != nil {
			return 0, 0, nil, err
		}
	}
	if err := p.at(batchPoint{stageFolded, checkpoint, cp, last}); err != nil {
		return 0, 0, nil, err
	}
	b = &pgx.Batch{}
	if err := write(ctx, tx, b, t, s); err != nil {
		return 0, 0, nil, fmt.Errorf("write projection up to sequence %d: %w", last, err)
	}
	b.Queue(`UPDATE projector_checkpoints SET sequence = $2, updated_at = now(),
		stopped_at = NULL, stop_reason = NULL, stop_message = NULL WHERE projector = $1`, checkpoint, last)
	b.Queue(`SELECT pg_notify($1, $2)`, NotifyChannel, checkpoint+":"+strconv.FormatInt(last, 10))
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, 0, nil, fmt.Errorf("write projection up to sequence %d: %w", last, err)
	}
	if err := p.at(batchPoint{stageWritten, checkpoint, cp, last}); err != nil {
		return 0, 0, nil, err
	}
	if idx != nil {
		idx.update(s, last)
		idx.remember(s, k)
	}
	return len(evs), last, idx, nil
}

// Run is the projector process: it waits to be elected leader (through
// the leader package, under [LockKey] of its name), catches up, then tails
// the log until ctx ends (returning nil) or the log cannot be projected
// (ErrLogAltered, ErrUnknownEvent, ErrGap, events.ErrBeyondHead, or a
// payload that matches its digest but does not decode, events.ErrMalformed:
// returned, after an error log line and with the stop recorded in its
// checkpoint row for status and the metrics). A lost lock connection makes
// it step down and stand for election again; other database errors are
// logged and retried every PollInterval.
func (p *Projector) Run(ctx context.Context) error {
	err := leader.RunConfig(ctx, p.pool, p.leaderConfig(), p.lead)
	if ctx.Err() != nil {
		return nil
	}
	if isFatal(err) {
		p.recordStop(err)
	}
	return err
}

// leaderConfig elects one projector of a name. The takeover delay is one
// ElectInterval, not the leader package's default: two projectors that
// overlap are harmless (the checkpoint row lock keeps exactly-once).
func (p *Projector) leaderConfig() leader.Config {
	lg := p.lg
	return leader.Config{
		Key: LockKey(p.cfg.Name), Name: "projector", Logger: &lg,
		RetryInterval: p.cfg.ElectInterval, CheckInterval: p.cfg.ElectInterval,
		TakeoverDelay: p.cfg.ElectInterval,
		OnChange: func(leading bool) {
			if leading {
				p.lg.Info().Msg("elected leader")
			}
		},
	}
}

// isFatal reports whether err stops the projector for good: retrying
// cannot help, a person must act (the log is immutable).
func isFatal(err error) bool {
	return StopReason(err) != ""
}

// StopReason names why err stops the projector for good, "" when it does
// not: log_altered, unknown_event, gap, beyond_head (a row written behind
// the append path's back) or malformed.
func StopReason(err error) string {
	switch {
	case errors.Is(err, ErrLogAltered):
		return "log_altered"
	case errors.Is(err, ErrUnknownEvent):
		return "unknown_event"
	case errors.Is(err, ErrGap):
		return "gap"
	case errors.Is(err, events.ErrBeyondHead):
		return "beyond_head"
	case errors.Is(err, events.ErrMalformed):
		return "malformed"
	}
	return ""
}

// recordStop writes why the projector stopped into its checkpoint row
// (stopped_at, stop_reason, stop_message), where status and the metrics
// read the alarm; the next batch applied clears it.
func (p *Projector) recordStop(stop error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := p.pool.Exec(ctx, `INSERT INTO projector_checkpoints (projector, stopped_at, stop_reason, stop_message)
		VALUES ($1, now(), $2, $3)
		ON CONFLICT (projector) DO UPDATE SET stopped_at = now(), stop_reason = $2, stop_message = $3`,
		p.cfg.Name, StopReason(stop), stop.Error())
	if err != nil {
		p.lg.Error().Err(err).Msg("could not record the stop in projector_checkpoints")
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// LockKey is the leader lock key of a projector name
// (leader.ProjectorKey): leader.KeyProjector for DefaultName.
func LockKey(name string) int64 { return leader.ProjectorKey(name) }

// lead projects while this projector leads (until ctx is done). It waits
// for the log's notifications on a dedicated connection, which it opens
// again when it fails. It listens before each catch-up that follows a
// (re)opened connection: an event appended between the catch-up's end
// and the LISTEN would otherwise wake nobody until PollInterval.
func (p *Projector) lead(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = conn.Close(closeCtx)
			cancel()
		}
	}()
	for {
		if conn == nil {
			c, err := p.listen(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.lg.Warn().Err(err).Msg("cannot listen for new events; catching up without, retrying after ElectInterval")
			}
			conn = c
		}
		n, err := p.CatchUp(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isFatal(err) {
				p.lg.Error().Err(err).Msg("projection stopped")
				return err
			}
			p.lg.Warn().Err(err).Msg("batch failed; retrying")
		} else if n > 0 {
			p.lg.Debug().Int("events", n).Msg("applied")
		}
		if conn == nil {
			if sleep(ctx, p.cfg.ElectInterval) != nil {
				return nil
			}
			continue
		}
		waitCtx, cancel := context.WithTimeout(ctx, p.cfg.PollInterval)
		_, werr := conn.WaitForNotification(waitCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if (werr != nil && !errors.Is(werr, context.DeadlineExceeded) && !pgconn.Timeout(werr)) || conn.IsClosed() {
			p.lg.Warn().Err(werr).Msg("listen connection lost; opening another")
			_ = conn.Close(context.WithoutCancel(ctx))
			conn = nil
		}
	}
}

// listen opens the connection on which lead waits for new events.
func (p *Projector) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect to listen for new events: %w", err)
	}
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{events.NotifyChannel}.Sanitize()); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("listen for new events: %w", err)
	}
	return conn, nil
}

// Status is the projector's position against the log.
type Status struct {
	// Checkpoint is the last applied sequence.
	Checkpoint int64
	// Head is the last committed sequence of the log.
	Head int64
	// LagSeconds is the age of the oldest event not yet applied (0 when
	// caught up).
	LagSeconds float64
}

// Status reports the checkpoint, the head of the log and the lag.
func (p *Projector) Status(ctx context.Context) (Status, error) {
	cp, err := Checkpoint(ctx, p.pool, p.cfg.Name)
	if err != nil {
		return Status{}, err
	}
	head, err := p.log.Head(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("read the head of the log: %w", err)
	}
	st := Status{Checkpoint: cp, Head: head}
	if head > cp {
		evs, err := p.log.Read(ctx, cp, 1)
		if err != nil {
			return Status{}, fmt.Errorf("read event %d: %w", cp+1, err)
		}
		if len(evs) > 0 {
			st.LagSeconds = max(0, p.cfg.Now().Sub(evs[0].OccurredAt).Seconds())
		}
	}
	return st, nil
}

// Checkpoint returns the last sequence the projector name applied (0 if it
// never ran), as the catalog reads it.
func Checkpoint(ctx context.Context, pool *pgxpool.Pool, name string) (int64, error) {
	return catalog.New(pool).Checkpoint(ctx, name)
}

// WaitFor blocks until the default projector has applied sequence seq
// (read-your-writes: a producer appends, then waits for the tables to show
// it), or ctx ends. Pass a context with a deadline: it waits as long as the
// projector is down.
func WaitFor(ctx context.Context, pool *pgxpool.Pool, seq int64) error {
	return WaitForProjector(ctx, pool, DefaultName, seq)
}

// WaitForProjector is WaitFor for the projector of the given name.
func WaitForProjector(ctx context.Context, pool *pgxpool.Pool, name string, seq int64) error {
	if cp, err := Checkpoint(ctx, pool, name); err != nil || cp >= seq {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("wait for projection of %d: %w", seq, err)
	}
	// A connection that has LISTENed must not go back to the pool.
	defer func() { _ = conn.Hijack().Close(context.Background()) }()
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		return fmt.Errorf("wait for projection of %d: %w", seq, err)
	}
	cat := catalog.New(conn)
	for {
		cp, err := cat.Checkpoint(ctx, name)
		if err != nil {
			return fmt.Errorf("wait for projection of %d: %w", seq, err)
		}
		if cp >= seq {
			return nil
		}
		waitCtx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = conn.Conn().WaitForNotification(waitCtx)
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("wait for projection of %d (projector %q at %d; is it running?): %w", seq, name, cp, ctx.Err())
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
			return fmt.Errorf("wait for projection of %d: %w", seq, err)
		}
	}
}
