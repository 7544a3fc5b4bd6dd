package events_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/dbmigrate"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/migrations"
)

// fillLog appends n events, 10 per command, and returns the log.
func fillLog(t *testing.T, n int) (*events.Log, *pgxpool.Pool) {
	t.Helper()
	log, pool := newLog(t)
	appendN(t, log, 0, n)
	return log, pool
}

// appendN appends n events named from first on, 10 per command.
func appendN(t *testing.T, log *events.Log, first, n int) {
	t.Helper()
	var batches []events.Batch
	for i := first; i < first+n; i += 10 {
		b := events.Batch{CommandID: fmt.Sprintf("c%d", i)}
		for j := i; j < min(i+10, first+n); j++ {
			b.Events = append(b.Events, pkgCreated(fmt.Sprintf("p%d", j)))
		}
		batches = append(batches, b)
	}
	if _, err := log.Append(testCtx(t), batches...); err != nil {
		t.Fatal(err)
	}
}

// tamper runs stmts on one connection with every trigger switched off, as
// a superuser can (session_replication_role = replica).
func tamper(t *testing.T, pool *pgxpool.Pool, stmt string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, `RESET session_replication_role`) }()
	tag, err := conn.Exec(ctx, stmt, args...)
	if err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	if tag.RowsAffected() == 0 {
		t.Fatalf("%s changed no row", stmt)
	}
}

