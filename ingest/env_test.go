package ingest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// hang bounds the waits of these tests. It only stops a hung test: no wait
// is expected to come near it, however slow or busy the machine.
const hang = 3 * time.Minute

// env is one test's world: a database, a NATS server with the topology, an
// object root, and helpers to run ingesters and producers on them.
type env struct {
	t      testing.TB
	pool   *pgxpool.Pool
	dbURL  string
	codec  *events.Codec
	log    *events.Log
	srv    *natstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	topo   bus.Topology
	root   string
	client *producer.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	pool, dbURL := pgtest.NewDB(t)
	srv := natstest.Start(t)
	nc := srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The default AckWait (30 s): no test here waits for one to lapse, and
	// a short one would let a stall of a busy machine cause a redelivery
	// that waitSettled reports.
	topo := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	ctx := context.Background()
	if err := bus.EnsureTopology(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	codec := events.NewCodec()
	e := &env{t: t, pool: pool, dbURL: dbURL, codec: codec, log: events.NewLog(pool, codec), srv: srv, nc: nc, js: js, topo: topo, root: t.TempDir()}
	e.client = e.newClient(false)
	return e
}

func (e *env) newClient(json bool) *producer.Client {
	e.t.Helper()
	c, err := producer.New(context.Background(), producer.Config{NATS: e.nc, JetStream: e.js, Topology: e.topo, Codec: e.codec, Producer: "test", JSON: json})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (e *env) dataPlane() *dataplane.DataPlane {
	e.t.Helper()
	b, err := local.Open(e.root)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		e.t.Fatal(err)
	}
	dp, err := dataplane.New(reg, b.ID())
	if err != nil {
		e.t.Fatal(err)
	}
	return dp
}

// startIngester runs an ingester until the test ends.
func (e *env) startIngester(mod func(*ingest.Config)) *ingest.Ingester {
	e.t.Helper()
	cfg := ingest.Config{
		Pool: e.pool, Log: e.log, Codec: e.codec, DataPlane: e.dataPlane(), NATS: e.nc, JetStream: e.js,
		Topology: e.topo, Concurrency: 8, RetryDelay: 100 * time.Millisecond,
		Logger: zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
	}
	cfg.Consumer.FetchWait = 200 * time.Millisecond // short pulls make the stop at cleanup quick; no deadline
	if mod != nil {
		mod(&cfg)
	}
	ing, err := ingest.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := ing.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		if err := ing.Stop(ctx); err != nil {
			e.t.Errorf("stop ingester: %v", err)
		}
	})
	return ing
}

// put sends one blob and waits for its reply.
func (e *env) put(c *producer.Client, p producer.Put) commands.Reply {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	pend, err := c.Put(ctx, p)
	if err != nil {
		e.t.Fatalf("put %s: %v", p.Path, err)
	}
	r, err := pend.Wait(ctx)
	if err != nil {
		e.t.Fatalf("wait for %s: %v", p.Path, err)
	}
	return r
}

func blob(p producer.Put, data []byte) producer.Put {
	p.Body, p.Size = bytes.NewReader(data), int64(len(data))
	return p
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// request publishes a raw command (no Nats-Msg-Id unless id is set) and
// waits for the reply.
func (e *env) request(subject string, body []byte, contentType, id string) commands.Reply {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	inbox := e.nc.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := nats.NewMsg(e.topo.Subject(subject))
	msg.Data = body
	msg.Header.Set(bus.HeaderReplyTo, inbox)
	if contentType != "" {
		msg.Header.Set(bus.HeaderContentType, contentType)
	}
	if id != "" {
		msg.Header.Set(bus.HeaderMsgID, id)
	}
	if _, err := e.js.PublishMsg(ctx, msg); err != nil {
		e.t.Fatal(err)
	}
	m, err := sub.NextMsg(hang)
	if err != nil {
		e.t.Fatalf("no reply to raw command: %v", err)
	}
	r, err := commands.DecodeReply(e.codec, m.Data, commands.IsJSON(m.Header.Get(commands.HeaderContentType)))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// eventsOf returns the events appended under a command id.
func (e *env) eventsOf(id string) []events.Event {
	e.t.Helper()
	evs, err := e.log.ByCommand(context.Background(), id)
	if err != nil {
		e.t.Fatalf("events of %s: %v", id, err)
	}
	return evs
}

func types(evs []events.Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, string(e.Type))
	}
	return s
}

// objectFiles lists the object files under the root (temp and quarantine
// directories excluded).
func (e *env) objectFiles() []string {
	e.t.Helper()
	return e.files(false)
}

// treeFiles lists the BLAKE3 tree files (<object path>.bao) under the
// object root.
func (e *env) treeFiles() []string {
	e.t.Helper()
	return e.files(true)
}

