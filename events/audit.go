package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// auditBatch is how many events Audit reads per query.
const auditBatch = 2000

// ErrChainBroken means the log does not extend a chain head it was known to
// have (an anchor): an event was altered, removed or forged.
var ErrChainBroken = errors.New("the event log's hash chain is broken")

// Anchor is a point of the chain vouched for from outside the database,
// such as a signed checkpoint: the chain digest the event at Sequence had.
type Anchor struct {
	// Sequence is the event the anchor is about.
	Sequence int64
	// Chain is the chain digest that event had.
	Chain [32]byte
	// Source says where the anchor comes from, for reports.
	Source string
}

// AuditOptions configures Audit.
type AuditOptions struct {
	// Progress, if not nil, is called with the last sequence checked after
	// each batch.
	Progress func(seq int64)
	// Anchors are chain heads from outside the database (signed
	// checkpoints). The audit fails when the log disagrees with one or
	// ends before one.
	Anchors []Anchor
}

// AuditReport is the outcome of an Audit.
type AuditReport struct {
	// Events is how many events were checked, up to and including FirstBad.
	Events int64
	// Head is the last sequence the log head row records.
	Head int64
	// V1Events is how many events, from sequence 1, were written before
	// chain v2: their chain covers only the sequence, type and payload.
	V1Events int64
	// AnchorsMatched is how many anchors the log agrees with.
	AnchorsMatched int
	// FirstBad is the sequence of the first event that failed a check, 0
	// when the whole log passed or when the failure is about no event
	// (Reason says).
	FirstBad int64
	// Reason says what failed at FirstBad; empty when the log passed.
	Reason string
}

// OK reports whether the audit found nothing wrong.
func (r AuditReport) OK() bool { return r.FirstBad == 0 && r.Reason == "" }

func (r *AuditReport) fail(seq int64, reason string) {
	r.FirstBad, r.Reason = seq, reason
}

// logHead is the head row of the log.
type logHead struct {
	seq, v1Until int64
	chain        [32]byte
}

func readHead(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (logHead, error) {
	var (
		h     logHead
		chain []byte
	)
	if err := q.QueryRow(ctx, `SELECT last_sequence, last_chain_digest, chain_v1_until FROM event_log_head`).
		Scan(&h.seq, &chain, &h.v1Until); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return h, fmt.Errorf("%w: event_log_head has no row", ErrNotMigrated)
		}
		return h, translate("read the log head", err)
	}
	var err error
	h.chain, err = digest32(chain, "event_log_head.last_chain_digest")
	return h, err
}

// Audit walks every row of the events table in sequence order, in batches,
// and checks that:
//
//   - the table has no column the chain does not cover;
//   - sequences run from 1 without a gap, and no row lies beyond the head;
//   - each payload matches its payload digest;
//   - each row's chain version is v1 up to event_log_head.chain_v1_until
//     and v2 after it, and its chain digest is the link of that version
//     (v2 covers every column: see ChainDigestV2);
//   - the head row names the last event and its chain digest;
//   - the log agrees with every anchor and reaches each of them.
//
// It stops at the first failure and reports it; an error means the audit
// could not run, not that the log is bad.
func (l *Log) Audit(ctx context.Context, opts AuditOptions) (AuditReport, error) {
	var rep AuditReport
	if reason, err := l.uncoveredColumns(ctx); err != nil || reason != "" {
		rep.Reason = reason
		return rep, err
	}
	head, err := readHead(ctx, l.pool)
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	rep.Head = head.seq
	w := newWalker(head, opts.Anchors)
	for {
		n := 0
		err := l.scanRange(ctx, w.last, 0, func(e Event, hasCommand bool) bool {
			n++
			rep.Events++
			if seq, bad := w.step(e, hasCommand); bad != "" {
				rep.fail(seq, bad)
				return false
			}
			return true
		})
		if err != nil {
			return rep, fmt.Errorf("audit: %w", err)
		}
		if !rep.OK() {
			rep.AnchorsMatched = w.matched
			return rep, nil
		}
		if n > 0 && opts.Progress != nil {
			opts.Progress(w.last)
		}
		if n < auditBatch {
			break
		}
	}
	rep.V1Events = min(head.v1Until, w.last)
	rep.AnchorsMatched = w.matched
	if seq, bad := w.finish(); bad != "" {
		rep.fail(seq, bad)
	}
	return rep, nil
}

