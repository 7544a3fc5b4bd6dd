package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

// Environment of the helper process that TestRelayCrash runs and kills.
const (
	envHelper = "ARTIFACTSTORE_RELAY_HELPER"
	envDB     = "ARTIFACTSTORE_RELAY_HELPER_DB"
	envNATS   = "ARTIFACTSTORE_RELAY_HELPER_NATS"
	envPrefix = "ARTIFACTSTORE_RELAY_HELPER_PREFIX"
)

func topology(prefix string) bus.Topology {
	t := bus.DefaultTopology().WithPrefix(prefix)
	// A tiny duplicate window: only the relay's own resume logic stands
	// between a crash and a duplicate.
	t.EventsDuplicateWindow = 100 * time.Millisecond
	return t
}

func newRelay(t testing.TB, pool *pgxpool.Pool, js jetstream.JetStream, top bus.Topology, logger zerolog.Logger) *Relay {
	codec := events.NewCodec()
	r, err := New(pool, events.NewLog(pool, codec), codec, js, Config{
		Stream:       top.EventsStream,
		Subject:      func(e events.Type) string { return top.EventsSubject(string(e)) },
		BatchSize:    64,
		PollInterval: 20 * time.Millisecond,
		Logger:       logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestHelperRelayProcess is not a test: it is the relay process that
// TestRelayCrash starts and kills.
func TestHelperRelayProcess(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		return
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(envDB))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(os.Getenv(envNATS))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	r := newRelay(t, pool, js, topology(os.Getenv(envPrefix)), zerolog.Nop())
	_ = r.Run(ctx) // until killed
}

func appendEvents(t *testing.T, ctx context.Context, log *events.Log, n, batch int) {
	t.Helper()
	for i := 0; i < n; i += batch {
		var b []events.Batch
		for j := i; j < min(n, i+batch); j++ {
			b = append(b, events.Batch{Events: []events.Draft{{
				SubjectKind: events.SubjectPackage, SubjectID: fmt.Sprintf("pkg-%d", j), Actor: "test",
				Payload: events.PackageSealedV1{Name: fmt.Sprintf("pkg-%d", j)},
			}}})
		}
		if _, err := log.Append(ctx, b...); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRelayCrash kills the relay process at random points of its progress
// (after a random number of published events, possibly mid-batch: between
// the stream's ack and the checkpoint's commit); afterwards the stream holds
// every event exactly once, in order. The kill points are counts, not
// moments, so every relay publishes something however slow the machine.
func TestRelayCrash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dbURL := pgtest.NewDB(t)
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	prefix := natstest.Prefix(t)
	top := topology(prefix)
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	log := events.NewLog(pool, events.NewCodec())

	const kills, perRound = 6, 250
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	for k := 0; k < kills; k++ {
		before := streamMsgs(t, ctx, js, top.EventsStream)
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelayProcess$")
		cmd.Env = append(os.Environ(), envHelper+"=1", envDB+"="+dbURL, envNATS+"="+ns.URL(), envPrefix+"="+prefix)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		appendEvents(t, ctx, log, perRound, 1+rng.IntN(40))
		// Every event appended so far is published sooner or later, so any
		// target up to their number is reached.
		appended := uint64((k + 1) * perRound)
		target := before + 1 + rng.Uint64N(appended-before)
		deadline := time.Now().Add(2 * time.Minute) // only stops a hung test
		poll := time.NewTicker(2 * time.Millisecond)
		for streamMsgs(t, ctx, js, top.EventsStream) < target {
			<-poll.C
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("relay process %d published fewer than %d events in 2 min", k, target)
			}
		}
		poll.Stop()
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
	}

	// A last relay, in-process, catches up.
	r := newRelay(t, pool, js, top, zerolog.New(zerolog.NewTestWriter(t)))
	head, err := log.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if head != kills*perRound {
		t.Fatalf("log head %d, want %d", head, kills*perRound)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		cp, err := r.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cp == head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay stuck at %d of %d", cp, head)
		}
	}

	// A subscriber reads the whole stream.
	cons, err := js.OrderedConsumer(ctx, top.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var (
		want int64    = 1
		prev [32]byte // every column is in the messages: the chain can be recomputed from them
	)
	for want <= head {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(time.Minute)) // returns as soon as messages are there
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			var msg Message
			if err := json.Unmarshal(m.Data(), &msg); err != nil {
				t.Fatalf("message is not JSON: %v", err)
			}
			if msg.Sequence != want {
				t.Fatalf("stream holds event %d where %d was expected (duplicate or gap)", msg.Sequence, want)
			}
			ev, err := msg.Event()
			if err != nil {
				t.Fatal(err)
			}
			if link, err := events.ChainLink(prev, ev); err != nil || link != ev.ChainDigest || ev.ChainVersion != events.ChainV2 {
				t.Fatalf("event %d: chain recomputed from the message = %x, %v; message says %x (v%d)", want, link, err, ev.ChainDigest, ev.ChainVersion)
			}
			prev = ev.ChainDigest
			if m.Headers().Get(HeaderSequence) != strconv.FormatInt(want, 10) || m.Subject() != top.EventsSubject("package.sealed") {
				t.Fatalf("event %d: headers %v subject %s", want, m.Headers(), m.Subject())
			}
			want++
		}
		if got == 0 {
			t.Fatalf("stream ends after event %d of %d", want-1, head)
		}
	}
	if n := streamMsgs(t, ctx, js, top.EventsStream); n != uint64(head) {
		t.Fatalf("stream holds %d messages, want exactly %d", n, head)
	}
}

func streamMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	si, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return si.State.Msgs
}

// TestResumeAfterLostCheckpoint simulates a crash between the stream's ack
// and the checkpoint's commit: the relay resumes from the stream's last
// sequence and publishes nothing twice. RunOnce's count of published events
// proves it whether or not JetStream's duplicate window (100 ms here) would
// have dropped a republish, so the test waits for no window to pass.
func TestResumeAfterLostCheckpoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := topology(natstest.Prefix(t))
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	log := events.NewLog(pool, events.NewCodec())
	appendEvents(t, ctx, log, 50, 10)
	r := newRelay(t, pool, js, top, zerolog.New(zerolog.NewTestWriter(t)))
	if n, err := r.RunOnce(ctx); err != nil || n != 50 {
		t.Fatalf("RunOnce = %d, %v; want 50 events", n, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE relay_checkpoints SET sequence = 0`); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, ctx, log, 5, 5)
	if n, err := r.RunOnce(ctx); err != nil || n != 5 {
		t.Fatalf("RunOnce after a lost checkpoint = %d, %v; want only the 5 new events", n, err)
	}
	// Lost again, with nothing new to publish: the checkpoint still
	// catches up with the stream (status reports the relay's lag from it).
	if _, err := pool.Exec(ctx, `UPDATE relay_checkpoints SET sequence = 3`); err != nil {
		t.Fatal(err)
	}
	if n, err := r.RunOnce(ctx); err != nil || n != 0 {
		t.Fatalf("idle RunOnce = %d, %v", n, err)
	}
	if n := streamMsgs(t, ctx, js, top.EventsStream); n != 55 {
		t.Fatalf("stream holds %d messages, want 55", n)
	}
	if cp, _ := r.Checkpoint(ctx); cp != 55 {
		t.Fatalf("checkpoint %d, want 55", cp)
	}
}

// TestFailedPublishIsNotSkipped: JetStream refuses one event of a batch
// (too large for the stream, a real refusal of the server) while the events
// after it would fit. The relay must neither skip the refused event nor let
// a later one overtake it: once the stream accepts it, the stream holds
// every event once, in log order.
func TestFailedPublishIsNotSkipped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := topology(natstest.Prefix(t))
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	setMaxMsgSize := func(n int32) {
		t.Helper()
		s, err := js.Stream(ctx, top.EventsStream)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.MaxMsgSize = n
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// An ordinary event's message is well under 4 KiB; event 3's name
	// alone is 16 KiB.
	setMaxMsgSize(4 << 10)
	log := events.NewLog(pool, events.NewCodec())
	for i := 1; i <= 6; i++ {
		name := fmt.Sprintf("pkg-%d", i)
		if i == 3 {
			name += "-" + strings.Repeat("x", 16<<10)
		}
		if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test",
			Payload: events.PackageSealedV1{Name: name}}}}); err != nil {
			t.Fatal(err)
		}
	}
	r := newRelay(t, pool, js, top, zerolog.New(zerolog.NewTestWriter(t)))
	if n, err := r.RunOnce(ctx); err == nil || !strings.Contains(err.Error(), "publish event 3") || n != 2 {
		t.Fatalf("RunOnce with event 3 refused = %d, %v; want 2 published and an error naming event 3", n, err)
	}
	// The refusal lasts: the relay retries event 3, never gets past it.
	if _, err := r.RunOnce(ctx); err == nil || !strings.Contains(err.Error(), "publish event 3") {
		t.Fatalf("second RunOnce while event 3 is refused: %v; want event 3 refused again", err)
	}
	if cp, err := r.Checkpoint(ctx); err != nil || cp != 2 {
		t.Fatalf("checkpoint %d, %v while event 3 is refused; want 2", cp, err)
	}

	setMaxMsgSize(-1)
	for round := 0; ; round++ {
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if cp, err := r.Checkpoint(ctx); err != nil || cp == 6 {
			break
		}
		if round == 3 {
			t.Fatal("the relay did not reach event 6 in 4 rounds after the stream accepted event 3")
		}
	}
	s, err := js.Stream(ctx, top.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("stream message %d: %v", seq, err)
		}
		got = append(got, m.Header.Get(HeaderSequence))
	}
	if want := []string{"1", "2", "3", "4", "5", "6"}; !slices.Equal(got, want) {
		t.Fatalf("the stream holds events %v, want %v", got, want)
	}
}
