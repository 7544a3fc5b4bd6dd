package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// NotifyChannel is the PostgreSQL notification channel of the log: every
// append sends pg_notify(NotifyChannel, <last sequence>) in its transaction,
// so a listener hears of it when (and only if) it commits. A notification
// is a hint to read; readers still read by sequence.
const NotifyChannel = "artifactstore_events"

// MaxReadLimit caps the limit of one Read.
const MaxReadLimit = 10000

// ErrInvalidBatch means an Append was called with a batch that cannot be
// appended (no events, an incomplete draft, a payload the codec refuses).
// Nothing was appended.
var ErrInvalidBatch = errors.New("invalid batch")

// ErrBeyondHead means the events table holds a row after the sequence the
// log head records: a row written behind the append path's back (with the
// database's triggers switched off). Readers stop there rather than pass
// it on; `artifactstore audit` names it.
var ErrBeyondHead = errors.New("event beyond the log head: written outside the append path")

// ErrCommandNotFound means no events were appended under a command id.
var ErrCommandNotFound = errors.New("command not found in the event log")

// ErrNotMigrated means the database lacks the event log tables.
var ErrNotMigrated = errors.New("database schema is missing or outdated; run `artifactstore migrate up`")

// ErrConflict means the append collided with a concurrent one in a way the
// transaction cannot survive (a serialization failure under REPEATABLE READ
// or SERIALIZABLE, or a command id committed by another appender after this
// transaction's snapshot). Nothing was appended; retry the whole
// transaction.
var ErrConflict = errors.New("concurrent append conflict; retry the transaction")

// Log is the PostgreSQL event log: a gap-free, totally ordered, append-only
// sequence of events with a hash chain over them.
//
// Appends are serialised by a row lock on the single event_log_head row,
// taken first in every appending transaction and held until it commits.
// Hence transactions commit in sequence order, a rolled-back append leaves
// no hole, and a reader that reads `sequence > last seen` never skips an
// event. Throughput comes from group commit: one Append may carry many
// commands, written in one transaction with two round trips.
//
// A Log is safe for concurrent use.
type Log struct {
	pool  *pgxpool.Pool
	codec *Codec
	now   func() time.Time
}

// LogOption configures a Log.
type LogOption func(*Log)

// WithClock sets the clock that stamps OccurredAt (default time.Now).
func WithClock(now func() time.Time) LogOption {
	return func(l *Log) { l.now = now }
}

// NewLog returns the log stored in the database of pool, encoding payloads
// with codec. The schema must have been migrated (package migrations).
func NewLog(pool *pgxpool.Pool, codec *Codec, opts ...LogOption) *Log {
	l := &Log{pool: pool, codec: codec, now: time.Now}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Batch is the events of one command, appended together or not at all.
type Batch struct {
	// CommandID makes the append idempotent: the events of a command id are
	// appended once; a later batch with the same id appends nothing and gets
	// the first one's events back. Empty means no idempotency.
	CommandID string
	// Events are the drafts to append, in order; at least one.
	Events []Draft
}

// Result is the outcome of one Batch.
type Result struct {
	// CommandID is the batch's command id.
	CommandID string
	// Events are the batch's events as committed; when Duplicate, the events
	// of the first append of CommandID (whose drafts may differ from this
	// batch's: they are not compared).
	Events []Event
	// Duplicate reports that CommandID had been appended before (or earlier
	// in the same call) and this batch appended nothing.
	Duplicate bool
}

// Append appends batches in one transaction: all of them or none. See
// AppendTx for the details.
func (l *Log) Append(ctx context.Context, batches ...Batch) ([]Result, error) {
	prepared, err := l.prepare(batches)
	if err != nil {
		return nil, err
	}
	var results []Result
	err = pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var err error
		results, err = l.appendPrepared(ctx, tx, prepared)
		return err
	})
	if err != nil {
		return nil, translate("append events", err)
	}
	return results, nil
}

// AppendTx appends batches inside the caller's transaction, so that the
// events commit atomically with the caller's other writes; the caller
// commits or rolls back. Results are in batch order.
//
// From this call until the transaction ends, every other appender waits:
// keep the transaction short. tx must use READ COMMITTED (PostgreSQL's
// default); under a stricter level a concurrent append makes this call fail
// with ErrConflict (never a duplicate append).
func (l *Log) AppendTx(ctx context.Context, tx pgx.Tx, batches ...Batch) ([]Result, error) {
	prepared, err := l.prepare(batches)
	if err != nil {
		return nil, err
	}
	results, err := l.appendPrepared(ctx, tx, prepared)
	if err != nil {
		return nil, translate("append events", err)
	}
	return results, nil
}

