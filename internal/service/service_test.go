package service_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/internal/service"
)

// hang bounds every wait: it only stops a hung test.
const hang = time.Minute

// recorder is a service that records its starts and stops in a shared
// journal, and can be told to fail its start.
type recorder struct {
	name    string
	journal *journal
	failErr error
	state   service.State
	once    sync.Once
}

type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(s string) { j.mu.Lock(); j.lines = append(j.lines, s); j.mu.Unlock() }
func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.lines)
}

func (r *recorder) Start(context.Context) error {
	return r.state.TryStart(func() error {
		if r.failErr != nil {
			return r.failErr
		}
		r.journal.add("start " + r.name)
		return nil
	})
}

func (r *recorder) Stop(context.Context) error {
	if r.state.MarkStopped() {
		r.once.Do(func() { r.journal.add("stop " + r.name) })
	}
	return nil
}

func TestGroupStartsInOrderAndStopsInReverse(t *testing.T) {
	t.Parallel()
	j := &journal{}
	g := service.NewGroup()
	for _, n := range []string{"a", "b", "c"} {
		g.Add(n, &recorder{name: n, journal: j})
	}
	ctx := context.Background()
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(ctx); !errors.Is(err, service.ErrStarted) {
		t.Fatalf("second Start = %v, want ErrStarted", err)
	}
	if err := g.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"start a", "start b", "start c", "stop c", "stop b", "stop a"}
	if got := j.get(); !slices.Equal(got, want) {
		t.Fatalf("journal = %v, want %v", got, want)
	}
}

// TestGroupStartFailureStopsWhatStarted fails the start at each member in
// turn (a failing member, and a failure injected before a member starts):
// the members before it are stopped in reverse, none after it starts.
func TestGroupStartFailureStopsWhatStarted(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for at := range 3 {
		for _, injected := range []bool{false, true} {
			j := &journal{}
			names := []string{"a", "b", "c"}
			g := service.NewGroup()
			for i, n := range names {
				r := &recorder{name: n, journal: j}
				if i == at && !injected {
					r.failErr = boom
				}
				g.Add(n, r)
			}
			if injected {
				g.SetHooks(service.Hooks{BeforeStart: func(name string) error {
					if name == names[at] {
						return boom
					}
					return nil
				}})
			}
			err := g.Start(context.Background())
			if !errors.Is(err, boom) {
				t.Fatalf("at %d (injected %v): Start = %v, want boom", at, injected, err)
			}
			var want []string
			for _, n := range names[:at] {
				want = append(want, "start "+n)
			}
			for i := at - 1; i >= 0; i-- {
				want = append(want, "stop "+names[i])
			}
			if got := j.get(); !slices.Equal(got, want) {
				t.Fatalf("at %d (injected %v): journal = %v, want %v", at, injected, got, want)
			}
			if err := g.Start(context.Background()); !errors.Is(err, service.ErrStopped) {
				t.Fatalf("Start after a failed Start = %v, want ErrStopped", err)
			}
			if err := g.Stop(context.Background()); err != nil {
				t.Fatalf("Stop after a failed Start = %v", err)
			}
		}
	}
}

// TestLoopLifecycle: Start returns while the function runs (it blocks
// until cancelled); Stop cancels it and waits for it; Stop before Start
// keeps it from ever running.
func TestLoopLifecycle(t *testing.T) {
	t.Parallel()
	running := make(chan struct{})
	returned := make(chan struct{})
	l := service.NewLoop("l", func(ctx context.Context) error {
		close(running)
		<-ctx.Done()
		close(returned)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel() // Start's ctx bounds the start only
	select {
	case <-running:
	case <-time.After(hang):
		t.Fatal("the loop never ran")
	}
	if err := l.Start(context.Background()); !errors.Is(err, service.ErrStarted) {
		t.Fatalf("second Start = %v", err)
	}
	select {
	case <-returned:
		t.Fatal("cancelling Start's ctx stopped the loop")
	default:
	}
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-returned:
	default:
		t.Fatal("Stop returned before the loop did")
	}
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	never := service.NewLoop("never", func(context.Context) error { t.Error("a loop stopped before Start ran"); return nil })
	if err := never.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := never.Start(context.Background()); !errors.Is(err, service.ErrStopped) {
		t.Fatalf("Start after Stop = %v", err)
	}
}

// TestGroupWaitReportsAFailedLoop: a loop that fails ends Wait with its
// error, naming it; a loop that ends cleanly does not.
func TestGroupWaitReportsAFailedLoop(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	fail := make(chan struct{})
	g := service.NewGroup(
		service.Named{Name: "clean", Service: service.NewLoop("clean", func(context.Context) error { return nil })},
		service.Named{Name: "inner", Service: service.NewParallel(service.Named{Name: "failing", Service: service.NewLoop("failing", func(ctx context.Context) error {
			select {
			case <-fail:
				return boom
			case <-ctx.Done():
				return nil
			}
		})})},
	)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(fail)
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	err := g.Wait(ctx)
	if !errors.Is(err, boom) || err.Error() != "inner/failing: boom" {
		t.Fatalf("Wait = %v, want inner/failing: boom", err)
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// blocker is a service whose Stop drains until released (a soft stop)
// and is cut short by its ctx (a hard stop).
type blocker struct {
	state    service.State
	release  chan struct{}
	stopping chan struct{}
}

func (b *blocker) Start(context.Context) error { return b.state.TryStart(func() error { return nil }) }
func (b *blocker) Stop(ctx context.Context) error {
	if !b.state.MarkStopped() {
		return nil
	}
	close(b.stopping)
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return service.ErrStopDeadline
	}
}

// TestParallelStopsAtOnce: a Parallel stops its members concurrently:
// the second member is asked to stop while the first still drains.
func TestParallelStopsAtOnce(t *testing.T) {
	t.Parallel()
	a := &blocker{release: make(chan struct{}), stopping: make(chan struct{})}
	b := &blocker{release: make(chan struct{}), stopping: make(chan struct{})}
	p := service.NewParallel(service.Named{Name: "a", Service: a}, service.Named{Name: "b", Service: b})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { stopped <- p.Stop(ctx) }()
	for _, s := range []*blocker{a, b} {
		select {
		case <-s.stopping:
		case <-time.After(hang):
			t.Fatal("a member was not asked to stop while the other drained")
		}
	}
	close(a.release)
	cancel() // b drains forever: the hard stop cuts it
	select {
	case err := <-stopped:
		if !errors.Is(err, service.ErrStopDeadline) {
			t.Fatalf("Stop = %v, want b's ErrStopDeadline", err)
		}
	case <-time.After(hang):
		t.Fatal("Stop with a cancelled ctx hung")
	}
}
