package ingest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"lukechampine.com/blake3/bao"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// Environment of the helper process.
const (
	envHelper   = "ARTIFACTSTORE_INGEST_HELPER"
	envDB       = "ARTIFACTSTORE_INGEST_HELPER_DB"
	envNATS     = "ARTIFACTSTORE_INGEST_HELPER_NATS"
	envRoot     = "ARTIFACTSTORE_INGEST_HELPER_ROOT"
	envTopology = "ARTIFACTSTORE_INGEST_HELPER_TOPOLOGY"
	envConc     = "ARTIFACTSTORE_INGEST_HELPER_CONCURRENCY"
)

// TestHelperIngester is not a test: it is the ingester process that the
// crash and memory tests start (the test binary re-executed with
// envHelper set). Without envHelper it returns at once.
func TestHelperIngester(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	var topo bus.Topology
	if err := json.Unmarshal([]byte(os.Getenv(envTopology)), &topo); err != nil {
		fail(err)
	}
	pool, err := pgxpool.New(ctx, os.Getenv(envDB))
	if err != nil {
		fail(err)
	}
	defer pool.Close()
	nc, err := nats.Connect(os.Getenv(envNATS))
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fail(err)
	}
	b, err := local.Open(os.Getenv(envRoot)) // removes the temp files of killed writers
	if err != nil {
		fail(err)
	}
	reg := storage.NewRegistry()
	_ = reg.Register(b)
	dp, err := dataplane.New(reg, b.ID())
	if err != nil {
		fail(err)
	}
	conc, _ := strconv.Atoi(os.Getenv(envConc))
	codec := events.NewCodec()
	cfg := ingest.Config{Pool: pool, Log: events.NewLog(pool, codec), Codec: codec, DataPlane: dp, NATS: nc, JetStream: js,
		Topology: topo, Concurrency: conc, RetryDelay: 100 * time.Millisecond,
		Logger: zerolog.New(os.Stderr).Level(helperLevel())}
	cfg.Consumer.FetchWait = 200 * time.Millisecond
	ing, err := ingest.New(cfg)
	if err != nil {
		fail(err)
	}
	if err := ing.Start(ctx); err != nil {
		fail(err)
	}
	fmt.Printf("ready %d\n", b.CleanedTemp())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	_ = ing.Stop(sctx)
	os.Exit(0)
}

// helperProc is a running ingester process.
type helperProc struct {
	cmd     *exec.Cmd
	cleaned int // temp files its start removed
}

func (e *env) startHelper(t testing.TB, concurrency int) *helperProc {
	t.Helper()
	topo, _ := json.Marshal(e.topo)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperIngester$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"=1", envDB+"="+e.dbURL, envNATS+"="+e.srv.URL(),
		envRoot+"="+e.root, envTopology+"="+string(topo), envConc+"="+strconv.Itoa(concurrency))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				c, _ := strconv.Atoi(n)
				ready <- c
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case c := <-ready:
		return &helperProc{cmd: cmd, cleaned: c}
	case <-time.After(hang):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper ingester not ready after %s", hang)
		return nil
	}
}

func (h *helperProc) kill() {
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	_ = h.cmd.Wait()
}

