package status

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/storage"
)

// TestStatusTellsTheTruth: a failed dead letter, an abandoned staged
// upload and a nearly full backend each make the pipeline need attention;
// a refused command is only a note; the leader of a role is named by its
// application_name.
func TestStatusTellsTheTruth(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, dbURL := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	free := uint64(50 << 30)
	src := Sources{
		Pool: pool, JS: js, CommandsStream: top.CommandsStream, Consumers: []string{top.IngestConsumer},
		DeadLetters: top.DeadLetterStream, DeadLetterPrefix: top.DeadLetterSubjectPrefix(), DeadLetterWindow: 24 * time.Hour,
		Topology: top, StagedMaxAge: time.Hour, Projector: "projector", Relay: "events", ScrubInterval: time.Hour,
		Backends: func(context.Context) map[string]storage.Health {
			return map[string]storage.Health{"local": {Healthy: true, FreeBytes: free, UsedBytes: 50 << 30}}
		},
		MinFreeBytes: 2 << 30, MinFreePercent: 5,
		LeaderLocks: []LeaderLock{{Role: "reaper", Key: leader.KeyReaper}},
	}
	r, err := Gather(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Healthy {
		t.Fatalf("an idle pipeline needs attention: %v", r.Problems)
	}

	// A refused command: a note. A failed one: a problem, with its cause.
	dead := func(kind, code, reason string) {
		m := nats.NewMsg(top.DeadLetterSubjectPrefix() + "." + top.IngestConsumer + "." + kind)
		m.Header.Set(bus.HeaderDeadCode, code)
		m.Header.Set(bus.HeaderDeadReason, reason)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	dead(bus.DeadLetterRefused, "digest_mismatch", "claimed blake3:… but the bytes are …")
	if r, err = Gather(ctx, src); err != nil || !r.Healthy || len(r.RecentDeadLetters) != 1 || r.RecentDeadLetters[0].Refused != 1 {
		t.Fatalf("after a refusal: healthy=%v %v %+v %v", r.Healthy, r.Problems, r.RecentDeadLetters, err)
	}
	dead(bus.DeadLetterFailed, "unavailable", "postgres unavailable: connection refused; gave up after 10 attempts")
	if r, err = Gather(ctx, src); err != nil || r.Healthy || len(r.Problems) != 1 ||
		!strings.Contains(r.Problems[0], "1 ingest commands failed") || !strings.Contains(r.Problems[0], "postgres unavailable") {
		t.Fatalf("after a failure: healthy=%v %v %v", r.Healthy, r.Problems, err)
	}
	src.DeadLetterWindow = 0 // the failure is past the window from here on

	// A put killed while staging, seen two hours later.
	for _, n := range []int{128 << 10, 4096} {
		if _, err := js.Publish(ctx, "$O."+top.StagingBucket+".C.killed", make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	src.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if r, err = Gather(ctx, src); err != nil || r.Healthy || r.AbandonedStaged.Uploads != 1 || r.AbandonedStaged.Bytes != 128<<10+4096 ||
		!strings.Contains(strings.Join(r.Problems, "\n"), "1 staged uploads (132.0 KiB) abandoned") {
		t.Fatalf("after a killed put: healthy=%v %+v %v %v", r.Healthy, r.AbandonedStaged, r.Problems, err)
	}
	src.Now = nil

	// A backend nearly full.
	free = 1 << 30
	if r, err = Gather(ctx, src); err != nil || r.Healthy || !strings.Contains(strings.Join(r.Problems, "\n"), "storage backend local has 1.0 GiB free") {
		t.Fatalf("nearly full: healthy=%v %v %v", r.Healthy, r.Problems, err)
	}

	// The reaper's leader, as PostgreSQL shows it.
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "artifactstore/reap/host-a:4242"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, leader.KeyReaper); err != nil {
		t.Fatal(err)
	}
	if r, err = Gather(ctx, src); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range r.Leaders {
		got[l.Role] = l.Holder
	}
	if got["reaper"] != "artifactstore/reap/host-a:4242" || got["projector"] != "" {
		t.Fatalf("leaders %+v", r.Leaders)
	}
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NEEDS ATTENTION", "LEADERS", "artifactstore/reap/host-a:4242", "projector", "(nobody)", "STORAGE", "abandoned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rendered status lacks %q:\n%s", want, out.String())
		}
	}
}
