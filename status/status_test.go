package status

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

func TestGatherAndRender(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

	log := events.NewLog(pool, events.NewCodec())
	for i := 0; i < 3; i++ {
		if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: "p", Actor: "t", Payload: events.PackageSealedV1{Name: "p"}}}}); err != nil {
			t.Fatal(err)
		}
	}
	zero := make([]byte, 32)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO projector_checkpoints (projector, sequence) VALUES ('projector', 1)`)
	for i, st := range []string{"ok", "ok", "corrupt", "deleted"} {
		var verified any
		if i == 0 {
			verified = now.Add(-time.Hour)
		}
		exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at, last_verified_at)
		      VALUES ($1, 'local', 'blake3', $2, $2, 1024, $3, $4, $5)`, "blake3:"+strings.Repeat(string(rune('a'+i)), 64), zero, st, now, verified)
	}
	exec(`INSERT INTO artifact_packages (name, retention_class, created_at, state) VALUES ('p1', 'transient', $1, 'open'), ('p2', 'permanent-record', $1, 'sealed')`, now)
	exec(`INSERT INTO retention_state (package, retention_class, retain_until) VALUES ('p1', 'transient', $1), ('p2', 'permanent-record', NULL)`, now.Add(7*24*time.Hour))
	// One command waits in the ingest consumer; one was dead-lettered.
	if _, err := bus.PublishCommand(ctx, js, top.Subject(bus.CmdIngest), "cmd-1", []byte("x"), "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, top.DeadLetterSubjectPrefix()+".ingest", []byte("refused")); err != nil {
		t.Fatal(err)
	}

	src := Sources{
		Pool: pool, JS: js, CommandsStream: top.CommandsStream,
		Consumers: []string{top.IngestConsumer, top.VerifyConsumer}, DeadLetters: top.DeadLetterStream,
		Projector: "projector", Relay: "events", ScrubInterval: 7 * 24 * time.Hour, MaxLag: 1000,
		Now: func() time.Time { return now },
	}
	r, err := Gather(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if r.LogHead != 3 || r.ProjectorCheckpt != 1 || r.ProjectorLagEvents != 2 {
		t.Errorf("log head %d, projector %d, lag %d; want 3, 1, 2", r.LogHead, r.ProjectorCheckpt, r.ProjectorLagEvents)
	}
	if r.ObjectsByState["ok"] != 2 || r.ObjectsByState["corrupt"] != 1 || r.BytesStored != 3*1024 {
		t.Errorf("objects %v, bytes %d", r.ObjectsByState, r.BytesStored)
	}
	if r.Consumers[0].Pending != 1 || r.Consumers[1].Pending != 0 {
		t.Errorf("consumers %+v, want 1 pending ingest command", r.Consumers)
	}
	if r.ScrubbedInInterval != 1 || r.NeverVerified != 2 || r.ScrubCoveragePct < 33 || r.ScrubCoveragePct > 34 {
		t.Errorf("scrub: %d in interval, %d never, %.1f%%", r.ScrubbedInInterval, r.NeverVerified, r.ScrubCoveragePct)
	}
	if len(r.NextExpiries) != 1 || r.NextExpiries[0].Package != "p1" {
		t.Errorf("next expiries %+v, want p1 only", r.NextExpiries)
	}
	if r.Healthy || len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "1 corrupt") {
		t.Errorf("healthy=%v problems=%v; want exactly the corrupt object", r.Healthy, r.Problems)
	}
	if r.DeadLetters != 1 {
		t.Errorf("dead letters %d, want one", r.DeadLetters)
	}
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NEEDS ATTENTION", "1 corrupt objects", "p1", "3.0 KiB stored"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rendered status lacks %q:\n%s", want, out.String())
		}
	}

	// Without NATS the report still comes, and says so.
	src.JS, src.NATSErr = nil, context.DeadlineExceeded
	r, err = Gather(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if r.Healthy || r.NATSError == "" {
		t.Errorf("NATS down: healthy=%v natsError=%q", r.Healthy, r.NATSError)
	}
}

func TestCollectorExportsTheReport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	log := events.NewLog(pool, events.NewCodec())
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: "p", Actor: "t", Payload: events.PackageSealedV1{Name: "p"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at)
		VALUES ($1, 'local', 'blake3', $2, $2, 4096, 'ok', now())`, "blake3:"+strings.Repeat("a", 64), make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(Sources{Pool: pool, Projector: "projector", Relay: "events", ScrubInterval: time.Hour}))
	want := `
# HELP artifactstore_projector_lag_events Events committed but not yet projected.
# TYPE artifactstore_projector_lag_events gauge
artifactstore_projector_lag_events 1
# HELP artifactstore_stored_bytes Bytes of object locations not deleted.
# TYPE artifactstore_stored_bytes gauge
artifactstore_stored_bytes 4096
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "artifactstore_projector_lag_events", "artifactstore_stored_bytes"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "artifactstore_consumer_pending_commands"); err != nil || n != 0 {
		t.Fatalf("consumer gauges without NATS: %d, %v; want none", n, err)
	}
}

func TestProjectorStopNeedsAttention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	if _, err := pool.Exec(ctx, `INSERT INTO projector_checkpoints (projector, sequence, stopped_at, stop_reason, stop_message)
		VALUES ('projector', 0, now(), 'beyond_head', 'event 1000, the head is 3')`); err != nil {
		t.Fatal(err)
	}
	src := Sources{Pool: pool, Projector: "projector", Relay: "events", ScrubInterval: time.Hour}
	r, err := Gather(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if r.ProjectorStop == nil || r.ProjectorStop.Reason != "beyond_head" {
		t.Fatalf("ProjectorStop = %+v, want beyond_head", r.ProjectorStop)
	}
	var found bool
	for _, p := range r.Problems {
		found = found || strings.Contains(p, "projector STOPPED") && strings.Contains(p, "event 1000")
	}
	if r.Healthy || !found {
		t.Fatalf("healthy=%v problems=%v; want the projector's stop as a problem", r.Healthy, r.Problems)
	}
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "STOPPED (beyond_head)") {
		t.Fatalf("rendered status lacks the stop:\n%s", out.String())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	want := `
# HELP artifactstore_projector_stopped 1 while the projector is stopped on the event log (reason: log_altered, gap, beyond_head, unknown_event, malformed); run 'artifactstore audit --checkpoints'.
# TYPE artifactstore_projector_stopped gauge
artifactstore_projector_stopped{reason="beyond_head"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "artifactstore_projector_stopped"); err != nil {
		t.Fatal(err)
	}
}

// TestRenderUnknownCapacity shows a backend that reports no capacity (an
// object store) as unknown, not as 0 B free, beside one that does.
func TestRenderUnknownCapacity(t *testing.T) {
	r := Report{Backends: []Backend{
		{ID: "s3", Healthy: true, Detail: "ok"},
		{ID: "local", Healthy: true, FreeBytes: 3 << 30, UsedBytes: 1 << 30, FreePct: 75},
	}}
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	var s3Line, localLine string
	for l := range strings.Lines(out.String()) {
		switch f := strings.Fields(l); {
		case len(f) > 0 && f[0] == "s3":
			s3Line = l
		case len(f) > 0 && f[0] == "local":
			localLine = l
		}
	}
	if strings.Fields(s3Line)[1] != "unknown" || strings.Contains(s3Line, "0 B") {
		t.Errorf("an object store's capacity renders as %q, want unknown", s3Line)
	}
	if !strings.Contains(localLine, "75.0%") {
		t.Errorf("a local backend's capacity renders as %q", localLine)
	}
}
