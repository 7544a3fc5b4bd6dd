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

// hang bounds every wait of these tests. It only stops a hung test: no
// wait is expected to come near it, however slow or busy the machine.
const hang = 3 * time.Minute

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
		ctx, cancel := context.WithTimeout(context.Background(), hang)
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
		// A soft stop waits for the pull in flight to expire: a short pull
		// keeps the stops at cleanup quick. It is no deadline: an expired
		// pull is simply issued again.
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
		ctx, cancel := context.WithTimeout(context.Background(), hang)
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

// eventually polls cond, a state of the server that the test's own actions
// make true sooner or later (an acked message leaving the work queue), until
// it holds. The polling interval only costs time; [hang] stops a hung test.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", hang, what)
		}
		<-tick.C
	}
}

// receive waits for a value on ch, failing the test after [hang].
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang):
		t.Fatalf("after %s: %s", hang, what)
		var zero T
		return zero
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
	eventually(t, fmt.Sprintf("%d dead letters", n), func() bool {
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
	// The default AckWait (30 s): the ack is proven by the message leaving
	// the work queue, and a short AckWait would turn a slow ack on a busy
	// machine into a redelivery.
	e := setup(t, nil)
	var calls atomic.Int32
	var got atomic.Value
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		got.Store(m)
		return nil
	}, bus.ConsumerOptions{})
	e.publish(t, bus.CmdIngest, "c1", []byte("hello"))
	// The work queue removes a message only when its ack reached the server.
	eventually(t, "acked command removed from the stream", func() bool {
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
	if m := receive(t, done, "retried command was not redelivered"); m.NumDelivered != 2 {
		t.Fatalf("second handling saw delivery %d", m.NumDelivered)
	}
	mu.Lock()
	defer mu.Unlock()
	// A lower bound only: a busy machine makes the gap longer, never shorter.
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
	eventually(t, "terminated command removed", func() bool {
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
		got[receive(t, handled, fmt.Sprintf("after a panic, handled only %v", got))] = true
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
	eventually(t, "terminated command removed", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want MaxDeliver=3", n)
	}
}

// TestSlowHandlerKeptAliveByInProgress holds a handler well past AckWait
// and checks that its command is not redelivered. The test reads no clock:
// a canary command on another consumer with the same AckWait is fetched
// after the slow command was delivered and never acked, so each of its
// redeliveries proves that a full AckWait passed on the server for the slow
// command too.
func TestSlowHandlerKeptAliveByInProgress(t *testing.T) {
	t.Parallel()
	const ackWait = 2 * time.Second
	e := setup(t, func(top *bus.Topology) { top.AckWait = ackWait })
	var calls atomic.Int32
	started := make(chan struct{})
	release := make(chan struct{})
	releaseAll := sync.OnceFunc(func() { close(release) })
	defer releaseAll() // also when the test fails, so that the cleanup's Stop returns at once
	// Concurrency 2 keeps a pull request open while the handler works, so
	// a redelivery would reach this consumer. The in-progress interval is
	// a tenth of AckWait (the default is a third) so that a scheduling
	// stall of a busy machine shorter than 1.8 s cannot let AckWait lapse.
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		if calls.Add(1) > 1 {
			return nil
		}
		close(started)
		select {
		case <-release: // a long ingest
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, bus.ConsumerOptions{Concurrency: 2, InProgressInterval: ackWait / 10})
	e.publish(t, bus.CmdIngest, "slow", nil)
	receive(t, started, "slow handler never started")

	e.publish(t, bus.CmdVerify, "canary", nil)
	canary, err := e.js.Consumer(t.Context(), e.top.CommandsStream, e.top.VerifyConsumer)
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 3; want++ {
		batch, err := canary.Fetch(1, jetstream.FetchMaxWait(hang))
		if err != nil {
			t.Fatal(err)
		}
		m := receive(t, batch.Messages(), fmt.Sprintf("canary delivery %d", want))
		if m == nil {
			t.Fatalf("canary delivery %d: none within %s (%v)", want, hang, batch.Error())
		}
		meta, err := m.Metadata()
		if err != nil || meta.NumDelivered != want {
			t.Fatalf("canary delivery %d: metadata %+v, %v", want, meta, err)
		}
	}
	// Two AckWaits passed on the server since the slow command was delivered.
	if n := calls.Load(); n != 1 {
		t.Fatalf("a handler slower than AckWait was called %d times: the command was redelivered", n)
	}
	releaseAll()
	eventually(t, "acked command removed", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) <= 1 // the canary stays
	})
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times", n)
	}
	if info := e.consumerInfo(t, e.top.IngestConsumer); info.NumRedelivered != 0 {
		t.Fatalf("redelivered %d", info.NumRedelivered)
	}
}

