package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

// env is one test's NATS server, connection and topology.
type env struct {
	ns  *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	top bus.Topology
	log zerolog.Logger
}

// setup starts a server, creates the topology (after tune adjusted it) and
// removes it at the end of the test.
func setup(t *testing.T, tune func(*bus.Topology)) *env {
	t.Helper()
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if tune != nil {
		tune(&top)
	}
	if err := bus.EnsureTopology(t.Context(), js, top); err != nil {
		t.Fatalf("EnsureTopology: %v", err)
	}
	t.Cleanup(func() {
		if nc.IsClosed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, cfg := range top.StreamConfigs() {
			_ = js.DeleteStream(ctx, cfg.Name)
		}
		_ = js.DeleteObjectStore(ctx, top.StagingBucket)
	})
	return &env{ns: ns, nc: nc, js: js, top: top, log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)}
}

// consumer starts a consumer of the durable on the commands stream and stops
// it at the end of the test.
func (e *env) consumer(t *testing.T, durable string, h bus.Handler, opts bus.ConsumerOptions) *bus.Consumer {
	t.Helper()
	opts.Logger = e.log
	opts.DeadLetterSubjectPrefix = e.top.DeadLetterSubjectPrefix()
	if opts.FetchWait == 0 {
		opts.FetchWait = 500 * time.Millisecond
	}
	c, err := bus.NewConsumer(e.js, e.top.CommandsStream, durable, h, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("Stop at cleanup: %v", err)
		}
	})
	return c
}

func (e *env) publish(t *testing.T, cmd, id string, body []byte) *jetstream.PubAck {
	t.Helper()
	ack, err := bus.PublishCommand(t.Context(), e.js, e.top.Subject(cmd), id, body, "application/json", "")
	if err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	return ack
}

// eventually polls cond every 10 ms until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		<-tick.C
	}
}

func (e *env) streamMsgs(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := e.js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	return info.State.Msgs
}

