package projector_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/projector"
)

// TestForgedRowBeyondTheHeadStopsWithAlarm: a row inserted far beyond the
// head with the triggers off stops the projector after the events before
// it, with the reason recorded in its checkpoint row; the next applied
// batch clears it.
func TestForgedRowBeyondTheHeadStopsWithAlarm(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, _ := pgtest.NewDB(t)
	codec := events.NewCodec()
	log := events.NewLog(pool, codec)
	draft := func(name string) events.Draft {
		return events.Draft{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test",
			Payload: events.PackageCreatedV1{Name: name, RetentionClass: "transient"}}
	}
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{draft("a"), draft("b"), draft("c")}}); err != nil {
		t.Fatal(err)
	}
	payload, sum, err := codec.EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "permanent-record"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
		subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
		VALUES (1000, gen_random_uuid(), now(), 'package.created', 1, 'package', 'forged', 'mallory', $1, $2, $3)`,
		payload, sum[:], make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `RESET session_replication_role`); err != nil {
		t.Fatal(err)
	}
	conn.Release()

	p := projector.New(pool, log, codec, projector.Config{ElectInterval: 10 * time.Millisecond})
	err = p.Run(ctx)
	if !errors.Is(err, events.ErrBeyondHead) || projector.StopReason(err) != "beyond_head" {
		t.Fatalf("Run = %v, want a stop on the row beyond the head", err)
	}
	var (
		cp             int64
		reason, detail *string
	)
	if err := pool.QueryRow(ctx, `SELECT sequence, stop_reason, stop_message FROM projector_checkpoints WHERE projector = $1`,
		projector.DefaultName).Scan(&cp, &reason, &detail); err != nil {
		t.Fatal(err)
	}
	if cp != 3 || reason == nil || *reason != "beyond_head" || detail == nil || !strings.Contains(*detail, "event 1000") {
		t.Fatalf("checkpoint row = %d, %v, %v; want 3, beyond_head, naming event 1000", cp, reason, detail)
	}

	// Once the row is gone (restored from a backup), the next batch clears the alarm.
	if _, err := pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER events_append_only;
		DELETE FROM events WHERE sequence = 1000;
		ALTER TABLE events ENABLE TRIGGER events_append_only`); err != nil {
		t.Fatal(err)
	}
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{draft("d")}}); err != nil {
		t.Fatal(err)
	}
	if n, err := p.CatchUp(ctx); err != nil || n != 1 {
		t.Fatalf("CatchUp = %d, %v; want 1", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT stop_reason FROM projector_checkpoints WHERE projector = $1`, projector.DefaultName).Scan(&reason); err != nil || reason != nil {
		t.Fatalf("stop_reason after a good batch = %v, %v; want NULL", reason, err)
	}
}

// TestForgedRowAtTheHeadStops: a row inserted at head+1 passes the
// database's trigger (it cannot compute BLAKE3) but not the projector,
// which checks each chain link before it applies an event.
func TestForgedRowAtTheHeadStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, _ := pgtest.NewDB(t)
	codec := events.NewCodec()
	log := events.NewLog(pool, codec)
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: "a", Actor: "test",
		Payload: events.PackageCreatedV1{Name: "a", RetentionClass: "transient"}}}}); err != nil {
		t.Fatal(err)
	}
	p := projector.New(pool, log, codec, projector.Config{})
	if n, err := p.CatchUp(ctx); err != nil || n != 1 {
		t.Fatalf("CatchUp = %d, %v", n, err)
	}
	payload, sum, err := codec.EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "permanent-record"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
		subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
		VALUES (2, gen_random_uuid(), now(), 'package.created', 1, 'package', 'forged', 'mallory', $1, $2, $3)`,
		payload, sum[:], make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	_, err = p.CatchUp(ctx)
	if !errors.Is(err, projector.ErrLogAltered) || !errors.Is(err, events.ErrChainBroken) || !strings.Contains(err.Error(), "sequence 2") {
		t.Fatalf("CatchUp over a forged row = %v, want ErrLogAltered, ErrChainBroken at sequence 2", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM artifact_packages WHERE name = 'forged'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("forged package projected: %d rows (%v)", n, err)
	}
}
