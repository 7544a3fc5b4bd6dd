package projector_test

import (
	"bufio"
	"context"
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

const helperEnv = "ARTIFACTSTORE_PROJECTOR_HELPER_DB"

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
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

type helperProc struct {
	cmd     *exec.Cmd
	elected chan struct{}
}

func startHelper(t *testing.T, url string) *helperProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProjectorProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+url)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start projector process: %v", err)
	}
	h := &helperProc{cmd: cmd, elected: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "elected leader") {
				once.Do(func() { close(h.elected) })
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return h
}

// TestFailover runs two projector processes while events flow, SIGKILLs
// the leader, and checks that the standby takes over and that the result
// equals a rebuild from sequence 0: no event applied twice or missed.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	g := newGen(11, coverageMix)
	appendAll(ctx, t, f.log, g.drafts(500), 250)

	a, b := startHelper(t, f.url), startHelper(t, f.url)
	var leader, standby *helperProc
	select {
	case <-a.elected:
		leader, standby = a, b
	case <-b.elected:
		leader, standby = b, a
	case <-time.After(30 * time.Second):
		t.Fatal("no projector process became leader within 30s")
	}

	// Events keep flowing while the leader dies.
	stopAppend := make(chan struct{})
	appendDone := make(chan struct{})
	go func() {
		defer close(appendDone)
		for i := 0; i < 200; i++ {
			select {
			case <-stopAppend:
				return
			default:
			}
			if _, err := f.log.Append(ctx, events.Batch{Events: g.drafts(20)}); err != nil {
				t.Errorf("append: %v", err)
				return
			}
		}
	}()

	// Kill the leader in the middle of its work.
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	for cp := int64(0); cp < 600; cp, _ = projector.Checkpoint(ctx, f.pool, projector.DefaultName) {
		if time.Now().After(deadline) {
			t.Fatalf("leader stuck at checkpoint %d", cp)
		}
		<-tick.C
	}
	tick.Stop()
	select {
	case <-standby.elected:
		t.Fatal("the standby was elected while the leader lived")
	default:
	}
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt, _ := projector.Checkpoint(ctx, f.pool, projector.DefaultName)
	select {
	case <-standby.elected:
	case <-time.After(30 * time.Second):
		t.Fatal("the standby did not take over within 30s of the leader's death")
	}
	<-appendDone
	close(stopAppend)
	head, err := f.log.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := projector.WaitFor(wctx, f.pool, head); err != nil {
		t.Fatalf("WaitFor(%d) after failover (killed at %d): %v", head, killedAt, err)
	}
	t.Logf("leader killed at checkpoint %d; standby caught up to %d", killedAt, head)

	live := snapshot(ctx, t, f.pool, "")
	// The rebuild runs while the standby keeps projecting.
	p := f.projector(t, projector.Config{BatchSize: 1000})
	if err := p.Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	compareSnapshots(t, "after failover vs rebuild", live, snapshot(ctx, t, f.pool, ""))

	// A graceful stop ends the standby-turned-leader cleanly.
	if err := standby.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := standby.cmd.Wait(); err != nil {
		t.Errorf("projector process after SIGTERM: %v", err)
	}
}