func (e *env) consumerInfo(t *testing.T, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.js.Consumer(t.Context(), e.top.CommandsStream, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// deadLetter waits for the n-th dead letter and returns it.
func (e *env) deadLetter(t *testing.T, n uint64) *jetstream.RawStreamMsg {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d dead letters", n), func() bool {
		return e.streamMsgs(t, e.top.DeadLetterStream) >= n
	})
	s, err := e.js.Stream(t.Context(), e.top.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(t.Context(), n)
	if err != nil {
		t.Fatalf("dead letter %d: %v", n, err)
	}
	return m
}

func TestEnsureTopologyIsIdempotentAndUpdates(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ctx := t.Context()

	before := e.consumerInfo(t, e.top.IngestConsumer)
	if err := bus.EnsureTopology(ctx, e.js, e.top); err != nil {
		t.Fatalf("second EnsureTopology: %v", err)
	}
	after := e.consumerInfo(t, e.top.IngestConsumer)
	if !after.Created.Equal(before.Created) || after.Config.MaxDeliver != before.Config.MaxDeliver {
		t.Fatalf("second EnsureTopology changed the consumer: %+v -> %+v", before.Config, after.Config)
	}

	s, err := e.js.Stream(ctx, e.top.CommandsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Retention != jetstream.WorkQueuePolicy || cfg.Storage != jetstream.FileStorage ||
		!cfg.DenyDelete || !cfg.DenyPurge || cfg.Duplicates != 2*time.Minute || cfg.MaxMsgSize != 8<<20 {
		t.Fatalf("commands stream config: %+v", cfg)
	}
	if got := after.Config.FilterSubject; got != e.top.Subject("cmd.ingest.>") {
		t.Fatalf("ingest consumer filters %v", got)
	}
	// MaxDeliver 10 attempts plus the spare delivery.
	if after.Config.AckPolicy != jetstream.AckExplicitPolicy || after.Config.AckWait != 30*time.Second || after.Config.MaxDeliver != 11 {
		t.Fatalf("ingest consumer config: %+v", after.Config)
	}
	if err := s.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("deleting a command succeeded on a DenyDelete stream")
	}

	obs, err := e.js.ObjectStore(ctx, e.top.StagingBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := obs.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 24*time.Hour {
		t.Fatalf("staging TTL %s, want 24h", st.TTL())
	}

	changed := e.top
	changed.MaxDeliver = 7
	changed.StagingTTL = time.Hour
	changed.CommandsDuplicateWindow = time.Minute
	if err := bus.EnsureTopology(ctx, e.js, changed); err != nil {
		t.Fatalf("EnsureTopology with changed limits: %v", err)
	}
	if got := e.consumerInfo(t, e.top.VerifyConsumer).Config.MaxDeliver; got != 8 {
		t.Fatalf("MaxDeliver after update %d, want 7 + the spare", got)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Duplicates != time.Minute {
		t.Fatalf("duplicate window after update %s, want 1m", info.Config.Duplicates)
	}
	if st, err = obs.Status(ctx); err != nil || st.TTL() != time.Hour {
		t.Fatalf("staging TTL after update: %v, %v", st.TTL(), err)
	}
}

func TestTopologyValidate(t *testing.T) {
	t.Parallel()
	if err := bus.DefaultTopology().Validate(); err != nil {
		t.Fatalf("default topology invalid: %v", err)
	}
	bad := bus.DefaultTopology()
	bad.StagingTTL = 0
	bad.InlineBlobMax = int(bad.MaxMsgSize)
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "StagingTTL") || !strings.Contains(err.Error(), "InlineBlobMax") {
		t.Fatalf("Validate = %v", err)
	}
	if err := (bus.Topology{}).Validate(); err == nil {
		t.Fatal("zero topology valid")
	}
	top := bus.DefaultTopology()
	if got := bus.InlineLimit(top, 1<<20); got != 1<<20-64<<10 {
		t.Fatalf("InlineLimit at the 1 MiB default max_payload = %d", got)
	}
	if got := bus.InlineLimit(top, bus.EmbeddedMaxPayload); got != 1<<20 {
		t.Fatalf("InlineLimit on the embedded server = %d", got)
	}
}

func TestDuplicateCommandIDIsDropped(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	first := e.publish(t, bus.CmdVerify, "cmd-1", []byte(`{"a":1}`))
	second := e.publish(t, bus.CmdVerify, "cmd-1", []byte(`{"a":1}`))
	if first.Duplicate || !second.Duplicate || second.Sequence != first.Sequence {
		t.Fatalf("acks %+v, %+v: want the second to be a duplicate of the first", first, second)
	}
	e.publish(t, bus.CmdVerify, "cmd-2", nil)
	if n := e.streamMsgs(t, e.top.CommandsStream); n != 2 {
		t.Fatalf("commands stream holds %d messages, want 2", n)
	}
	if _, err := bus.PublishCommand(t.Context(), e.js, e.top.Subject(bus.CmdVerify), "a.b", nil, "", ""); !errors.Is(err, bus.ErrInvalidCommandID) {
		t.Fatalf("command id with a dot: %v", err)
	}
}

func TestLargeInlineCommand(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	limit := bus.InlineLimit(e.top, e.nc.MaxPayload())
	if limit != e.top.InlineBlobMax {
		t.Fatalf("InlineLimit on the test server = %d, want %d", limit, e.top.InlineBlobMax)
	}
	body := make([]byte, 3<<20)
	e.publish(t, bus.CmdIngest, "big", body)
	tooBig := make([]byte, e.top.MaxMsgSize+1)
	if _, err := bus.PublishCommand(t.Context(), e.js, e.top.Subject(bus.CmdIngest), "too-big", tooBig, "", ""); err == nil {
		t.Fatal("a command above MaxMsgSize was accepted")
	}
}

func TestAckOnSuccess(t *testing.T) {
	t.Parallel()
	e := setup(t, func(top *bus.Topology) { top.AckWait = time.Second })
	var calls atomic.Int32
	var got atomic.Value
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		got.Store(m)
		return nil
	}, bus.ConsumerOptions{})
	e.publish(t, bus.CmdIngest, "c1", []byte("hello"))
	// The work queue removes a message only when its ack reached the server.
	eventually(t, 5*time.Second, "acked command removed from the stream", func() bool {
		return calls.Load() > 0 && e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	m := got.Load().(bus.Message)
	if m.CommandID != "c1" || string(m.Data) != "hello" || m.NumDelivered != 1 || m.ContentType != "application/json" || m.StreamSequence != 1 {
		t.Fatalf("message %+v", m)
	}
	if info := e.consumerInfo(t, e.top.IngestConsumer); info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("consumer after ack: pending %d, redelivered %d", info.NumAckPending, info.NumRedelivered)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times", n)
	}
}

func TestRetryRedeliversAfterDelay(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	const delay = 400 * time.Millisecond
	var mu sync.Mutex
	var at []time.Time
	done := make(chan bus.Message, 1)
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		if m.NumDelivered == 1 {
			return bus.Retry(errors.New("database down"), delay)
		}
		done <- m
		return nil
	}, bus.ConsumerOptions{})
	e.publish(t, bus.CmdVerify, "r1", nil)
	select {
	case m := <-done:
		if m.NumDelivered != 2 {
			t.Fatalf("second handling saw delivery %d", m.NumDelivered)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("retried command was not redelivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if gap := at[1].Sub(at[0]); gap < delay {
		t.Fatalf("redelivered after %s, before the %s delay", gap, delay)
	}
}

func TestRejectDeadLettersWithoutRedelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	var calls atomic.Int32
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return fmt.Errorf("decode: %w", bus.Reject(errors.New("bad cbor at byte 3"), "undecodable"))
	}, bus.ConsumerOptions{Backoff: func(uint64) time.Duration { return 10 * time.Millisecond }})
	ack := e.publish(t, bus.CmdIngest, "poison-1", []byte{0xff, 0x00})

	dl := e.deadLetter(t, 1)
	want := map[string]string{
		bus.HeaderDeadSubject:      e.top.Subject(bus.CmdIngest),
		bus.HeaderDeadStream:       e.top.CommandsStream,
		bus.HeaderDeadSequence:     strconv.FormatUint(ack.Sequence, 10),
		bus.HeaderDeadConsumer:     e.top.IngestConsumer,
		bus.HeaderDeadDeliveries:   "1",
		bus.HeaderDeadCode:         "undecodable",
		bus.HeaderDeadKind:         bus.DeadLetterRefused,
		bus.HeaderContentType:      "application/json",
		"Artifactstore-Command-Id": "poison-1",
	}
	for k, v := range want {
		if got := dl.Header.Get(k); got != v {
			t.Errorf("dead letter header %s = %q, want %q", k, got, v)
		}
	}
	if r := dl.Header.Get(bus.HeaderDeadReason); !strings.Contains(r, "bad cbor at byte 3") {
		t.Errorf("dead letter reason %q", r)
	}
	if dl.Subject != e.top.DeadLetterSubjectPrefix()+"."+e.top.IngestConsumer+".refused" || string(dl.Data) != "\xff\x00" {
		t.Errorf("dead letter subject %s data %x", dl.Subject, dl.Data)
	}
	// Terminated: gone from the work queue, never handled again.
	eventually(t, 5*time.Second, "terminated command removed", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	if info := e.consumerInfo(t, e.top.IngestConsumer); info.NumAckPending != 0 {
		t.Fatalf("ack pending %d after term", info.NumAckPending)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("rejected command handled %d times", n)
	}
}

