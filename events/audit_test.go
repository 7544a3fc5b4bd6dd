package events_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/events"
)

// fillLog appends n events, 10 per command, and returns the log.
func fillLog(t *testing.T, n int) (*events.Log, *pgxpool.Pool) {
	t.Helper()
	ctx := testCtx(t)
	log, pool := newLog(t)
	var batches []events.Batch
	for i := 0; i < n; i += 10 {
		b := events.Batch{CommandID: fmt.Sprintf("c%d", i)}
		for j := i; j < min(i+10, n); j++ {
			b.Events = append(b.Events, pkgCreated(fmt.Sprintf("p%d", j)))
		}
		batches = append(batches, b)
	}
	if _, err := log.Append(ctx, batches...); err != nil {
		t.Fatal(err)
	}
	return log, pool
}

// tamper runs stmt on events with the append-only trigger bypassed, as an
// attacker with superuser rights could.
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
		t.Fatal(err)
	}
	if tag.RowsAffected() == 0 {
		t.Fatalf("%s changed no row", stmt)
	}
}

func TestAuditPassesAnIntactLog(t *testing.T) {
	t.Parallel()
	log, _ := fillLog(t, 4500)
	var calls []int64
	rep, err := log.Audit(testCtx(t), func(seq int64) { calls = append(calls, seq) })
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Events != 4500 {
		t.Fatalf("Audit = %+v, want OK over 4500 events", rep)
	}
	if len(calls) < 3 || calls[len(calls)-1] != 4500 {
		t.Fatalf("progress calls = %v, want several ending at 4500", calls)
	}
}

func TestAuditFindsAlteredPayload(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	// Flip one bit of one payload byte of event 37.
	tamper(t, pool, `UPDATE events SET payload = set_byte(payload, 5, get_byte(payload, 5) # 1) WHERE sequence = 37`)
	rep, err := log.Audit(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstBad != 37 || !strings.Contains(rep.Reason, "payload") || rep.Events != 37 {
		t.Fatalf("Audit = %+v, want first bad 37 because of its payload", rep)
	}
}

func TestAuditFindsAlteredChainDigest(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	tamper(t, pool, `UPDATE events SET chain_digest = set_byte(chain_digest, 0, get_byte(chain_digest, 0) # 255) WHERE sequence = 12`)
	rep, err := log.Audit(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstBad != 12 || !strings.Contains(rep.Reason, "chain digest") {
		t.Fatalf("Audit = %+v, want first bad 12 because of its chain digest", rep)
	}
}

func TestAuditFindsRewrittenEvent(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	// A consistent rewrite of payload and payload digest still breaks the chain.
	codec := events.NewCodec()
	b, d, err := codec.EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "transient"})
	if err != nil {
		t.Fatal(err)
	}
	tamper(t, pool, `UPDATE events SET payload = $1, payload_digest = $2 WHERE sequence = 20`, b, d[:])
	rep, err := log.Audit(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstBad != 20 || !strings.Contains(rep.Reason, "chain digest") {
		t.Fatalf("Audit = %+v, want first bad 20 because of its chain digest", rep)
	}
}

func TestAuditFindsMissingAndTruncatedEvents(t *testing.T) {
	t.Parallel()
	log, pool := fillLog(t, 50)
	tamper(t, pool, `DELETE FROM events WHERE sequence = 30`)
	rep, err := log.Audit(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstBad != 30 || !strings.Contains(rep.Reason, "missing") {
		t.Fatalf("Audit after deleting 30 = %+v, want first bad 30, missing", rep)
	}

	log2, pool2 := fillLog(t, 50)
	tamper(t, pool2, `DELETE FROM events WHERE sequence > 45`)
	rep, err = log2.Audit(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstBad != 46 || !strings.Contains(rep.Reason, "ends at 45") {
		t.Fatalf("Audit after truncating the tail = %+v, want first bad 46", rep)
	}
}

func TestChainDigestCoversEveryInput(t *testing.T) {
	t.Parallel()
	var prev, pd [32]byte
	base := events.ChainDigest(prev, 1, "a", pd)
	prev2 := prev
	prev2[31] = 1
	pd2 := pd
	pd2[0] = 1
	for name, d := range map[string][32]byte{
		"prev":    events.ChainDigest(prev2, 1, "a", pd),
		"seq":     events.ChainDigest(prev, 2, "a", pd),
		"type":    events.ChainDigest(prev, 1, "b", pd),
		"payload": events.ChainDigest(prev, 1, "a", pd2),
	} {
		if d == base {
			t.Errorf("changing %s does not change the chain digest", name)
		}
	}
}