func (h *helperProc) peakRSS(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// TestCrashSafety kills the ingester process with SIGKILL at random points
// of a stream of ingests, restarts it each time, and then checks every
// invariant a crash could break. A kill point is a count, not a moment:
// each process is killed once a random number (1 to 10) of commands more
// than at its start are committed, so every process does some work however
// slow the machine, and with four ingests in flight most kills land in the
// middle of some (writing, fsyncing, committing or replying).
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A short AckWait brings the commands a killed process held back soon.
	// A live ingest slower than it on a busy machine is redelivered to
	// another worker as well, which the checks below allow for (exactly
	// one set of events per command, however many deliveries).
	e.topo.AckWait = 2 * time.Second
	e.topo.MaxDeliver = 1000
	if err := bus.EnsureTopology(context.Background(), e.js, e.topo); err != nil {
		t.Fatal(err)
	}
	const (
		kills     = 20
		nCommands = 400
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // only stops a hung test
	defer cancel()

	// The producers: a steady stream, inline and staged blobs.
	type sent struct {
		id    string
		reply commands.Reply
		err   error
	}
	results := make([]sent, nCommands)
	var wg sync.WaitGroup
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		sem := make(chan struct{}, 6)
		for i := range nCommands {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				size := 1 << 10
				if i%3 == 0 {
					size = 200<<10 + i
				}
				data := make([]byte, size)
				for k := range data {
					data[k] = byte(i*31 + k*7)
				}
				p, err := e.client.Put(ctx, blob(producer.Put{Package: fmt.Sprintf("crash-%d", i%7), Path: fmt.Sprintf("f-%d", i)}, data))
				if err != nil {
					results[i].err = err
					return
				}
				results[i].id = p.CommandID
				results[i].reply, results[i].err = p.Wait(ctx)
			}()
		}
		wg.Wait()
	}()

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	committed := func() int {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM commands`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	const maxStep = nCommands / kills / 2        // about 110 of the 400 commands before the final start
	poll := time.NewTicker(5 * time.Millisecond) // a polling interval, not a deadline
	defer poll.Stop()
	cleaned := 0
	for k := 0; k < kills; k++ {
		h := e.startHelper(t, 4)
		cleaned += h.cleaned
		target := min(committed()+1+rng.IntN(maxStep), nCommands)
		for committed() < target {
			select {
			case <-poll.C:
			case <-ctx.Done():
				h.kill()
				t.Fatalf("ingester %d: fewer than %d commands committed before the deadline", k, target)
			}
		}
		h.kill()
	}
	var beforeFinal int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM commands`).Scan(&beforeFinal); err != nil {
		t.Fatal(err)
	}
	if beforeFinal == 0 {
		t.Fatal("no command was committed while the ingesters were being killed: the kills hit no work")
	}
	final := e.startHelper(t, 4)
	defer func() {
		_ = final.cmd.Process.Signal(syscall.SIGTERM)
		_ = final.cmd.Wait()
	}()
	select {
	case <-producerDone:
	case <-ctx.Done():
		t.Fatal("not every command got a reply within the deadline")
	}

	stored := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("command %d: %v", i, r.err)
		}
		if r.reply.Status != commands.StatusStored {
			t.Fatalf("command %d: %+v", i, r.reply)
		}
		stored++
		if evs := e.eventsOf(r.id); len(evs) == 0 {
			t.Fatalf("command %d replied stored but has no events", i)
		}
		e.checkObject(r.reply.Address, r.reply.BLAKE3, r.reply.SHA256, r.reply.Size)
	}
	e.checkOneSetPerCommand()

	// No event refers to a missing object.
	evs, err := e.log.Read(ctx, 0, events.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Type != events.TypeObjectStored {
			continue
		}
		p, err := e.codec.DecodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		st := p.(events.ObjectStoredV1)
		e.checkObject(st.Address.String(), digest.New(digest.BLAKE3, [32]byte(st.BLAKE3)).Hex(), digest.New(digest.SHA256, [32]byte(st.SHA256)).Hex(), st.Size)
	}
	// Nothing but complete objects under content-address paths.
	for _, f := range e.objectFiles() {
		parts := strings.Split(filepath.ToSlash(f), "/")
		a, err := digest.Parse(parts[0] + ":" + parts[len(parts)-1])
		if err != nil || filepath.ToSlash(f) != local.ObjectPath(a) {
			t.Fatalf("file %s under the object root is not at a content address", f)
		}
	}
	// Every tree is its object's. A put killed between putting the tree
	// in place and linking the object leaves a tree without an object:
	// harmless, replaced by the next put of that content.
	for _, f := range e.treeFiles() {
		objPath := strings.TrimSuffix(f, ".bao")
		parts := strings.Split(filepath.ToSlash(objPath), "/")
		a, err := digest.Parse(parts[0] + ":" + parts[len(parts)-1])
		if err != nil || filepath.ToSlash(objPath) != local.ObjectPath(a) {
			t.Fatalf("tree %s is not next to a content address", f)
		}
		obj, err := os.ReadFile(filepath.Join(e.root, objPath))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		tree, err := os.ReadFile(filepath.Join(e.root, f))
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := bao.EncodeBuf(obj, blaketree.Group, true); !bytes.Equal(tree, want) {
			t.Fatalf("tree %s is not the tree of its object", f)
		}
	}
	// The final start removed the temp files the killed writers left, and
	// no temp file is left now.
	tmp := 0
	_ = filepath.WalkDir(filepath.Join(e.root, ".tmp"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			tmp++
		}
		return nil
	})
	if tmp != 0 {
		t.Fatalf("%d temp files under .tmp after the run", tmp)
	}
	t.Logf("%d kills, %d commands committed before the last start, %d stored in all, starts cleaned %d temp files of killed writers", kills, beforeFinal, stored, cleaned+final.cleaned)
}