func TestPanicIsRecoveredAndLoopContinues(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	handled := make(chan string, 4)
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		if m.CommandID == "boom" && m.NumDelivered == 1 {
			panic("nil map somewhere")
		}
		handled <- fmt.Sprintf("%s#%d", m.CommandID, m.NumDelivered)
		return nil
	}, bus.ConsumerOptions{Concurrency: 1, Backoff: func(uint64) time.Duration { return 50 * time.Millisecond }})
	e.publish(t, bus.CmdIngest, "boom", nil)
	e.publish(t, bus.CmdIngest, "next", nil)
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case s := <-handled:
			got[s] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("after a panic, handled only %v", got)
		}
	}
	if !got["next#1"] || !got["boom#2"] {
		t.Fatalf("handled %v, want next#1 and boom#2 (the panicked command nak'd and redelivered)", got)
	}
}

func TestPlainErrorDeadLetteredAfterMaxDeliver(t *testing.T) {
	t.Parallel()
	e := setup(t, func(top *bus.Topology) { top.MaxDeliver = 3 })
	var calls atomic.Int32
	e.consumer(t, e.top.RetentionConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return errors.New("backend flaky")
	}, bus.ConsumerOptions{Backoff: func(uint64) time.Duration { return 20 * time.Millisecond }})
	e.publish(t, bus.CmdRetention, "flaky", []byte("x"))
	dl := e.deadLetter(t, 1)
	if dl.Header.Get(bus.HeaderDeadDeliveries) != "3" || dl.Header.Get(bus.HeaderDeadCode) != bus.CodeInternal ||
		dl.Subject != e.top.DeadLetterSubjectPrefix()+"."+e.top.RetentionConsumer+".failed" ||
		!strings.Contains(dl.Header.Get(bus.HeaderDeadReason), "backend flaky") {
		t.Fatalf("dead letter headers %v", dl.Header)
	}
	eventually(t, 5*time.Second, "terminated command removed", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want MaxDeliver=3", n)
	}
}

