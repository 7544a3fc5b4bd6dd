package ingest_test

// Fault tests of invariant 11 (every command is answered; an outage
// shorter than the retry budget costs only time), on real services: a
// private PostgreSQL cluster stopped for 60 s, the embedded NATS server
// restarted, a storage backend out of space, a 1 GiB put on a loaded
// machine. In each: every producer gets an answer, nothing acknowledged is
// lost, nothing damaged is stored. No step waits on the clock except the
// outage itself; every other wait is on a signal, bounded only to stop a
// hung test.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/dbmigrate"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgcluster"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// hangGuard bounds every wait of a fault test; it only stops a hung test.
const hangGuard = 5 * time.Minute

// rig is one fault test's pipeline: an ingester with production defaults
// (retry budget, AckWait, MaxDeliver) and a producer, each on its own
// NATS connection.
type rig struct {
	e      *env
	ns     *natstest.Server
	client *producer.Client
	wrap   func(storage.Backend) storage.Backend
	ing    *ingest.Ingester
}

type rigOptions struct {
	cluster *pgcluster.Cluster                    // PostgreSQL; nil: the shared test server
	nats    func(*server.Options)                 // embedded NATS options
	wrap    func(storage.Backend) storage.Backend // the backend as the ingester sees it
	reserve int64
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	var e *env
	if o.cluster != nil {
		dbURL := o.cluster.CreateDB(t, "faults")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dbmigrate.Up(ctx, dbURL); err != nil {
			t.Fatal(err)
		}
		pool, err := pgxpool.New(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		e = &env{t: t, pool: pool, dbURL: dbURL}
	} else {
		pool, dbURL := pgtest.NewDB(t)
		e = &env{t: t, pool: pool, dbURL: dbURL}
	}
	ns := natstest.StartEmbedded(t, o.nats)
	e.srv = ns
	e.nc = ns.Connect(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	e.js = js
	e.topo = bus.DefaultTopology().WithPrefix(natstest.Prefix(t)) // production AckWait and MaxDeliver
	if err := bus.EnsureTopology(t.Context(), js, e.topo); err != nil {
		t.Fatal(err)
	}
	e.codec = events.NewCodec()
	e.log = events.NewLog(e.pool, e.codec)
	e.root = t.TempDir()

	pnc := ns.Connect(t)
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	client, err := producer.New(t.Context(), producer.Config{NATS: pnc, JetStream: pjs, Topology: e.topo, Codec: e.codec, Producer: "fault-test",
		OnRetry: func(name string, attempt int, err error, wait time.Duration) {
			t.Logf("staging %s: %v; again in %s (attempt %d)", name, err, wait, attempt+1)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	r := &rig{e: e, ns: ns, client: client, wrap: o.wrap}
	r.ing = r.startIngester(o.reserve)
	return r
}

func (r *rig) startIngester(reserve int64) *ingest.Ingester {
	t := r.e.t
	b, err := local.Open(r.e.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var be storage.Backend = b
	if r.wrap != nil {
		be = r.wrap(b)
	}
	reg := storage.NewRegistry()
	if err := reg.Register(be); err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(reg, be.ID())
	if err != nil {
		t.Fatal(err)
	}
	inc := r.ns.Connect(t)
	ijs, err := jetstream.New(inc)
	if err != nil {
		t.Fatal(err)
	}
	ing, err := ingest.New(ingest.Config{
		Pool: r.e.pool, Log: r.e.log, Codec: r.e.codec, DataPlane: dp, NATS: inc, JetStream: ijs, Topology: r.e.topo,
		Concurrency: 8, StorageReserve: reserve,
		// Warnings too: transient failures and failed fetches tell what a
		// fault did, when a fault test fails.
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ing.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = ing.Stop(ctx)
	})
	return ing
}

// sent is one command and what was sent.
type sent struct {
	id   string
	want digest.Digests
	p    *producer.Pending
}

// send puts data as path of package pkg without waiting for the reply.
func (r *rig) send(pkg, path string, data []byte) (sent, error) {
	d, err := digest.Compute(bytes.NewReader(data), nil)
	if err != nil {
		return sent{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	p, err := r.client.Put(ctx, producer.Put{Package: pkg, Path: path, Body: bytes.NewReader(data), Size: int64(len(data))})
	if err != nil {
		return sent{}, err
	}
	return sent{id: p.CommandID, want: d, p: p}, nil
}

// answer waits for the reply of s.
func answer(s sent) (commands.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	return s.p.Wait(ctx)
}

// checkStored fails unless rep stores exactly what s sent, durable on disk
// and in the log.
func (r *rig) checkStored(s sent, rep commands.Reply) {
	t := r.e.t
	t.Helper()
	if rep.Status != commands.StatusStored {
		t.Fatalf("command %s: %s %s: %s", s.id, rep.Status, rep.Code, rep.Reason)
	}
	if rep.BLAKE3 != s.want.Address(digest.BLAKE3).Hex() || rep.SHA256 != s.want.Address(digest.SHA256).Hex() || rep.Size != s.want.Size {
		t.Fatalf("command %s: reply %s/%s/%d, sent %s/%d", s.id, rep.BLAKE3, rep.SHA256, rep.Size, s.want.Address(digest.BLAKE3), s.want.Size)
	}
	r.e.checkObject(rep.Address, rep.BLAKE3, rep.SHA256, rep.Size)
	if evs := r.e.eventsOf(s.id); len(evs) == 0 {
		t.Fatalf("command %s was answered stored but has no events", s.id)
	}
}

// blobFor is the content of the i-th file of a test: inline or staged.
func blobFor(t *testing.T, i int) []byte {
	n := 8 << 10
	if i%3 == 0 {
		n = 200 << 10 // staged
	}
	return randomBytes(t, n+i)
}

// outage runs workers that each put files and wait for each reply, lets
// them store `before` files, runs fault while more commands are queued
// behind the workers, and then lets each worker store a few more. It
// returns every command with its reply.
func (r *rig) outage(t *testing.T, before int, fault func()) {
	t.Helper()
	const workers, queued, after = 4, 16, 3
	var stored atomic.Int32
	reached := make(chan struct{})
	var once sync.Once
	faultDone := make(chan struct{})
	var mu sync.Mutex
	var all []sent
	var replies []commands.Reply
	record := func(s sent, rep commands.Reply) {
		mu.Lock()
		all, replies = append(all, s), append(replies, rep)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers+queued)
	for w := range workers {
		wg.Go(func() {
			left := -1
			for i := 0; left != 0; i++ {
				s, err := r.send("outage", fmt.Sprintf("w%d/f%03d", w, i), blobFor(t, w*1000+i))
				if err != nil {
					errs <- fmt.Errorf("worker %d put %d: %w", w, i, err)
					return
				}
				rep, err := answer(s)
				if err != nil {
					errs <- fmt.Errorf("worker %d, command %s: no answer: %w", w, s.id, err)
					return
				}
				record(s, rep)
				if stored.Add(1) == int32(before) {
					once.Do(func() { close(reached) })
				}
				select {
				case <-faultDone:
					if left < 0 {
						left = after
					}
					left--
				default:
				}
			}
		})
	}
	select {
	case <-reached:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(hangGuard):
		t.Fatal("the workers did not store their first files")
	}
	// Commands queued while the fault lasts, answered after it.
	var pending []sent
	var sendWG sync.WaitGroup
	var pmu sync.Mutex
	sendWG.Go(func() {
		for i := range queued {
			s, err := r.send("outage", fmt.Sprintf("queued/f%03d", i), blobFor(t, 10000+i))
			if err != nil {
				errs <- fmt.Errorf("queued put %d: %w", i, err)
				return
			}
			pmu.Lock()
			pending = append(pending, s)
			pmu.Unlock()
		}
	})
	faultStart := time.Now()
	fault()
	faultEnd := time.Now()
	close(faultDone)
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
	for i, s := range all {
		r.checkStored(s, replies[i])
	}
	r.e.waitSettled()
	settled := time.Now()
	if n := r.e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters after an outage shorter than the retry budget", n)
	}
	if total := r.e.checkOneSetPerCommand(); total != len(all) {
		t.Fatalf("%d commands in the log, %d answered stored", total, len(all))
	}
	t.Logf("%d commands, all stored; %d queued during the fault; fault %s, last answer %s after it, consumer settled %s after that",
		len(all), len(pending), faultEnd.Sub(faultStart).Round(time.Millisecond), answered.Sub(faultEnd).Round(time.Millisecond), settled.Sub(answered).Round(time.Millisecond))
}

func TestFaultPostgresDownForAMinute(t *testing.T) {
	t.Parallel()
	cluster := pgcluster.Start(t)
	r := newRig(t, rigOptions{cluster: cluster})
	r.outage(t, 12, func() {
		cluster.Stop(t)
		// The outage itself: PostgreSQL is down for 60 s while commands
		// keep arriving and failing.
		time.Sleep(60 * time.Second)
		ci, err := r.e.js.Consumer(t.Context(), r.e.topo.CommandsStream, r.e.topo.IngestConsumer)
		if err != nil {
			t.Fatal(err)
		}
		info, err := ci.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumRedelivered == 0 {
			t.Fatalf("no command was redelivered while PostgreSQL was down (%d pending, %d in flight): the outage was not exercised", info.NumPending, info.NumAckPending)
		}
		t.Logf("PostgreSQL down for 60 s: %d commands redelivered, %d in flight", info.NumRedelivered, info.NumAckPending)
		cluster.Start(t)
	})
}

func TestFaultNATSRestartedMidIngest(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.outage(t, 12, func() {
		r.ns.Restart(t)
	})
}

// quotaBackend is a backend with a quota: writes beyond it fail as a full
// disk does (ENOSPC from the write), and Health reports the room left,
// unless lie is set (a disk filled from elsewhere after the check).
type quotaBackend struct {
	storage.Backend
	mu    sync.Mutex
	quota int64
	used  int64
	lie   bool
	puts  int // Create calls: a refusal before any byte is written makes none
}

func (q *quotaBackend) Create(ctx context.Context, opts storage.CreateOptions) (storage.ObjectWriter, error) {
	q.mu.Lock()
	room := q.quota - q.used
	q.puts++
	q.mu.Unlock()
	w, err := q.Backend.Create(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &quotaWriter{ObjectWriter: w, q: q, room: room}, nil
}

func (q *quotaBackend) Health(ctx context.Context) storage.Health {
	h := q.Backend.Health(ctx)
	q.mu.Lock()
	defer q.mu.Unlock()
	h.FreeBytes, h.UsedBytes = uint64(q.quota-q.used), uint64(q.used)
	if q.lie {
		h.FreeBytes = 1 << 40
	}
	return h
}

func (q *quotaBackend) set(quota int64, lie bool) {
	q.mu.Lock()
	q.quota, q.lie = quota, lie
	q.mu.Unlock()
}

// quotaWriter fails like a write to a full disk once more than room
// bytes went through, and counts what it commits against the quota.
type quotaWriter struct {
	storage.ObjectWriter
	q       *quotaBackend
	room    int64
	written int64
}

func (w *quotaWriter) Write(p []byte) (int, error) {
	if w.written+int64(len(p)) > w.room {
		return 0, &os.PathError{Op: "write", Path: "temp file", Err: syscall.ENOSPC}
	}
	n, err := w.ObjectWriter.Write(p)
	w.written += int64(n)
	return n, err
}

func (w *quotaWriter) Commit(ctx context.Context, addr digest.Address, tree storage.TreeSource, mode storage.CommitMode) (storage.Committed, error) {
	c, err := w.ObjectWriter.Commit(ctx, addr, tree, mode)
	if err == nil && !c.Deduplicated {
		w.q.mu.Lock()
		w.q.used += w.written
		w.q.mu.Unlock()
	}
	return c, err
}

func TestFaultBackendOutOfSpace(t *testing.T) {
	t.Parallel()
	var qb *quotaBackend
	r := newRig(t, rigOptions{reserve: 64 << 10, wrap: func(b storage.Backend) storage.Backend {
		qb = &quotaBackend{Backend: b, quota: 1 << 20}
		return qb
	}})
	put := func(path string, data []byte) (sent, commands.Reply) {
		t.Helper()
		s, err := r.send("full", path, data)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := answer(s)
		if err != nil {
			t.Fatalf("%s: no answer: %v", path, err)
		}
		return s, rep
	}
	var kept []sent
	for _, name := range []string{"a", "b"} {
		s, rep := put(name, randomBytes(t, 300<<10))
		r.checkStored(s, rep)
		kept = append(kept, s)
	}
	// Refused before any byte is written: it does not fit.
	big := randomBytes(t, 600<<10)
	puts := func() int { qb.mu.Lock(); defer qb.mu.Unlock(); return qb.puts }
	before := puts()
	_, rep := put("c", big)
	if n := puts() - before; n != 0 {
		t.Fatalf("a blob that cannot fit reached the backend's Put %d times", n)
	}
	if rep.Status != commands.StatusFailed || rep.Code != commands.CodeInsufficientStorage ||
		!bytes.Contains([]byte(rep.Reason), []byte("614400 bytes")) || !bytes.Contains([]byte(rep.Reason), []byte("free")) {
		t.Fatalf("a blob too large for the free space: %+v", rep)
	}
	// The disk fills from elsewhere after the check: the write fails.
	qb.set(1<<20, true)
	_, rep = put("d", big)
	if rep.Status != commands.StatusFailed || rep.Code != commands.CodeInsufficientStorage {
		t.Fatalf("a write into a full disk: %+v", rep)
	}
	// Nothing partial was left behind; what was stored is intact.
	if files := r.e.objectFiles(); len(files) != 2 {
		t.Fatalf("object files %v; want only a and b", files)
	}
	r.e.waitSettled() // a dead letter goes out after the answer, before the term
	if n := r.e.deadLetters(); n != 2 {
		t.Fatalf("%d dead letters; want the two failures", n)
	}
	// Space is freed: the same blob is stored.
	qb.set(4<<20, false)
	s, rep := put("c", big)
	r.checkStored(s, rep)
	for _, s := range kept {
		r.e.checkObject(s.want.Address(digest.BLAKE3).String(), s.want.Address(digest.BLAKE3).Hex(), s.want.Address(digest.SHA256).Hex(), s.want.Size)
	}
	r.e.waitSettled()
}

// seededBlob is size bytes from a seeded generator: a large blob that is
// never held in memory, and that can be read again from its start.
type seededBlob struct {
	seed      uint64
	size, off int64
	gen       *rand.ChaCha8
}

func newSeededBlob(seed uint64, size int64) *seededBlob {
	b := &seededBlob{seed: seed, size: size}
	_, _ = b.Seek(0, io.SeekStart)
	return b
}

func (b *seededBlob) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), b.size-b.off)]
	n, _ := b.gen.Read(p)
	b.off += int64(n)
	return n, nil
}

// Seek supports what a retry needs: the position, and back to the start.
func (b *seededBlob) Seek(off int64, whence int) (int64, error) {
	switch {
	case whence == io.SeekCurrent && off == 0:
		return b.off, nil
	case whence == io.SeekStart && off == 0:
		var key [32]byte
		for i := range 8 {
			key[i] = byte(b.seed >> (8 * i))
		}
		b.gen, b.off = rand.NewChaCha8(key), 0
		return 0, nil
	}
	return 0, errors.New("seededBlob: only rewinds to the start")
}

// TestHelperHog is not a test: it is the CPU hog the 1 GiB test starts
// (the test binary re-executed with ARTIFACTSTORE_FAULT_HOG=1). It spins
// on GOMAXPROCS cores until killed.
func TestHelperHog(t *testing.T) {
	if os.Getenv("ARTIFACTSTORE_FAULT_HOG") != "1" {
		return
	}
	var x atomic.Uint64
	for range runtime.GOMAXPROCS(0) {
		go func() {
			for {
				x.Add(1)
			}
		}()
	}
	select {}
}

func TestFaultOneGiBPutOnALoadedMachine(t *testing.T) {
	t.Parallel()
	hog := exec.Command(os.Args[0], "-test.run=^TestHelperHog$", "-test.count=1")
	hog.Env = append(os.Environ(), "ARTIFACTSTORE_FAULT_HOG=1", "GOMAXPROCS=1")
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = hog.Process.Kill()
		_ = hog.Wait()
	})
	// A small stream ingest queue: a producer without flow control meets
	// 429 too many requests here even on an idle machine.
	r := newRig(t, rigOptions{nats: func(o *server.Options) { o.StreamMaxBufferedMsgs = 32 }})
	// 1 GiB; under the race detector, whose bookkeeping of every copied
	// byte makes a gibibyte take minutes, 256 MiB unless
	// ARTIFACTSTORE_TEST_1GIB=1 (make soak) asks for the full size.
	size := int64(1 << 30)
	if raceEnabled && os.Getenv(envBigBlob) != "1" {
		size = 256 << 20
	}
	want, err := digest.Compute(newSeededBlob(42, size), nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	p, err := r.client.Put(ctx, producer.Put{Package: "big", Path: "one.gib", Body: newSeededBlob(42, size), Size: size})
	if err != nil {
		t.Fatalf("staging 1 GiB on a loaded machine: %v", err)
	}
	staged := time.Since(t0)
	rep, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("no answer to the 1 GiB put: %v", err)
	}
	r.checkStored(sent{id: p.CommandID, want: want, p: p}, rep)
	t.Logf("%d MiB stored in %s (staged in %s) with a CPU hog on one core", size>>20, time.Since(t0).Round(time.Millisecond), staged.Round(time.Millisecond))
	r.e.waitSettled()
	if n := r.e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}