type preparedEvent struct {
	draft   Draft
	typ     Type
	version int
	payload []byte
	digest  [32]byte
}

type preparedBatch struct {
	commandID string
	events    []preparedEvent
}

// prepare validates and encodes every draft before any lock is taken.
func (l *Log) prepare(batches []Batch) ([]preparedBatch, error) {
	if len(batches) == 0 {
		return nil, fmt.Errorf("%w: no batch given", ErrInvalidBatch)
	}
	out := make([]preparedBatch, len(batches))
	for i, b := range batches {
		if len(b.Events) == 0 {
			return nil, fmt.Errorf("%w: batch %d (command %q) has no events", ErrInvalidBatch, i, b.CommandID)
		}
		pb := preparedBatch{commandID: b.CommandID, events: make([]preparedEvent, len(b.Events))}
		for j, d := range b.Events {
			switch {
			case d.Payload == nil:
				return nil, fmt.Errorf("%w: batch %d event %d has no payload", ErrInvalidBatch, i, j)
			case d.SubjectKind == "" || d.SubjectID == "":
				return nil, fmt.Errorf("%w: batch %d event %d (%s) needs a subject kind and id", ErrInvalidBatch, i, j, d.Payload.EventType())
			case d.Actor == "":
				return nil, fmt.Errorf("%w: batch %d event %d (%s) needs an actor", ErrInvalidBatch, i, j, d.Payload.EventType())
			}
			payload, digest, err := l.codec.EncodePayload(d.Payload)
			if err != nil {
				return nil, fmt.Errorf("%w: batch %d event %d: %w", ErrInvalidBatch, i, j, err)
			}
			pb.events[j] = preparedEvent{
				draft: d, typ: d.Payload.EventType(), version: d.Payload.PayloadVersion(),
				payload: payload, digest: digest,
			}
		}
		out[i] = pb
	}
	return out, nil
}

const eventColumns = `sequence, event_id, occurred_at, event_type, payload_version,
	subject_kind, subject_id, actor, command_id, payload, payload_digest, chain_digest, chain_version`

// queueLockHead queues on b the lock of the log head row, scanning the
// head into seq and chain.
func queueLockHead(b *pgx.Batch, seq *int64, chain *[]byte) {
	b.Queue(`SELECT last_sequence, last_chain_digest FROM event_log_head FOR UPDATE`).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(seq, chain); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%w: event_log_head has no row", ErrNotMigrated)
			}
			return fmt.Errorf("lock log head: %w", err)
		}
		return nil
	})
}

// HeadLock is the log head locked in a caller's transaction by a batch of
// its own (QueueLockHead), so that the lock costs no round trip of its
// own: once that batch ran, QueueAppend queues appends under it.
type HeadLock struct {
	seq   int64
	chain []byte
}

// QueueLockHead queues on b the lock of the log head (every other appender
// waits from then until the caller's transaction ends) and returns the
// head it reads once b ran. Statements queued on b after it run under the
// lock, each with a snapshot taken after the lock was granted (READ
// COMMITTED), so a look-up of command ids among them sees every command
// committed before. Use it in the transaction's first batch, with the
// reads the caller decides on; the transaction must be READ COMMITTED.
func (l *Log) QueueLockHead(b *pgx.Batch) *HeadLock {
	h := &HeadLock{}
	queueLockHead(b, &h.seq, &h.chain)
	return h
}

// QueueAppend prepares batches and queues their appends on b, to be sent
// in the same transaction after the batch that locked h ran: the inserts
// of the events and of their command ids, and the notification. The
// results (sequences, chain digests) are known at once, before b is sent;
// they hold only if b commits. Unlike AppendTx it does not look the
// command ids up: the caller must have found none of them in the log with
// a look-up queued after the lock (QueueLockHead) and must give each once;
// a command id in the log makes b fail on the commands table's key,
// appending nothing. Further calls on the same HeadLock append after it.
func (l *Log) QueueAppend(b *pgx.Batch, h *HeadLock, batches ...Batch) ([]Result, error) {
	prepared, err := l.prepare(batches)
	if err != nil {
		return nil, err
	}
	prev, err := digest32(h.chain, "event_log_head.last_chain_digest")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, pb := range prepared {
		if pb.commandID == "" {
			continue
		}
		if seen[pb.commandID] {
			return nil, fmt.Errorf("%w: command %q is given twice", ErrInvalidBatch, pb.commandID)
		}
		seen[pb.commandID] = true
	}
	at := l.now().UTC().Truncate(time.Microsecond)
	results := make([]Result, len(prepared))
	var (
		cols    insertColumns
		cmdCols commandColumns
		seq     = h.seq
	)
	for i, pb := range prepared {
		results[i].CommandID = pb.commandID
		if results[i].Events, seq, prev, err = chainEvents(pb, seq, prev, at, &cols); err != nil {
			return nil, err
		}
		if pb.commandID != "" {
			cmdCols.add(pb.commandID, results[i].Events[0].Sequence, seq)
		}
	}
	queueInserts(b, &cols, &cmdCols, at, seq)
	h.seq, h.chain = seq, prev[:]
	return results, nil
}