func TestSlowHandlerKeptAliveByInProgress(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	e := setup(t, func(top *bus.Topology) { top.AckWait = ackWait })
	var calls atomic.Int32
	finished := make(chan struct{})
	// Concurrency 2 keeps a pull request open while the handler works, so
	// a redelivery would reach this consumer.
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		if calls.Add(1) > 1 {
			return nil
		}
		defer close(finished)
		select {
		case <-time.After(3 * ackWait): // a long ingest
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, bus.ConsumerOptions{Concurrency: 2})
	e.publish(t, bus.CmdIngest, "slow", nil)
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("slow handler never finished")
	}
	eventually(t, 5*time.Second, "acked command removed", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	if n := calls.Load(); n != 1 {
		t.Fatalf("a handler slower than AckWait was called %d times: the command was redelivered", n)
	}
	if info := e.consumerInfo(t, e.top.IngestConsumer); info.NumRedelivered != 0 {
		t.Fatalf("redelivered %d", info.NumRedelivered)
	}
}

func TestTwoConsumersSplitWork(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	const n = 60
	var mu sync.Mutex
	seen := map[string]int{}
	by := [2]int{}
	all := make(chan struct{})
	h := func(who int) bus.Handler {
		return func(ctx context.Context, m bus.Message) error {
			select {
			case <-time.After(5 * time.Millisecond): // some work, so that both get a share
			case <-ctx.Done():
				return ctx.Err()
			}
			mu.Lock()
			defer mu.Unlock()
			seen[m.CommandID]++
			by[who]++
			if len(seen) == n {
				close(all)
			}
			return nil
		}
	}
	e.consumer(t, e.top.IngestConsumer, h(0), bus.ConsumerOptions{Concurrency: 2})
	e.consumer(t, e.top.IngestConsumer, h(1), bus.ConsumerOptions{Concurrency: 2})
	for i := range n {
		e.publish(t, bus.CmdIngest, fmt.Sprintf("w%d", i), nil)
	}
	select {
	case <-all:
	case <-time.After(15 * time.Second):
		t.Fatalf("handled %d of %d", len(seen), n)
	}
	eventually(t, 5*time.Second, "all acked", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	mu.Lock()
	defer mu.Unlock()
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s handled %d times", id, c)
		}
	}
	t.Logf("split: %v", by)
	if by[0] == 0 || by[1] == 0 {
		t.Fatalf("one consumer did all the work: %v", by)
	}
}

func TestStopDrainsInFlight(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	var cancelled atomic.Int32
	c := e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		started <- struct{}{}
		<-release
		if ctx.Err() != nil {
			cancelled.Add(1)
		}
		return nil
	}, bus.ConsumerOptions{Concurrency: 2})
	e.publish(t, bus.CmdIngest, "d1", nil)
	e.publish(t, bus.CmdIngest, "d2", nil)
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("handlers did not start")
		}
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- c.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while handlers were still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return after handlers finished")
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if n := cancelled.Load(); n != 0 {
		t.Fatalf("%d handlers saw a cancelled context during a soft stop", n)
	}
	// Both were acked before Stop returned.
	if n := e.streamMsgs(t, e.top.CommandsStream); n != 0 {
		t.Fatalf("%d commands left after a drained stop", n)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := c.Start(t.Context()); !errors.Is(err, bus.ErrConsumerStarted) {
		t.Fatalf("Start after Stop: %v", err)
	}
}