// patternReader yields n deterministic pseudo-random bytes without holding
// them in memory.
type patternReader struct {
	n, off int64
	rng    *rand.ChaCha8
}

func newPatternReader(n int64) *patternReader {
	return &patternReader{n: n, rng: rand.NewChaCha8([32]byte{1, 2, 3})}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rem := r.n - r.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	_, _ = r.rng.Read(p)
	r.off += int64(len(p))
	return len(p), nil
}

// envBigBlob runs the memory test with a 1 GiB blob instead of 256 MiB.
const envBigBlob = "ARTIFACTSTORE_TEST_1GIB"

// TestIngestMemoryIsBounded ingests one large staged blob through an
// ingester process and reads that process's peak RSS (VmHWM): it must stay
// under 64 MiB whatever the blob's size. `make bench` reports the same
// figure for 1 GiB (BenchmarkIngestPeakRSS).
func TestIngestMemoryIsBounded(t *testing.T) {
	t.Parallel()
	size := int64(256 << 20)
	if os.Getenv(envBigBlob) == "1" {
		size = 1 << 30
	}
	if v, err := strconv.ParseInt(os.Getenv("ARTIFACTSTORE_TEST_MEM_MIB"), 10, 64); err == nil {
		size = v << 20
	}
	peak := ingestPeakRSS(t, size)
	t.Logf("ingested %d MiB; ingester peak RSS %.1f MiB", size>>20, float64(peak)/(1<<20))
	limit := int64(64 << 20)
	if raceEnabled {
		// Measured: ~115 MiB for 256 MiB under -race, ~40 MiB without,
		// for 256 MiB and 1 GiB alike. The 64 MiB bound holds for the
		// binary that ships; run `go test -run TestIngestMemoryIsBounded`
		// without -race to check it.
		limit = 200 << 20
	}
	if peak > limit {
		t.Fatalf("ingester peak RSS %.1f MiB for a %d MiB blob; want < %d MiB", float64(peak)/(1<<20), size>>20, limit>>20)
	}
}

// ingestPeakRSS puts one staged blob of size bytes (a pattern, never held
// in memory) through an ingester process, checks the reply, and returns
// the process's peak RSS.
func ingestPeakRSS(t testing.TB, size int64) int64 {
	t.Helper()
	e := newEnv(t)
	h := e.startHelper(t, 2)
	defer h.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := e.client.Put(ctx, producer.Put{Package: "mem", Path: "big.bin", Body: newPatternReader(size), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != commands.StatusStored || r.Size != size {
		t.Fatalf("reply %+v", r)
	}
	d, err := digest.Compute(newPatternReader(size), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Address != d.Address(digest.BLAKE3).String() || r.SHA256 != d.Address(digest.SHA256).Hex() {
		t.Fatalf("reply %+v does not match the blob's digests", r)
	}
	return h.peakRSS(t)
}

func helperLevel() zerolog.Level {
	if l, err := zerolog.ParseLevel(os.Getenv("ARTIFACTSTORE_INGEST_HELPER_LOG")); err == nil && l != zerolog.NoLevel {
		return l
	}
	return zerolog.ErrorLevel
}
