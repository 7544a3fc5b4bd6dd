package projector_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/projector"
)

const (
	helperEnv = "ARTIFACTSTORE_PROJECTOR_HELPER_DB"
	// stopEnv tells a helper process where to stop: "<stage> <sequence>"
	// stops it at that stage of the first batch that starts at or after
	// the sequence. It prints stoppedLine and blocks there until killed.
	stopEnv     = "ARTIFACTSTORE_PROJECTOR_HELPER_STOP"
	stoppedLine = "STOPPED"
)

// TestHelperProjectorProcess is not a test: TestFailover runs the test
// binary with it as a projector process. Without the environment variable
// it returns at once.
func TestHelperProjectorProcess(t *testing.T) {
	url := os.Getenv(helperEnv)
	if url == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	codec := events.NewCodec()
	lg := zerolog.New(os.Stdout)
	p := projector.New(pool, events.NewLog(pool, codec), codec, projector.Config{
		BatchSize: 37, PollInterval: 200 * time.Millisecond, ElectInterval: 50 * time.Millisecond, Logger: &lg,
	})
	if spec := os.Getenv(stopEnv); spec != "" {
		var name string
		var from int64
		if _, err := fmt.Sscan(spec, &name, &from); err != nil {
			t.Fatalf("%s=%q: %v", stopEnv, spec, err)
		}
		projector.SetHook(p, func(b projector.BatchPoint) error {
			if b.Checkpoint != projector.DefaultName || b.Stage.String() != name || b.From < from {
				return nil
			}
			fmt.Printf("%s %s %d %d\n", stoppedLine, b.Stage, b.From, b.To)
			<-ctx.Done() // the test SIGKILLs this process here
			return ctx.Err()
		})
	}
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

type helperProc struct {
	cmd      *exec.Cmd
	elected  chan struct{}
	standing chan struct{} // tried to lead and found another leader
	stopped  chan string   // the stoppedLine it printed
	waitOnce sync.Once
	waitErr  error
}

// wait reaps the process (once) and returns how it ended.
func (h *helperProc) wait() error {
	h.waitOnce.Do(func() { h.waitErr = h.cmd.Wait() })
	return h.waitErr
}

// startHelper starts a projector process; stop, if not empty, is its
// stopEnv.
func startHelper(t *testing.T, url, stop string) *helperProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProjectorProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+url, stopEnv+"="+stop)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start projector process: %v", err)
	}
	h := &helperProc{cmd: cmd, elected: make(chan struct{}), standing: make(chan struct{}), stopped: make(chan string, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		var elected, standing sync.Once
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, stoppedLine+" "):
				h.stopped <- line
			case strings.Contains(line, "elected leader"):
				elected.Do(func() { close(h.elected) })
			case strings.Contains(line, "standing by"):
				standing.Do(func() { close(h.standing) })
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = h.wait()
	})
	return h
}

// await waits for c, failing the test after hangGuard.
func await[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(hangGuard):
		t.Fatalf("%s: nothing after %s", what, hangGuard)
	}
	panic("unreachable")
}

// TestFailover runs projector processes while events flow and SIGKILLs the
// leader, round after round, at an injected point of one of its batches:
// with the checkpoint locked, the events read, folded, the rows and the
// checkpoint written but not committed (twice), and committed. Each leader
// is told at which stage of which batch to stop; it says so and blocks
// there, holding its transaction, until it is killed. The standby, started
// while the leader lives, must not lead before the kill and must take over
// after it; the checkpoint must show the killed batch applied only if it
// committed, and the tables after the last round must equal a rebuild
// from sequence 0: no event applied twice or missed.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	g := newGen(11, coverageMix)
	appendAll(ctx, t, f.log, g.drafts(500), 250)
	const flowing = 200 * 20 // events appended while the leaders die

	r := rand.New(rand.NewPCG(11, 11))
	kills := append(projector.BatchStages(), projector.AtWritten)
	r.Shuffle(len(kills), func(i, j int) { kills[i], kills[j] = kills[j], kills[i] })
	stops := make([]string, len(kills)+1) // the last process is not stopped
	for i, st := range kills {
		// Each in a later batch, all before the end of the log.
		stops[i] = fmt.Sprintf("%s %d", st, 300+600*i+r.IntN(400))
	}

	leader := startHelper(t, f.url, stops[0])
	await(t, leader.elected, "the first projector process to lead")

	// Events keep flowing while the leaders die.
	appendDone := make(chan struct{})
	go func() {
		defer close(appendDone)
		for range flowing / 20 {
			if _, err := f.log.Append(ctx, events.Batch{Events: g.drafts(20)}); err != nil {
				t.Errorf("append: %v", err)
				return
			}
		}
	}()

	for i, st := range kills {
		standby := startHelper(t, f.url, stops[i+1])
		await(t, standby.standing, fmt.Sprintf("round %d: the standby to find the leader", i))
		line := await(t, leader.stopped, fmt.Sprintf("round %d: the leader to stop at %s", i, stops[i]))
		var stage string
		var from, to int64
		if _, err := fmt.Sscanf(line, stoppedLine+" %s %d %d", &stage, &from, &to); err != nil || stage != st.String() {
			t.Fatalf("round %d: the leader printed %q (%v); want it stopped at %s", i, line, err, st)
		}
		want := from
		if st == projector.AtCommitted {
			want = to
		}
		if cp, err := projector.Checkpoint(ctx, f.pool, projector.DefaultName); err != nil || cp != want {
			t.Errorf("round %d: leader stopped at %s of %s: checkpoint %d (%v), want %d", i, st, batchName(from, to), cp, err, want)
		}
		select {
		case <-standby.elected:
			t.Fatalf("round %d: the standby was elected while the leader lived", i)
		default:
		}
		if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = leader.wait()
		await(t, standby.elected, fmt.Sprintf("round %d: the standby to take over", i))
		t.Logf("round %d: leader killed at %s of %s; the standby took over", i, st, batchName(from, to))
		leader = standby
	}

	<-appendDone
	head, err := f.log.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(500 + flowing); head < want {
		t.Fatalf("the log has %d events, want at least %d", head, want)
	}
	wctx, cancel := context.WithTimeout(ctx, hangGuard)
	defer cancel()
	if err := projector.WaitFor(wctx, f.pool, head); err != nil {
		t.Fatalf("WaitFor(%d) after %d failovers: %v", head, len(kills), err)
	}

	live := snapshot(ctx, t, f.pool, "")
	// The rebuild runs while the last leader keeps projecting.
	p := f.projector(t, projector.Config{BatchSize: 1000})
	if err := p.Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	compareSnapshots(t, "after failovers vs rebuild", live, snapshot(ctx, t, f.pool, ""))

	// A graceful stop ends the last leader cleanly.
	if err := leader.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := leader.wait(); err != nil {
		t.Errorf("projector process after SIGTERM: %v", err)
	}
}

// batchName names a batch by the events it applies, or by its start
// before it read them.
func batchName(from, to int64) string {
	if to == from {
		return fmt.Sprintf("the batch after %d", from)
	}
	return fmt.Sprintf("the batch %d..%d", from+1, to)
}