func TestStopDeadlineNaksBlockedHandler(t *testing.T) {
	t.Parallel()
	e := setup(t, nil) // AckWait 30 s: a redelivery within seconds proves the nak
	started := make(chan struct{}, 1)
	c := e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}, bus.ConsumerOptions{Concurrency: 1})
	e.publish(t, bus.CmdIngest, "stuck", nil)
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not start")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := c.Stop(ctx); !errors.Is(err, bus.ErrStopDeadline) {
		t.Fatalf("Stop past its deadline = %v, want ErrStopDeadline", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("Stop took %s with a 200ms deadline", d)
	}

	redelivered := make(chan bus.Message, 1)
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		redelivered <- m
		return nil
	}, bus.ConsumerOptions{})
	select {
	case m := <-redelivered:
		if m.CommandID != "stuck" || m.NumDelivered != 2 {
			t.Fatalf("redelivered %s delivery %d", m.CommandID, m.NumDelivered)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled handler's command was not redelivered to a new consumer")
	}
	if n := e.consumerInfo(t, e.top.IngestConsumer).Config.AckWait; n != 30*time.Second {
		t.Fatalf("AckWait %s", n)
	}
}

func TestStopBeforeStartAndStartWithoutTopology(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	c, err := bus.NewConsumer(e.js, e.top.CommandsStream, e.top.IngestConsumer, func(context.Context, bus.Message) error { return nil }, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("second Stop before Start: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed by a Stop before Start")
	}
	if err := c.Start(t.Context()); !errors.Is(err, bus.ErrConsumerStarted) {
		t.Fatalf("Start after Stop: %v", err)
	}
	missing, err := bus.NewConsumer(e.js, e.top.CommandsStream, "nobody", func(context.Context, bus.Message) error { return nil }, bus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "EnsureTopology") {
		t.Fatalf("Start on a missing consumer: %v", err)
	}
}

func TestRequesterManyConcurrentCommands(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	worker := e.ns.Connect(t)
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		return bus.Reply(worker, m.ReplyTo, append([]byte("ok:"), m.Data...), "text/plain")
	}, bus.ConsumerOptions{Concurrency: 16})

	r, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 200
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("req-%03d", i)
			reply, err := r.Request(ctx, e.top.Subject(bus.CmdVerify), id, []byte(id), "text/plain")
			if err != nil {
				errs <- err
				return
			}
			if string(reply.Data) != "ok:"+id {
				errs <- fmt.Errorf("reply to %s: %q", id, reply.Data)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d request/replies in %s", n, time.Since(t0))

	p, err := r.Send(ctx, e.top.Subject(bus.CmdVerify), "dup", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Send(ctx, e.top.Subject(bus.CmdVerify), "dup", nil, ""); !errors.Is(err, bus.ErrDuplicatePending) {
		t.Fatalf("second outstanding send with one id: %v", err)
	}
	if _, err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Send(ctx, e.top.Subject(bus.CmdVerify), "late", nil, ""); !errors.Is(err, bus.ErrRequesterClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

func TestRequesterWaitTimesOut(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	r, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err = r.Request(ctx, e.top.Subject(bus.CmdVerify), "unanswered", nil, "")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "worker") {
		t.Fatalf("Request with no worker: %v", err)
	}
}

// TestConsumerSurvivesServerRestart crashes and restarts the server under a
// running consumer: a command published before the crash and one after it
// are both handled, and nothing stays pending.
func TestConsumerSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	handled := make(chan string, 4)
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		handled <- m.CommandID
		return nil
	}, bus.ConsumerOptions{FetchWait: 300 * time.Millisecond})
	e.publish(t, bus.CmdIngest, "before", nil)
	if id := <-handled; id != "before" {
		t.Fatalf("handled %s", id)
	}
	eventually(t, 5*time.Second, "acked before restart", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	e.ns.Restart(t)
	eventually(t, 10*time.Second, "publish after restart", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := bus.PublishCommand(ctx, e.js, e.top.Subject(bus.CmdIngest), "after", nil, "", "")
		return err == nil
	})
	select {
	case id := <-handled:
		if id != "after" {
			t.Fatalf("handled %s after restart", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("consumer handled nothing after the server restarted")
	}
	eventually(t, 5*time.Second, "acked after restart", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
}