// chainEvents makes the events of pb, numbered after seq and chained
// after prev, and adds them to cols; it returns them with the new last
// sequence and chain digest.
func chainEvents(pb preparedBatch, seq int64, prev [32]byte, at time.Time, cols *insertColumns) ([]Event, int64, [32]byte, error) {
	evs := make([]Event, len(pb.events))
	for j, pe := range pb.events {
		seq++
		id, err := uuid.NewV7()
		if err != nil {
			return nil, seq, prev, fmt.Errorf("event id: %w", err)
		}
		e := Event{
			Sequence: seq, EventID: id, OccurredAt: at, Type: pe.typ, PayloadVersion: pe.version,
			SubjectKind: pe.draft.SubjectKind, SubjectID: pe.draft.SubjectID, Actor: pe.draft.Actor,
			CommandID: pb.commandID, Payload: pe.payload, PayloadDigest: pe.digest, ChainVersion: CurrentChain,
		}
		e.ChainDigest = ChainDigestV2(prev, e)
		prev = e.ChainDigest
		evs[j] = e
		cols.add(e)
	}
	return evs, seq, prev, nil
}

// queueInserts queues on b the inserts of the events in cols and the
// command ids in cmdCols, and the notification of the new last sequence.
// The insert trigger of the events table checks that the rows follow the
// head and moves the head to the last one.
func queueInserts(b *pgx.Batch, cols *insertColumns, cmdCols *commandColumns, at time.Time, last int64) {
	b.Queue(`INSERT INTO events (`+eventColumns+`)
		SELECT s, i, $3, t, v, sk, sid, a, c, p, pd, cd, $13
		FROM unnest($1::bigint[], $2::uuid[], $4::text[], $5::smallint[], $6::text[], $7::text[],
		            $8::text[], $9::text[], $10::bytea[], $11::bytea[], $12::bytea[])
		     AS u(s, i, t, v, sk, sid, a, c, p, pd, cd)`,
		cols.seq, cols.id, at, cols.typ, cols.version, cols.subjectKind, cols.subjectID,
		cols.actor, cols.commandID, cols.payload, cols.payloadDigest, cols.chainDigest, int16(CurrentChain))
	if len(cmdCols.id) > 0 {
		b.Queue(`INSERT INTO commands (command_id, first_sequence, last_sequence, appended_at)
			SELECT c, f, l, $4 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(c, f, l)`,
			cmdCols.id, cmdCols.first, cmdCols.last, at)
	}
	b.Queue(`SELECT pg_notify($1, $2)`, NotifyChannel, strconv.FormatInt(last, 10))
}