// VerifyExtension checks that the log still has the chain head from (the
// event at from.Sequence has chain digest from.Chain; sequence 0 is the
// empty log, all zeros) and that every event after it, up to and including
// sequence to, is intact and correctly linked. It returns the chain digest
// at to. A log that does not pass gives an error wrapping ErrChainBroken
// that names the first bad sequence; a log head before to, one wrapping
// ErrBeyondHead when rows lie beyond the head, else a plain error.
//
// The checkpoint signer calls it before it signs a new head, so that it
// never signs a chain that does not extend the one it signed before.
func (l *Log) VerifyExtension(ctx context.Context, from Anchor, to int64) ([32]byte, error) {
	head, err := readHead(ctx, l.pool)
	if err != nil {
		return [32]byte{}, err
	}
	if to > head.seq || to < from.Sequence {
		return [32]byte{}, fmt.Errorf("verify the log from %d to %d: the log head is at %d", from.Sequence, to, head.seq)
	}
	w := newWalker(head, nil)
	start := from.Sequence
	if start > 0 {
		// Read the anchored event itself, to check it and link from it.
		start--
		w.last = start
		w.anchors = map[int64][]Anchor{from.Sequence: {from}}
		if start > 0 {
			var chain []byte
			err := l.pool.QueryRow(ctx, `SELECT chain_digest FROM events WHERE sequence = $1`, start).Scan(&chain)
			if errors.Is(err, pgx.ErrNoRows) {
				return [32]byte{}, fmt.Errorf("%w at sequence %d: the event is missing", ErrChainBroken, start)
			}
			if err != nil {
				return [32]byte{}, translate("verify the log", err)
			}
			if w.prev, err = digest32(chain, "chain_digest"); err != nil {
				return [32]byte{}, fmt.Errorf("%w at sequence %d: %w", ErrChainBroken, start, err)
			}
		}
	}
	var (
		badSeq int64
		bad    string
	)
	for w.last < to && bad == "" {
		n := 0
		err := l.scanRange(ctx, w.last, to, func(e Event, hasCommand bool) bool {
			n++
			badSeq, bad = w.step(e, hasCommand)
			return bad == ""
		})
		if err != nil {
			return [32]byte{}, fmt.Errorf("verify the log: %w", err)
		}
		if n == 0 && bad == "" {
			badSeq, bad = w.last+1, fmt.Sprintf("sequence %d is missing: the events table ends at %d", w.last+1, w.last)
		}
	}
	if bad != "" {
		return [32]byte{}, fmt.Errorf("%w at sequence %d: %s", ErrChainBroken, badSeq, bad)
	}
	return w.prev, nil
}

