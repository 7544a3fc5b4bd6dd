package ingest_test

// The pipeline on a JetStream cluster: three embedded nats-servers joined
// by routes, every stream, consumer and bucket with three replicas, and
// the node that leads the commands stream stopped in the middle of
// ingests and started again.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
)

// TestClusterNodeLostMidIngest runs producers and ingesters on a 3-node
// cluster with R3, stops the node that leads the commands stream after a
// number of stored replies (the producers and one ingester are connected
// to it), lets more commands be stored and queued while it is down, then
// starts it again. Every producer gets its answer; every command answered
// stored is in the log exactly once, with one file.added and one
// object.stored, and its bytes are on disk; nothing is dead-lettered.
func TestClusterNodeLostMidIngest(t *testing.T) {
	t.Parallel()
	const (
		workers = 4  // producers' loops, each waits for each reply
		before  = 12 // stored before the node stops
		during  = 8  // stored while it is down
		queued  = 12 // sent while it is down, answered whenever
		after   = 3  // stored by each loop once it is back
	)
	start := time.Now()
	c := natstest.StartCluster(t, 3)
	clusterUp := time.Now()
	e := newClusterEnv(t, c)
	victim := commandsLeader(t, c, e.js, e.topo)
	other := (victim + 1) % c.Size()

	// One producer and one ingester on the node that goes away, one of
	// each on another: replies cross the routes both ways.
	clients := []*producer.Client{clusterProducer(t, e, c.ConnectTo(t, victim)), clusterProducer(t, e, c.ConnectTo(t, other))}
	for _, n := range []int{victim, other} {
		clusterIngester(t, e, c.ConnectTo(t, n))
	}
	r := &rig{e: e}

	var mu sync.Mutex
	var all []sent
	var replies []commands.Reply
	var stored atomic.Int32
	changed := make(chan struct{}) // closed and replaced at every reply
	record := func(s sent, rep commands.Reply) {
		mu.Lock()
		all, replies = append(all, s), append(replies, rep)
		mu.Unlock()
		mu.Lock()
		stored.Add(1)
		close(changed)
		changed = make(chan struct{})
		mu.Unlock()
	}
	back := make(chan struct{})
	errs := make(chan error, workers+1)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			cl := clients[w%len(clients)]
			left := -1
			for i := 0; left != 0; i++ {
				s, err := sendWith(cl, fmt.Sprintf("w%d/f%03d", w, i), blobFor(t, w*1000+i))
				if err != nil {
					errs <- fmt.Errorf("loop %d put %d: %w", w, i, err)
					return
				}
				rep, err := answer(s)
				if err != nil {
					errs <- fmt.Errorf("loop %d, command %s: no answer: %w", w, s.id, err)
					return
				}
				record(s, rep)
				select {
				case <-back:
					if left < 0 {
						left = after
					}
					left--
				default:
				}
			}
		})
	}
	// wait waits until n replies were stored.
	wait := func(what string, n int32) {
		t.Helper()
		guard := time.After(hangGuard)
		for {
			mu.Lock()
			ch := changed
			mu.Unlock()
			if stored.Load() >= n {
				return
			}
			select {
			case <-ch:
			case err := <-errs:
				t.Fatal(err)
			case <-guard:
				t.Fatalf("hung: %s (%d stored)", what, stored.Load())
			}
		}
	}
	wait("the first replies", before)

	stopping := time.Now()
	c.Stop(t, victim)
	stoppedAt := stored.Load()
	var pending []sent
	var sendWG sync.WaitGroup
	sendWG.Go(func() {
		for i := range queued {
			s, err := sendWith(clients[i%len(clients)], fmt.Sprintf("queued/f%03d", i), blobFor(t, 10000+i))
			if err != nil {
				errs <- fmt.Errorf("queued put %d: %w", i, err)
				return
			}
			mu.Lock()
			pending = append(pending, s)
			mu.Unlock()
		}
	})
	wait("replies while a node is down", stoppedAt+during)
	restarting := time.Now()
	c.Restart(t, victim)
	restarted := time.Now()
	close(back)
	sendWG.Wait()
	for _, s := range pending {
		rep, err := answer(s)
		if err != nil {
			t.Fatalf("queued command %s: no answer: %v", s.id, err)
		}
		record(s, rep)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	answered := time.Now()
	staged := 0
	for i, s := range all {
		r.checkStored(s, replies[i])
		if s.p.Staged {
			staged++
		}
	}
	if staged == 0 || staged == len(all) {
		t.Fatalf("%d of %d puts staged: the test needs inline and staged puts", staged, len(all))
	}
	e.waitSettled()
	settled := time.Now()
	if n := e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters after the loss of one node of three", n)
	}
	if total := e.checkOneSetPerCommand(); total != len(all) {
		t.Fatalf("%d commands in the log, %d answered stored", total, len(all))
	}
	checkOneFilePerCommand(t, e)
	t.Logf("%d puts (%d staged) stored; node %d stopped after %d replies and started again after %d more; %d sent while it was down",
		len(all), staged, victim, stoppedAt, during, queued)
	t.Logf("cluster up %s, first replies %s, node down %s, restart %s, last answer %s later, consumer settled %s later",
		clusterUp.Sub(start).Round(time.Millisecond), stopping.Sub(clusterUp).Round(time.Millisecond), restarting.Sub(stopping).Round(time.Millisecond),
		restarted.Sub(restarting).Round(time.Millisecond), answered.Sub(restarted).Round(time.Millisecond), settled.Sub(answered).Round(time.Millisecond))
}