// TestTwoConsumersSplitWork checks that two consumers of one durable share
// the work. Each consumer's first handler waits until the other consumer
// has started one too: a consumer whose slots are all blocked leaves the
// rest of the commands to the other's pull requests, so a fair split is
// certain without relying on how fast either handler runs.
func TestTwoConsumersSplitWork(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	const n = 60
	var mu sync.Mutex
	seen := map[string]int{}
	by := [2]int{}
	all := make(chan struct{})
	first := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	var once [2]sync.Once
	h := func(who int) bus.Handler {
		return func(ctx context.Context, m bus.Message) error {
			once[who].Do(func() { close(first[who]) })
			select {
			case <-first[1-who]:
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
	case <-time.After(hang):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("handled %d of %d, split %v", len(seen), n, by)
	}
	eventually(t, "all acked", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
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

// logged returns a copy of logger that closes the returned channel the
// first time a line with message msg is logged: a signal that the code
// under test passed that point.
func logged(logger zerolog.Logger, msg string) (zerolog.Logger, <-chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	return logger.Hook(zerolog.HookFunc(func(_ *zerolog.Event, _ zerolog.Level, m string) {
		if m == msg {
			once.Do(func() { close(ch) })
		}
	})), ch
}

func TestStopDrainsInFlight(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	var stopping <-chan struct{}
	e.log, stopping = logged(e.log, "consumer stopping")
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	releaseAll := sync.OnceFunc(func() { close(release) })
	defer releaseAll() // also when the test fails, so that the cleanup's Stop returns at once
	var cancelled, finished atomic.Int32
	c := e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		started <- struct{}{}
		<-release
		if ctx.Err() != nil {
			cancelled.Add(1)
		}
		finished.Add(1)
		return nil
	}, bus.ConsumerOptions{Concurrency: 2})
	e.publish(t, bus.CmdIngest, "d1", nil)
	e.publish(t, bus.CmdIngest, "d2", nil)
	for range 2 {
		receive(t, started, "handlers did not start")
	}
	type result struct {
		err      error
		finished int32 // handlers finished when Stop returned
	}
	stopped := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		err := c.Stop(ctx)
		stopped <- result{err, finished.Load()}
	}()
	// Stop has stopped fetching and now waits for the handlers, which
	// cannot finish before release is closed.
	receive(t, stopping, "Stop never began")
	select {
	case r := <-stopped:
		t.Fatalf("Stop returned (%v) while handlers were still running", r.err)
	default:
	}
	releaseAll()
	r := receive(t, stopped, "Stop did not return after handlers finished")
	if r.err != nil {
		t.Fatalf("Stop: %v", r.err)
	}
	if r.finished != 2 {
		t.Fatalf("Stop returned when %d of 2 handlers had finished", r.finished)
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
	// AckWait beyond the test's bound: only a nak can bring the command back
	// before the test gives up.
	const ackWait = 10 * time.Minute
	e := setup(t, func(top *bus.Topology) { top.AckWait = ackWait })
	started := make(chan struct{}, 1)
	// StopTimeout far beyond the test's own bound: a Stop that ignored its
	// context's deadline would hang the test instead of passing.
	c := e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}, bus.ConsumerOptions{Concurrency: 1, StopTimeout: time.Hour})
	e.publish(t, bus.CmdIngest, "stuck", nil)
	receive(t, started, "handler did not start")
	// A deadline that has already passed: the handler never returns on its
	// own, so the outcome does not depend on when the deadline falls.
	ctx, cancel := context.WithDeadline(context.Background(), time.Now())
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- c.Stop(ctx) }()
	if err := receive(t, stopped, "Stop ignored its deadline"); !errors.Is(err, bus.ErrStopDeadline) {
		t.Fatalf("Stop past its deadline = %v, want ErrStopDeadline", err)
	}

	redelivered := make(chan bus.Message, 1)
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		redelivered <- m
		return nil
	}, bus.ConsumerOptions{})
	m := receive(t, redelivered, "the cancelled handler's command was not redelivered to a new consumer")
	if m.CommandID != "stuck" || m.NumDelivered != 2 {
		t.Fatalf("redelivered %s delivery %d", m.CommandID, m.NumDelivered)
	}
	if n := e.consumerInfo(t, e.top.IngestConsumer).Config.AckWait; n != ackWait {
		t.Fatalf("AckWait %s, want %s", n, ackWait)
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
	ctx, cancel := context.WithTimeout(t.Context(), hang)
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
	// Publish without a deadline, then wait with one that has already
	// passed: nobody consumes the command, so the wait can only time out,
	// and the publish never races a short deadline.
	p, err := r.Send(t.Context(), e.top.Subject(bus.CmdVerify), "unanswered", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(t.Context(), time.Now())
	defer cancel()
	_, err = p.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "worker") {
		t.Fatalf("Wait with no worker: %v", err)
	}
	p.Cancel()
	// Request itself, on a context that expires: the same error.
	_, err = r.Request(ctx, e.top.Subject(bus.CmdVerify), "unanswered-2", nil, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request on an expired context: %v", err)
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
	}, bus.ConsumerOptions{FetchWait: 300 * time.Millisecond}) // short pulls: the loop re-pulls soon after the restart
	e.publish(t, bus.CmdIngest, "before", nil)
	if id := receive(t, handled, "nothing handled before the restart"); id != "before" {
		t.Fatalf("handled %s", id)
	}
	eventually(t, "acked before restart", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	e.ns.Restart(t)
	// Each attempt waits longer than the one before, so that a slow
	// reconnect is not cut short forever.
	attempt := time.Second
	eventually(t, "publish after restart", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), attempt)
		defer cancel()
		attempt *= 2
		_, err := bus.PublishCommand(ctx, e.js, e.top.Subject(bus.CmdIngest), "after", nil, "", "")
		return err == nil
	})
	if id := receive(t, handled, "consumer handled nothing after the server restarted"); id != "after" {
		t.Fatalf("handled %s after restart", id)
	}
	eventually(t, "acked after restart", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
}