// scanRange reads up to auditBatch rows after sequence after (up to and
// including upto when it is positive) and calls f with each until f
// returns false.
func (l *Log) scanRange(ctx context.Context, after, upto int64, f func(e Event, hasCommand bool) bool) error {
	if upto <= 0 {
		upto = 1<<63 - 1
	}
	rows, err := l.pool.Query(ctx, `SELECT command_id IS NOT NULL, `+eventColumns+` FROM events
		WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3`, after, upto, auditBatch)
	if err != nil {
		return translate("read events", err)
	}
	defer rows.Close()
	for rows.Next() {
		var hasCommand bool
		e, err := scanEvent(rows, &hasCommand)
		if err != nil {
			return err
		}
		if !f(e, hasCommand) {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return translate("read events", err)
	}
	return nil
}

// uncoveredColumns says which columns of the events table the chain does
// not cover, or which covered ones are gone; "" when they are the same.
func (l *Log) uncoveredColumns(ctx context.Context) (string, error) {
	rows, err := l.pool.Query(ctx, `SELECT column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'events' ORDER BY ordinal_position`)
	if err != nil {
		return "", translate("audit: list the columns of events", err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", translate("audit: list the columns of events", err)
	}
	var extra, missing []string
	for _, c := range cols {
		if !slices.Contains(chainedColumns, c) {
			extra = append(extra, c)
		}
	}
	for _, c := range chainedColumns {
		if !slices.Contains(cols, c) {
			missing = append(missing, c)
		}
	}
	switch {
	case len(cols) == 0:
		return "", fmt.Errorf("audit: %w (no events table)", ErrNotMigrated)
	case len(extra) > 0:
		return fmt.Sprintf("the events table has columns the hash chain does not cover (%s): the schema was changed outside artifactstore's migrations, or this release is older than the schema", strings.Join(extra, ", ")), nil
	case len(missing) > 0:
		return "", fmt.Errorf("audit: %w (events lacks %s)", ErrNotMigrated, strings.Join(missing, ", "))
	}
	return "", nil
}

// walker checks events one by one in sequence order.
type walker struct {
	head    logHead
	prev    [32]byte
	last    int64
	anchors map[int64][]Anchor
	matched int
	// lastMatched is the sequence of the last anchor the log agreed with.
	lastMatched int64
}

func newWalker(head logHead, anchors []Anchor) *walker {
	w := &walker{head: head, anchors: map[int64][]Anchor{}}
	for _, a := range anchors {
		w.anchors[a.Sequence] = append(w.anchors[a.Sequence], a)
	}
	return w
}

// step checks e against its predecessor and the anchors, and advances.
// It returns the first bad sequence and why, or "".
func (w *walker) step(e Event, hasCommand bool) (int64, string) {
	seq := e.Sequence
	switch {
	case seq > w.head.seq:
		return seq, fmt.Sprintf("event %d lies beyond the log head (%d): it was inserted behind the append path's back", seq, w.head.seq)
	case seq != w.last+1:
		return w.last + 1, fmt.Sprintf("sequence %d is missing: the next event is %d", w.last+1, seq)
	case PayloadDigest(e.Payload) != e.PayloadDigest:
		return seq, "payload does not match its payload digest: the payload was altered"
	}
	wantVersion := ChainV2
	if seq <= w.head.v1Until {
		wantVersion = ChainV1
	}
	if e.ChainVersion != wantVersion {
		return seq, fmt.Sprintf("chain version is %d, but events 1..%d are on chain v1 and every later one on v2: its chain version was changed", e.ChainVersion, w.head.v1Until)
	}
	var link [32]byte
	if e.ChainVersion == ChainV1 {
		link = ChainDigestV1(w.prev, seq, e.Type, e.PayloadDigest)
	} else {
		link = chainV2(w.prev, e, hasCommand)
	}
	if link != e.ChainDigest {
		what := "its sequence, type or payload"
		if e.ChainVersion == ChainV2 {
			what = "one of its columns"
		}
		return seq, fmt.Sprintf("chain digest does not match the previous chain digest and the event: %s, its chain digest or its predecessor's was altered", what)
	}
	for _, a := range w.anchors[seq] {
		if a.Chain != e.ChainDigest {
			return seq, fmt.Sprintf("chain digest differs from the one in %s: the log was rewritten at or before sequence %d (after sequence %d, the last anchor it agrees with)", a.Source, seq, w.lastMatched)
		}
		w.matched++
		w.lastMatched = seq
	}
	w.prev, w.last = e.ChainDigest, seq
	return 0, ""
}

// finish checks the head row and the anchors beyond the last event.
func (w *walker) finish() (int64, string) {
	switch {
	case w.last != w.head.seq:
		return w.last + 1, fmt.Sprintf("the log head says %d events, but the events table ends at %d", w.head.seq, w.last)
	case w.head.chain != w.prev:
		return max(w.last, 1), fmt.Sprintf("the log head's chain digest differs from that of event %d", w.last)
	}
	var beyond []Anchor
	for seq, as := range w.anchors {
		if seq > w.last {
			beyond = append(beyond, as...)
		}
	}
	if len(beyond) > 0 {
		a := slices.MinFunc(beyond, func(a, b Anchor) int { return cmp.Compare(a.Sequence, b.Sequence) })
		return w.last + 1, fmt.Sprintf("%s vouches for %d events, but the log ends at %d: events were removed and the head moved back", a.Source, a.Sequence, w.last)
	}
	return 0, ""
}