func (l *Log) appendPrepared(ctx context.Context, tx pgx.Tx, batches []preparedBatch) ([]Result, error) {
	var ids []string
	for _, b := range batches {
		if b.commandID != "" {
			ids = append(ids, b.commandID)
		}
	}

	// Round trip 1: lock the head (serialising appenders), then, under the
	// lock, look the command ids up. Under READ COMMITTED the lookup's
	// snapshot is taken after the lock was granted, so it sees every
	// command committed before.
	var (
		lastSeq   int64
		lastChain []byte
		seen      = map[string]bool{}
	)
	qb := &pgx.Batch{}
	queueLockHead(qb, &lastSeq, &lastChain)
	if len(ids) > 0 {
		qb.Queue(`SELECT command_id FROM commands WHERE command_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					return err
				}
				seen[id] = true
			}
			return rows.Err()
		})
	}
	if err := tx.SendBatch(ctx, qb).Close(); err != nil {
		return nil, err
	}
	prev, err := digest32(lastChain, "event_log_head.last_chain_digest")
	if err != nil {
		return nil, err
	}

	results := make([]Result, len(batches))
	var (
		dupIDs      []string           // already in the log before this call
		firstInCall = map[string]int{} // command id → index of its result in this call
		cols        insertColumns
		cmdCols     commandColumns
		at          = l.now().UTC().Truncate(time.Microsecond)
		seq         = lastSeq
	)
	for i, b := range batches {
		results[i].CommandID = b.commandID
		if b.commandID != "" {
			if seen[b.commandID] {
				results[i].Duplicate = true
				if _, ok := firstInCall[b.commandID]; !ok {
					firstInCall[b.commandID] = -1
					dupIDs = append(dupIDs, b.commandID)
				}
				continue
			}
			if _, ok := firstInCall[b.commandID]; ok {
				results[i].Duplicate = true
				continue
			}
			firstInCall[b.commandID] = i
		}
		evs, last, chain, err := chainEvents(b, seq, prev, at, &cols)
		if err != nil {
			return nil, err
		}
		seq, prev = last, chain
		results[i].Events = evs
		if b.commandID != "" {
			cmdCols.add(b.commandID, evs[0].Sequence, seq)
		}
	}

	// Round trip 2: the inserts and the notification, plus the events of
	// duplicate commands. The insert trigger of the events table checks
	// that the rows follow the head and moves the head to the last one.
	wb := &pgx.Batch{}
	dupEvents := map[string][]Event{}
	if len(dupIDs) > 0 {
		wb.Queue(`SELECT c.command_id, `+prefixed("e.", eventColumns)+`
			FROM commands c JOIN events e ON e.sequence BETWEEN c.first_sequence AND c.last_sequence
			WHERE c.command_id = ANY($1) ORDER BY e.sequence`, dupIDs).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id string
				e, err := scanEvent(rows, &id)
				if err != nil {
					return err
				}
				dupEvents[id] = append(dupEvents[id], e)
			}
			return rows.Err()
		})
	}
	if seq > lastSeq {
		queueInserts(wb, &cols, &cmdCols, at, seq)
	}
	if wb.Len() > 0 {
		if err := tx.SendBatch(ctx, wb).Close(); err != nil {
			return nil, err
		}
	}

	for i := range results {
		if !results[i].Duplicate {
			continue
		}
		id := results[i].CommandID
		if k := firstInCall[id]; k >= 0 {
			results[i].Events = results[k].Events
			continue
		}
		evs, ok := dupEvents[id]
		if !ok {
			return nil, fmt.Errorf("command %q is recorded but its events are not in the log", id)
		}
		results[i].Events = evs
	}
	return results, nil
}

// insertColumns holds the events of one append column by column, the shape
// unnest wants: one INSERT for any number of events.
type insertColumns struct {
	seq                                 []int64
	id                                  []uuid.UUID
	typ, subjectKind, subjectID, actor  []string
	version                             []int16
	commandID                           []*string
	payload, payloadDigest, chainDigest [][]byte
}

func (c *insertColumns) add(e Event) {
	c.seq = append(c.seq, e.Sequence)
	c.id = append(c.id, e.EventID)
	c.typ = append(c.typ, string(e.Type))
	c.version = append(c.version, int16(e.PayloadVersion))
	c.subjectKind = append(c.subjectKind, e.SubjectKind)
	c.subjectID = append(c.subjectID, e.SubjectID)
	c.actor = append(c.actor, e.Actor)
	var cmd *string
	if e.CommandID != "" {
		cmd = &e.CommandID
	}
	c.commandID = append(c.commandID, cmd)
	c.payload = append(c.payload, e.Payload)
	c.payloadDigest = append(c.payloadDigest, e.PayloadDigest[:])
	c.chainDigest = append(c.chainDigest, e.ChainDigest[:])
}

type commandColumns struct {
	id          []string
	first, last []int64
}

func (c *commandColumns) add(id string, first, last int64) {
	c.id = append(c.id, id)
	c.first = append(c.first, first)
	c.last = append(c.last, last)
}

// Read returns up to limit events with a sequence greater than after, in
// ascending order. Because appends commit in sequence order, the result is
// always a contiguous run: a reader that continues from the last sequence
// it saw never skips an event. limit must be in 1..MaxReadLimit.
//
// Events up to the log head are returned; when the next event lies beyond
// the head (a row inserted behind the append path's back), Read returns
// the events before it and, once none is left before it, an error wrapping
// ErrBeyondHead.
func (l *Log) Read(ctx context.Context, after int64, limit int) ([]Event, error) {
	if limit < 1 || limit > MaxReadLimit {
		return nil, fmt.Errorf("read events: limit %d out of range 1..%d", limit, MaxReadLimit)
	}
	// One statement, so the head and the rows come from one snapshot.
	rows, err := l.pool.Query(ctx, `SELECT h.last_sequence, `+prefixed("e.", eventColumns)+`
		FROM events e CROSS JOIN event_log_head h
		WHERE e.sequence > $1 ORDER BY e.sequence LIMIT $2`, after, limit)
	if err != nil {
		return nil, translate("read events", err)
	}
	defer rows.Close()
	var evs []Event
	for rows.Next() {
		var head int64
		e, err := scanEvent(rows, &head)
		if err != nil {
			return nil, translate("read events", err)
		}
		if e.Sequence > head {
			if len(evs) > 0 {
				return evs, nil
			}
			return nil, fmt.Errorf("read events after %d: %w: event %d, the head is %d; run `artifactstore audit`", after, ErrBeyondHead, e.Sequence, head)
		}
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return nil, translate("read events", err)
	}
	return evs, nil
}

// Head returns the sequence of the last committed event, 0 for an empty log.
func (l *Log) Head(ctx context.Context) (int64, error) {
	var seq int64
	if err := l.pool.QueryRow(ctx, `SELECT last_sequence FROM event_log_head`).Scan(&seq); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("read log head: %w: event_log_head has no row", ErrNotMigrated)
		}
		return 0, translate("read log head", err)
	}
	return seq, nil
}

// ByCommand returns the events appended under commandID, in order, or an
// error wrapping ErrCommandNotFound.
func (l *Log) ByCommand(ctx context.Context, commandID string) ([]Event, error) {
	rows, err := l.pool.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+`
		FROM commands c JOIN events e ON e.sequence BETWEEN c.first_sequence AND c.last_sequence
		WHERE c.command_id = $1 ORDER BY e.sequence`, commandID)
	if err != nil {
		return nil, translate("read command events", err)
	}
	evs, err := collectEvents(rows)
	if err != nil {
		return nil, translate("read command events", err)
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("command %q: %w", commandID, ErrCommandNotFound)
	}
	return evs, nil
}

func collectEvents(rows pgx.Rows) ([]Event, error) {
	defer rows.Close()
	var evs []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		evs = append(evs, e)
	}
	return evs, rows.Err()
}

// scanEvent scans the eventColumns of a row, after any extra leading
// destinations.
func scanEvent(rows pgx.Rows, extra ...any) (Event, error) {
	var (
		e                    Event
		version, chainVer    int16
		commandID            *string
		typ                  string
		payloadDig, chainDig []byte
	)
	dest := append(extra, &e.Sequence, &e.EventID, &e.OccurredAt, &typ, &version,
		&e.SubjectKind, &e.SubjectID, &e.Actor, &commandID, &e.Payload, &payloadDig, &chainDig, &chainVer)
	if err := rows.Scan(dest...); err != nil {
		return Event{}, fmt.Errorf("scan event: %w", err)
	}
	e.Type = Type(typ)
	e.PayloadVersion = int(version)
	e.ChainVersion = int(chainVer)
	e.OccurredAt = e.OccurredAt.UTC()
	if commandID != nil {
		e.CommandID = *commandID
	}
	var err error
	if e.PayloadDigest, err = digest32(payloadDig, "payload_digest"); err != nil {
		return Event{}, fmt.Errorf("event %d: %w", e.Sequence, err)
	}
	if e.ChainDigest, err = digest32(chainDig, "chain_digest"); err != nil {
		return Event{}, fmt.Errorf("event %d: %w", e.Sequence, err)
	}
	return e, nil
}

func digest32(b []byte, what string) ([32]byte, error) {
	var d [32]byte
	if len(b) != len(d) {
		return d, fmt.Errorf("%s has %d bytes, want %d", what, len(b), len(d))
	}
	copy(d[:], b)
	return d, nil
}

// prefixed returns columns with prefix before each column name.
func prefixed(prefix, columns string) string {
	names := strings.Split(columns, ",")
	for i, n := range names {
		names[i] = prefix + strings.TrimSpace(n)
	}
	return strings.Join(names, ", ")
}

// translate maps PostgreSQL errors a caller can act on to the package's
// sentinels and adds what was being done.
func translate(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42P01", "42703": // undefined_table, undefined_column
			return fmt.Errorf("%s: %w (%s)", op, ErrNotMigrated, pgErr.Message)
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return fmt.Errorf("%s: %w: %w", op, ErrConflict, err)
		case "23505": // unique_violation
			if pgErr.TableName == "commands" {
				return fmt.Errorf("%s: %w: %w", op, ErrConflict, err)
			}
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}