func audit(t *testing.T, log *events.Log, anchors ...events.Anchor) events.AuditReport {
	t.Helper()
	rep, err := log.Audit(testCtx(t), events.AuditOptions{Anchors: anchors})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func wantBad(t *testing.T, rep events.AuditReport, seq int64, reason string) {
	t.Helper()
	if rep.OK() || rep.FirstBad != seq || !strings.Contains(rep.Reason, reason) {
		t.Fatalf("Audit = %+v, want first bad %d with a reason containing %q", rep, seq, reason)
	}
}

// anchorAt is the chain head at seq as the log holds it now.
func anchorAt(t *testing.T, log *events.Log, seq int64) events.Anchor {
	t.Helper()
	evs, err := log.Read(testCtx(t), seq-1, 1)
	if err != nil || len(evs) != 1 {
		t.Fatalf("read event %d: %v", seq, err)
	}
	return events.Anchor{Sequence: seq, Chain: evs[0].ChainDigest, Source: fmt.Sprintf("test checkpoint %d", seq)}
}

func TestAuditPassesAnIntactLog(t *testing.T) {
	t.Parallel()
	log, _ := fillLog(t, 4500)
	var calls []int64
	rep, err := log.Audit(testCtx(t), events.AuditOptions{
		Progress: func(seq int64) { calls = append(calls, seq) },
		Anchors:  []events.Anchor{anchorAt(t, log, 1), anchorAt(t, log, 2500), anchorAt(t, log, 4500)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Events != 4500 || rep.Head != 4500 || rep.AnchorsMatched != 3 || rep.V1Events != 0 {
		t.Fatalf("Audit = %+v, want OK over 4500 events, 3 anchors matched", rep)
	}
	if len(calls) < 3 || calls[len(calls)-1] != 4500 {
		t.Fatalf("progress calls = %v, want several ending at 4500", calls)
	}
}

// TestAuditFindsEachAlteredColumn changes one column of event 37 at a time,
// behind the triggers' back: every change is caught at 37.
func TestAuditFindsEachAlteredColumn(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	forged, forgedDigest, err := codec.EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "transient"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		column, set string
		args        []any
		reason      string
	}{
		{"sequence", `sequence = 1037`, nil, "missing"},
		{"event_id", `event_id = $1`, []any{uuid.New()}, "chain digest"},
		{"occurred_at", `occurred_at = occurred_at - interval '1 microsecond'`, nil, "chain digest"},
		{"event_type", `event_type = 'package.sealed'`, nil, "chain digest"},
		{"payload_version", `payload_version = 2`, nil, "chain digest"},
		{"subject_kind", `subject_kind = 'object'`, nil, "chain digest"},
		{"subject_id", `subject_id = 'p99'`, nil, "chain digest"},
		{"actor", `actor = 'mallory'`, nil, "chain digest"},
		{"command_id", `command_id = 'c0'`, nil, "chain digest"},
		{"command_id NULL", `command_id = NULL`, nil, "chain digest"},
		{"payload", `payload = set_byte(payload, 5, get_byte(payload, 5) # 1)`, nil, "payload digest"},
		{"payload and its digest", `payload = $1, payload_digest = $2`, []any{forged, forgedDigest[:]}, "chain digest"},
		{"payload_digest", `payload_digest = set_byte(payload_digest, 0, get_byte(payload_digest, 0) # 1)`, nil, "payload digest"},
		{"chain_digest", `chain_digest = set_byte(chain_digest, 0, get_byte(chain_digest, 0) # 255)`, nil, "chain digest"},
		{"chain_version", `chain_version = 1`, nil, "chain version"},
	} {
		t.Run(tc.column, func(t *testing.T) {
			t.Parallel()
			log, pool := fillLog(t, 50)
			tamper(t, pool, `UPDATE events SET `+tc.set+` WHERE sequence = 37`, tc.args...)
			wantBad(t, audit(t, log), 37, tc.reason)
		})
	}
}

func TestAuditFindsMissingAndTruncatedEvents(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	tamper(t, pool, `DELETE FROM events WHERE sequence = 30`)
	wantBad(t, audit(t, log), 30, "missing")

	log2, pool2 := fillLog(t, 50)
	tamper(t, pool2, `DELETE FROM events WHERE sequence > 45`)
	wantBad(t, audit(t, log2), 46, "ends at 45")
}

func TestAuditFindsAHeadThatDisagrees(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	tamper(t, pool, `UPDATE event_log_head SET last_chain_digest = set_byte(last_chain_digest, 3, 7)`)
	wantBad(t, audit(t, log), 50, "head's chain digest")
}

func TestAuditRefusesAnUncoveredColumn(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 5)
	if _, err := pool.Exec(testCtx(t), `ALTER TABLE events ADD COLUMN note text`); err != nil {
		t.Fatal(err)
	}
	rep := audit(t, log)
	if rep.OK() || !strings.Contains(rep.Reason, "(note)") {
		t.Fatalf("Audit = %+v, want a failure naming the uncovered column", rep)
	}
}

// forgedRow inserts an event with a correct payload digest and a made-up
// chain digest at seq.
func forgedRow(t *testing.T, pool *pgxpool.Pool, seq int64, disableTriggers bool) error {
	t.Helper()
	payload, sum, err := events.NewCodec().EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "permanent-record"})
	if err != nil {
		t.Fatal(err)
	}
	const stmt = `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
		subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
		VALUES ($1, gen_random_uuid(), now(), 'package.created', 1, 'package', 'forged', 'mallory', $2, $3, $4)`
	if disableTriggers {
		tamper(t, pool, stmt, seq, payload, sum[:], make([]byte, 32))
		return nil
	}
	_, err = pool.Exec(testCtx(t), stmt, seq, payload, sum[:], make([]byte, 32))
	return err
}