// commandsLeader is the index of the node that leads the commands stream.
func commandsLeader(t *testing.T, c *natstest.Cluster, js jetstream.JetStream, topo bus.Topology) int {
	t.Helper()
	s, err := js.Stream(t.Context(), topo.CommandsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != topo.Replicas-1 {
		t.Fatalf("commands stream cluster info %+v: want %d replicas", info.Cluster, topo.Replicas)
	}
	i := c.Index(info.Cluster.Leader)
	if i < 0 {
		t.Fatalf("commands stream led by %q, not a node of the cluster", info.Cluster.Leader)
	}
	return i
}

func clusterProducer(t *testing.T, e *env, nc *nats.Conn) *producer.Client {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := producer.New(t.Context(), producer.Config{NATS: nc, JetStream: js, Topology: e.topo, Codec: e.codec, Producer: "cluster-test",
		OnRetry: func(name string, attempt int, err error, wait time.Duration) {
			t.Logf("staging %s: %v; again in %s (attempt %d)", name, err, wait, attempt+1)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

func clusterIngester(t *testing.T, e *env, nc *nats.Conn, mods ...func(*ingest.Config)) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingest.Config{
		Pool: e.pool, Log: e.log, Codec: e.codec, DataPlane: e.dataPlane(), NATS: nc, JetStream: js, Topology: e.topo,
		Concurrency: 8,
		Logger:      zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	ing, err := ingest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ing.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = ing.Stop(ctx)
	})
}

// sendWith puts data as path of the package "cluster" through cl without
// waiting for the reply.
func sendWith(cl *producer.Client, path string, data []byte) (sent, error) {
	r := &rig{client: cl}
	return r.send("cluster", path, data)
}

// checkOneFilePerCommand fails unless every command in the log added
// exactly one file and stored exactly one object (every blob of these
// tests is new).
func checkOneFilePerCommand(t *testing.T, e *env) {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), `
		SELECT command_id, count(*) FILTER (WHERE event_type = 'file.added'), count(*) FILTER (WHERE event_type = 'object.stored')
		FROM events WHERE command_id IS NOT NULL AND event_type IN ('file.added', 'object.stored', 'package.created')
		GROUP BY command_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var files, objects int
		if err := rows.Scan(&id, &files, &objects); err != nil {
			t.Fatal(err)
		}
		if files != 1 || objects != 1 {
			t.Errorf("command %s: %d file.added and %d object.stored events, want one of each", id, files, objects)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestClusterReplyLostBetweenNodesIsAskedAgain runs a producer on one node
// of a 3-node cluster with R3 and the ingester on another, and loses the
// ingester's first reply to each put (as when the ingester's node dies
// right after the ingester published it, before the route carried it):
// the producer's connection never drops, so only its periodic re-ask,
// crossing the routes, brings each answer, recorded once in the log. The
// re-ask interval is short; the outcome does not depend on it.
func TestClusterReplyLostBetweenNodesIsAskedAgain(t *testing.T) {
	t.Parallel()
	c := natstest.StartCluster(t, 3)
	e := newClusterEnv(t, c)
	var lost sync.Map // command id -> a reply was lost
	var losses atomic.Int32
	clusterIngester(t, e, c.ConnectTo(t, 1), func(cfg *ingest.Config) {
		ingest.SetLoseReply(cfg, func(id string, m bus.Message) bool {
			if _, again := lost.LoadOrStore(id, true); again {
				return false
			}
			losses.Add(1)
			return true
		})
	})
	pnc := c.ConnectTo(t, 0)
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := producer.New(t.Context(), producer.Config{NATS: pnc, JetStream: pjs, Topology: e.topo, Codec: e.codec, Producer: "cluster-test",
		ReaskAfter: 50 * time.Millisecond, ReaskMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	r := &rig{e: e}
	// A staged (streamed) put and an inline one.
	var all []sent
	for i := range 2 {
		s, err := sendWith(cl, fmt.Sprintf("lost/f%d", i), blobFor(t, i))
		if err != nil {
			t.Fatal(err)
		}
		rep, err := answer(s)
		if err != nil {
			t.Fatalf("command %s: no answer though the producer's connection never dropped: %v", s.id, err)
		}
		r.checkStored(s, rep)
		all = append(all, s)
	}
	if !all[0].p.Staged || all[1].p.Staged || losses.Load() != 2 {
		t.Fatalf("staged %v %v, %d replies lost; want a staged and an inline put, each reply lost once", all[0].p.Staged, all[1].p.Staged, losses.Load())
	}
	e.waitSettled()
	if total := e.checkOneSetPerCommand(); total != len(all) {
		t.Fatalf("%d commands in the log, want %d", total, len(all))
	}
	checkOneFilePerCommand(t, e)
}

// newClusterEnv is an env on cluster c (a client connection that fails
// over between its nodes) with its own database and the topology applied
// with three replicas.
func newClusterEnv(t *testing.T, c *natstest.Cluster) *env {
	t.Helper()
	pool, dbURL := pgtest.NewDB(t)
	codec := events.NewCodec()
	e := &env{t: t, pool: pool, dbURL: dbURL, codec: codec, log: events.NewLog(pool, codec), root: t.TempDir()}
	e.nc = c.Connect(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	e.js = js
	e.topo = bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	e.topo.Replicas = 3
	ctx, cancel := context.WithTimeout(t.Context(), hangGuard)
	defer cancel()
	if err := bus.EnsureTopology(ctx, js, e.topo); err != nil {
		t.Fatal(err)
	}
	return e
}
