package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
)

// TestRunKeepsServingWhenTheLogIsForged runs the whole pipeline, then
// plays an attacker with superuser rights on the database:
//
//  1. a signed checkpoint verifies with only the public key;
//  2. a row forged far beyond the head stops the projector with the alarm
//     up (metric, status), while run, its API and its ingest keep going,
//     and audit names the row;
//  3. a consistent rewrite of the newest events (digests and head
//     recomputed, checkpoints table emptied) passes the plain audit but
//     not audit --checkpoints nor checkpoint verify, which read the
//     checkpoints kept outside the database; the signer refuses to sign
//     the rewritten log.
func TestRunKeepsServingWhenTheLogIsForged(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "run.log")
	args := []string{"run", "--database-url", dbURL, "--data-dir", dataDir, "--http-addr", "127.0.0.1:0",
		"--embedded-nats-port", fmt.Sprint(freePort(t)), "--log-format", "json", "--checkpoint-every", "1"}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("run log:\n%s", b)
		}
	})
	proc := binary(t, logFile, args...)
	exited := make(chan error, 1)
	go func() { exited <- proc.Wait() }()
	natsURL := waitFile(t, filepath.Join(dataDir, "nats.url"))
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := producer.New(ctx, producer.Config{NATS: nc, JetStream: js, Producer: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	put := func(name string) {
		t.Helper()
		pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		body := []byte("evidence " + name)
		p, err := client.Put(pctx, producer.Put{CommandID: "forge-" + name, Package: "forge", Path: name, Body: bytes.NewReader(body), Size: int64(len(body))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(pctx); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(ctx, append(args, "--database-url", dbURL, "--nats-url", natsURL, "--log-level", "warn"), &out, &errOut)
		if code != wantCode {
			t.Fatalf("artifactstore %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, out.String(), errOut.String())
		}
		return out.String()
	}
	pub := filepath.Join(dataDir, "checkpoint.pub")

	// 1. A checkpoint of the head, verified with only the public key.
	for _, f := range []string{"a", "b", "c"} {
		put(f)
	}
	// The signer may sign a later head than the one read here (a scrub
	// pass appends verifications): wait for the relay up to the sequence
	// actually signed, or no checkpoint falls among the streamed events.
	note, signed := waitCheckpoint(t, pool, logHead(t, pool))
	cpFile := filepath.Join(t.TempDir(), "checkpoint.txt")
	if err := os.WriteFile(cpFile, []byte(note), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := cli(0, "checkpoint", "verify", "--checkpoint-public-key", pub, cpFile); !strings.Contains(out, "the log agrees with all 1 checkpoints") {
		t.Fatalf("checkpoint verify:\n%s", out)
	}
	waitRelay(t, pool, signed)
	if out := cli(0, "checkpoint", "verify", "--checkpoint-public-key", pub, "--events-stream"); !strings.Contains(out, "events stream intact: events 1..") {
		t.Fatalf("checkpoint verify --events-stream:\n%s", out)
	}

	// 2. A forged row far beyond the head.
	head := logHead(t, pool)
	payload, sum, err := events.NewCodec().EncodePayload(events.PackageCreatedV1{Name: "forged", RetentionClass: "permanent-record"})
	if err != nil {
		t.Fatal(err)
	}
	superuser(t, pool, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
		subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
		VALUES ($1, gen_random_uuid(), now(), 'package.created', 1, 'package', 'forged', 'mallory', $2, $3, $4)`,
		head+1000, payload, sum[:], make([]byte, 32))
	put("d")
	addr := httpAddr(t, logFile)
	metrics := waitMetric(t, addr, `artifactstore_projector_stopped{reason="beyond_head"} 1`)
	if !strings.Contains(metrics, "artifactstore_checkpoint_last_sequence") {
		t.Fatalf("/metrics lacks the signer's gauges:\n%s", metrics)
	}
	put("e") // ingest goes on
	if body := httpGet(t, addr, "/v1/packages/forge"); !strings.Contains(body, `"c"`) {
		t.Fatalf("the API does not answer with the projected package:\n%s", body)
	}
	select {
	case err := <-exited:
		t.Fatalf("run exited (%v) when the projector stopped", err)
	default:
	}
	if out := cli(3, "status"); !strings.Contains(out, "projector STOPPED") || !strings.Contains(out, "beyond_head") {
		t.Fatalf("status:\n%s", out)
	}
	if out := cli(3, "audit"); !strings.Contains(out, fmt.Sprintf("first bad event at sequence %d", head+1000)) {
		t.Fatalf("audit:\n%s", out)
	}

	// 3. The forger removes the row, then rewrites the newest events
	// consistently and empties the checkpoints table.
	superuser(t, pool, `DELETE FROM events WHERE sequence = $1`, head+1000)
	waitCheckpoint(t, pool, logHead(t, pool)) // the events about to be rewritten are signed
	rewriteNewest(t, pool, 3)
	superuser(t, pool, `DELETE FROM event_checkpoints`)
	if out := cli(0, "audit"); !strings.Contains(out, "log intact") {
		t.Fatalf("plain audit after a consistent rewrite:\n%s", out)
	}
	out := cli(3, "audit", "--checkpoints", "--checkpoint-public-key", pub)
	if !strings.Contains(out, "log ALTERED") || !strings.Contains(out, "the checkpoint signed at") {
		t.Fatalf("audit --checkpoints:\n%s", out)
	}
	if out := cli(3, "checkpoint", "verify", "--checkpoint-public-key", pub); !strings.Contains(out, "log ALTERED") {
		t.Fatalf("checkpoint verify from the stream:\n%s", out)
	}
	put("f")
	waitMetric(t, addr, "artifactstore_checkpoint_log_broken 1")

	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("run exited with %v after SIGTERM, want 0", err)
	}
}

func logHead(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var head int64
	if err := pool.QueryRow(context.Background(), `SELECT last_sequence FROM event_log_head`).Scan(&head); err != nil {
		t.Fatal(err)
	}
	return head
}

// superuser runs stmt with the triggers off, as a database superuser can.
func superuser(t *testing.T, pool *pgxpool.Pool, stmt string, args ...any) {
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
	if _, err := conn.Exec(ctx, stmt, args...); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// rewriteNewest changes the actor of the n newest events and recomputes
// every chain digest after the change and the head.
func rewriteNewest(t *testing.T, pool *pgxpool.Pool, n int64) {
	t.Helper()
	log := events.NewLog(pool, events.NewCodec())
	head := logHead(t, pool)
	evs, err := log.Read(context.Background(), head-n-1, int(n)+1)
	if err != nil || int64(len(evs)) != n+1 {
		t.Fatalf("read the newest events: %d, %v", len(evs), err)
	}
	prev := evs[0].ChainDigest
	for _, e := range evs[1:] {
		e.Actor = "mallory"
		e.ChainDigest = events.ChainDigestV2(prev, e)
		prev = e.ChainDigest
		superuser(t, pool, `UPDATE events SET actor = $2, chain_digest = $3 WHERE sequence = $1`, e.Sequence, e.Actor, e.ChainDigest[:])
	}
	superuser(t, pool, `UPDATE event_log_head SET last_chain_digest = $1`, prev[:])
}

// waitCheckpoint waits (hang at most: only a hung signer takes that long)
// for a checkpoint at seq or later in the table and returns its note
// and the sequence it signs.
func waitCheckpoint(t *testing.T, pool *pgxpool.Pool, seq int64) (note string, signed int64) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for time.Now().Before(deadline) {
		err := pool.QueryRow(context.Background(), `SELECT note, sequence FROM event_checkpoints WHERE sequence >= $1 ORDER BY sequence LIMIT 1`, seq).Scan(&note, &signed)
		if err == nil {
			return note, signed
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no checkpoint at sequence %d or later within %s", seq, hang)
	return "", 0
}

// waitRelay waits (hang at most) until the relay has published seq.
func waitRelay(t *testing.T, pool *pgxpool.Pool, seq int64) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for time.Now().Before(deadline) {
		var cp int64
		err := pool.QueryRow(context.Background(), `SELECT sequence FROM relay_checkpoints WHERE relay = 'events'`).Scan(&cp)
		if err == nil && cp >= seq {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the relay did not publish sequence %d within %s", seq, hang)
}

func httpAddr(t *testing.T, logFile string) string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("run did not log its HTTP address:\n%s", b)
	}
	return string(m[1])
}

func httpGet(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return string(body)
}

// waitMetric waits (60 s at most) until /metrics has a line, and returns
// the page.
func waitMetric(t *testing.T, addr, line string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var page string
	for time.Now().Before(deadline) {
		page = httpGet(t, addr, "/metrics")
		for _, l := range strings.Split(page, "\n") {
			if l == line {
				return page
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("/metrics has no line %q within 60s:\n%s", line, page)
	return ""
}