func (e *env) files(trees bool) []string {
	e.t.Helper()
	var out []string
	err := filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.root, p)
		if d.IsDir() && strings.HasPrefix(rel, ".") && rel != "." {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(rel, ".bao") == trees {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// checkObject recomputes both digests of the object at addr from disk.
func (e *env) checkObject(addr string, blake3Hex, sha256Hex string, size int64) {
	e.t.Helper()
	a, err := digest.Parse(addr)
	if err != nil {
		e.t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(e.root, filepath.FromSlash(local.ObjectPath(a))))
	if err != nil {
		e.t.Fatalf("object %s: %v", addr, err)
	}
	defer f.Close()
	d, err := digest.Compute(f, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if d.Address(digest.BLAKE3).Hex() != blake3Hex || d.Address(digest.SHA256).Hex() != sha256Hex || d.Size != size {
		e.t.Fatalf("object %s on disk is %s %s %d bytes, reply said %s %s %d", addr,
			d.Address(digest.BLAKE3), d.Address(digest.SHA256), d.Size, blake3Hex, sha256Hex, size)
	}
}

// waitSettled polls until the ingest consumer holds no pending or
// unacknowledged message: nothing will be redelivered. A delivery lost
// with its connection (a pull answered just as the NATS server went down)
// is redelivered only once the consumer's AckWait has passed, by design,
// so the bound is that AckWait plus hang, which only stops a hung test.
// On failure it reports what the stream still holds and where the
// consume loop's handlers are.
func (e *env) waitSettled() {
	e.t.Helper()
	start := time.Now()
	poll := time.NewTicker(20 * time.Millisecond) // only costs time; the bound stops a hung test
	defer poll.Stop()
	for {
		ci, err := e.js.Consumer(context.Background(), e.topo.CommandsStream, e.topo.IngestConsumer)
		if err != nil {
			e.t.Fatal(err)
		}
		info, err := ci.Info(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
			return
		}
		if bound := info.Config.AckWait + hang; time.Since(start) > bound {
			e.reportUnsettled(info)
			e.t.Fatalf("consumer not settled after %s (AckWait %s + %s): %d pending, %d unacked, %d redelivered",
				bound, info.Config.AckWait, hang, info.NumPending, info.NumAckPending, info.NumRedelivered)
		}
		<-poll.C
	}
}

// reportUnsettled logs the consumer's and the commands stream's state,
// the oldest commands left in the stream, and the stacks of the handlers
// still running: what a stuck message is, and what holds it.
func (e *env) reportUnsettled(info *jetstream.ConsumerInfo) {
	e.t.Helper()
	ctx := context.Background()
	e.t.Logf("consumer: delivered stream seq %d, ack floor stream seq %d, waiting pulls %d",
		info.Delivered.Stream, info.AckFloor.Stream, info.NumWaiting)
	st, err := e.js.Stream(ctx, e.topo.CommandsStream)
	if err != nil {
		e.t.Logf("commands stream: %v", err)
		return
	}
	si, err := st.Info(ctx)
	if err != nil {
		e.t.Logf("commands stream: %v", err)
		return
	}
	e.t.Logf("commands stream: %d messages, seq %d to %d", si.State.Msgs, si.State.FirstSeq, si.State.LastSeq)
	shown := 0
	for seq := si.State.FirstSeq; seq <= si.State.LastSeq && seq-si.State.FirstSeq < 1000 && shown < 5; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // acked and removed
		}
		shown++
		e.t.Logf("  seq %d: %s, command %s, stored %s ago", seq, m.Subject, m.Header.Get(bus.HeaderMsgID), time.Since(m.Time).Round(time.Millisecond))
	}
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "bus.(*Consumer).handle(") {
			e.t.Logf("running handler:\n%s", g)
		}
	}
}

// deadLetters counts the dead-letter stream's messages.
func (e *env) deadLetters() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), e.topo.DeadLetterStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

// checkOneSetPerCommand fails when a command has events outside its one
// contiguous range, or events of a command are missing from commands.
func (e *env) checkOneSetPerCommand() int {
	e.t.Helper()
	var bad, total int
	err := e.pool.QueryRow(context.Background(), `
		SELECT count(*) FILTER (WHERE n <> c.last_sequence - c.first_sequence + 1 OR mn <> c.first_sequence OR c.command_id IS NULL),
		       count(*)
		FROM (SELECT command_id, count(*) AS n, min(sequence) AS mn FROM events WHERE command_id IS NOT NULL GROUP BY command_id) e
		LEFT JOIN commands c USING (command_id)`).Scan(&bad, &total)
	if err != nil {
		e.t.Fatal(err)
	}
	if bad != 0 {
		e.t.Fatalf("%d of %d commands have more than one set of events", bad, total)
	}
	var created, pkgs int
	if err := e.pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM events WHERE event_type = 'package.created'), (SELECT count(DISTINCT subject_id) FROM events WHERE event_type = 'package.created')`).Scan(&created, &pkgs); err != nil {
		e.t.Fatal(err)
	}
	if created != pkgs {
		e.t.Fatalf("%d package.created events for %d packages", created, pkgs)
	}
	return total
}