func TestForgedInsertBeyondTheHead(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := fillLog(t, 20)

	// With the triggers on, whoever inserts: refused.
	err := forgedRow(t, pool, 1000, false)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23001" || !strings.Contains(pgErr.Message, "do not follow the log head") {
		t.Fatalf("forged insert beyond the head: %v, want a restrict_violation", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_log_head SET last_sequence = 1000`); err == nil || !strings.Contains(err.Error(), "moves only when events are appended") {
		t.Fatalf("moving the head by hand: %v, want a refusal", err)
	}
	if rep := audit(t, log); !rep.OK() {
		t.Fatalf("Audit after refused forgeries = %+v", rep)
	}

	// With the triggers off (a superuser): the audit names the row, and
	// readers stop before it instead of passing it on.
	if err := forgedRow(t, pool, 1000, true); err != nil {
		t.Fatal(err)
	}
	wantBad(t, audit(t, log), 1000, "beyond the log head (20)")
	if evs, err := log.Read(ctx, 15, 100); err != nil || len(evs) != 5 {
		t.Fatalf("Read after 15 = %d events, %v; want the 5 events up to the head", len(evs), err)
	}
	if _, err := log.Read(ctx, 20, 100); !errors.Is(err, events.ErrBeyondHead) || !strings.Contains(err.Error(), "event 1000") {
		t.Fatalf("Read after the head = %v, want ErrBeyondHead naming event 1000", err)
	}
}

// TestForgedInsertAtTheHead: a row inserted at head+1 by hand passes the
// trigger (it cannot compute BLAKE3) but not the audit.
func TestForgedInsertAtTheHead(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 20)
	if err := forgedRow(t, pool, 21, false); err != nil {
		t.Fatal(err)
	}
	if head, err := log.Head(testCtx(t)); err != nil || head != 21 {
		t.Fatalf("Head = %d, %v; want 21 (the trigger moves it)", head, err)
	}
	wantBad(t, audit(t, log), 21, "chain digest")
	appendN(t, log, 100, 3)
	wantBad(t, audit(t, log), 21, "chain digest")
}

// rewriteTail rewrites the actor of events from..head and recomputes every
// chain digest after it and the head, as a careful forger would.
func rewriteTail(t *testing.T, log *events.Log, pool *pgxpool.Pool, from int64) {
	t.Helper()
	ctx := testCtx(t)
	evs, err := log.Read(ctx, from-2, events.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	prev := evs[0].ChainDigest
	for _, e := range evs[1:] {
		e.Actor = "mallory"
		e.ChainDigest = events.ChainDigestV2(prev, e)
		prev = e.ChainDigest
		tamper(t, pool, `UPDATE events SET actor = $2, chain_digest = $3 WHERE sequence = $1`, e.Sequence, e.Actor, e.ChainDigest[:])
	}
	tamper(t, pool, `UPDATE event_log_head SET last_chain_digest = $1`, prev[:])
}

func TestConsistentRewriteIsCaughtByAnAnchor(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 60)
	a40, a50 := anchorAt(t, log, 40), anchorAt(t, log, 50)
	rewriteTail(t, log, pool, 45)
	if rep := audit(t, log); !rep.OK() {
		t.Fatalf("Audit without anchors = %+v; a consistent rewrite is invisible without them", rep)
	}
	rep := audit(t, log, a40, a50)
	wantBad(t, rep, 50, "test checkpoint 50")
	if !strings.Contains(rep.Reason, "after sequence 40") || rep.AnchorsMatched != 1 {
		t.Fatalf("Audit = %+v, want the rewrite placed after 40", rep)
	}
}

func TestRolledBackLogIsCaughtByAnAnchor(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 60)
	a55 := anchorAt(t, log, 55)
	a30 := anchorAt(t, log, 30)
	tamper(t, pool, `DELETE FROM events WHERE sequence > 30`)
	tamper(t, pool, `UPDATE event_log_head SET last_sequence = 30, last_chain_digest = $1`, a30.Chain[:])
	if rep := audit(t, log); !rep.OK() {
		t.Fatalf("Audit without anchors = %+v", rep)
	}
	wantBad(t, audit(t, log, a55), 31, "vouches for 55 events")
}

func TestVerifyExtension(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := fillLog(t, 60)
	a20, a60 := anchorAt(t, log, 20), anchorAt(t, log, 60)
	got, err := log.VerifyExtension(ctx, events.Anchor{}, 20)
	if err != nil || got != a20.Chain {
		t.Fatalf("VerifyExtension(genesis, 20) = %x, %v; want %x", got, err, a20.Chain)
	}
	if got, err = log.VerifyExtension(ctx, a20, 60); err != nil || got != a60.Chain {
		t.Fatalf("VerifyExtension(20, 60) = %x, %v; want %x", got, err, a60.Chain)
	}
	if _, err := log.VerifyExtension(ctx, a20, 61); err == nil {
		t.Fatal("VerifyExtension beyond the head succeeded")
	}
	rewriteTail(t, log, pool, 15)
	if _, err := log.VerifyExtension(ctx, a20, 60); !errors.Is(err, events.ErrChainBroken) || !strings.Contains(err.Error(), "sequence 20") {
		t.Fatalf("VerifyExtension after a rewrite before the anchor = %v, want ErrChainBroken at 20", err)
	}
	log2, pool2 := fillLog(t, 60)
	b20 := anchorAt(t, log2, 20)
	tamper(t, pool2, `UPDATE events SET occurred_at = occurred_at + interval '1 day' WHERE sequence = 33`)
	if _, err := log2.VerifyExtension(ctx, b20, 60); !errors.Is(err, events.ErrChainBroken) || !strings.Contains(err.Error(), "sequence 33") {
		t.Fatalf("VerifyExtension over an altered event = %v, want ErrChainBroken at 33", err)
	}
}

// TestV1RowsBeforeTheMigration builds a log at schema version 7 with v1
// chain digests, migrates, appends: the whole log audits as one chain, v1
// rows are reported as such and still checked by the v1 rule.
func TestV1RowsBeforeTheMigration(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool, dbURL := pgtest.NewEmptyDB(t)
	for v := 1; v <= 7; v++ {
		matches, err := fs.Glob(migrations.FS, fmt.Sprintf("%06d_*.up.sql", v))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range matches {
			sql, err := fs.ReadFile(migrations.FS, m)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, string(sql)); err != nil {
				t.Fatalf("%s: %v", m, err)
			}
		}
	}
	if err := dbmigrate.Force(ctx, dbURL, 7); err != nil {
		t.Fatal(err)
	}
	codec := events.NewCodec()
	var prev [32]byte
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for seq := int64(1); seq <= 12; seq++ {
		payload, sum, err := codec.EncodePayload(events.PackageCreatedV1{Name: fmt.Sprintf("old%d", seq), RetentionClass: "transient"})
		if err != nil {
			t.Fatal(err)
		}
		chain := events.ChainDigestV1(prev, seq, "package.created", sum)
		prev = chain
		if _, err := pool.Exec(ctx, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
			subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
			VALUES ($1, gen_random_uuid(), $2, 'package.created', 1, 'package', $3, 'old', $4, $5, $6)`,
			seq, at, fmt.Sprintf("old%d", seq), payload, sum[:], chain[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE event_log_head SET last_sequence = $1, last_chain_digest = $2`, seq, chain[:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	log := events.NewLog(pool, codec)
	appendN(t, log, 100, 8)
	evs, err := log.Read(ctx, 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].ChainVersion != events.ChainV1 || evs[2].ChainVersion != events.ChainV2 || evs[2].Sequence != 13 {
		t.Fatalf("chain versions around the migration: %d (seq %d), %d (seq %d); want v1 then v2 from 13",
			evs[0].ChainVersion, evs[0].Sequence, evs[2].ChainVersion, evs[2].Sequence)
	}
	rep := audit(t, log, anchorAt(t, log, 20))
	if !rep.OK() || rep.V1Events != 12 || rep.Events != 20 {
		t.Fatalf("Audit = %+v, want OK, 12 v1 events of 20", rep)
	}
	// A v1 row is still checked by the v1 rule...
	tamper(t, pool, `UPDATE events SET event_type = 'package.sealed' WHERE sequence = 5`)
	wantBad(t, audit(t, log), 5, "sequence, type or payload")
	tamper(t, pool, `UPDATE events SET event_type = 'package.created' WHERE sequence = 5`)
	// ...and a v2 row cannot pass for a v1 one.
	tamper(t, pool, `UPDATE events SET chain_version = 1 WHERE sequence = 13`)
	wantBad(t, audit(t, log), 13, "chain version is 1")
}
