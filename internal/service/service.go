// Package service is the one lifecycle of artifactstore's workers, loops
// and consumers, modelled on river's startstop package:
//
//   - Start(ctx) returns once the service runs (or with the reason it
//     could not start; then nothing of it runs). ctx bounds the start
//     only: the service runs until Stop, and its work sees ctx's values,
//     not its cancellation.
//   - Stop(ctx) is a soft stop: the service takes no new work and lets the
//     work in flight finish. When ctx is done first (cancelled or past its
//     deadline) the stop turns hard: the work in flight is cancelled.
//     Stop returns once the service has stopped, or promptly after ctx is
//     done for work that does not return on cancellation.
//   - Stop is safe twice, concurrently and before Start.
//   - A service runs once: a second Start fails with [ErrStarted], a Start
//     after Stop with [ErrStopped]. Build a new one to run again.
//
// [Loop] turns a loop (a func(ctx) error that runs until ctx is done) into
// a service; [Group] starts services in order and stops them in reverse;
// [Parallel] starts services in order and stops them at once (consumers
// that drain side by side). The leader package wraps single-active loops
// (leader.Singleton).
package service

import (
	"context"
	"errors"
	"sync"
)

// Service is one worker, loop or consumer of a process.
type Service interface {
	// Start returns once the service runs; see the package documentation.
	Start(ctx context.Context) error
	// Stop stops the service: soft until ctx is done, then hard.
	Stop(ctx context.Context) error
}

var (
	// ErrStarted is returned by a second Start.
	ErrStarted = errors.New("service: Start called twice; a service runs once")
	// ErrStopped is returned by a Start after Stop (or after a Start that
	// failed): build a new service to run again.
	ErrStopped = errors.New("service: Start called after Stop; build a new service to run again")
	// ErrStopDeadline means Stop's ctx was done before the service
	// stopped: its work was cancelled (hard stop).
	ErrStopDeadline = errors.New("service: stop deadline passed; work in flight was cancelled")
)

// State is the start/stop bookkeeping every service shares: it refuses a
// second Start and a Start after Stop. The zero value is ready for use.
type State struct {
	mu      sync.Mutex
	started bool
	stopped bool
}

// TryStart runs start unless the service was started or stopped before
// ([ErrStarted], [ErrStopped]). A start that fails leaves the service
// stopped. Calls are serialised, so start never runs concurrently with
// itself or with [State.MarkStopped]'s bookkeeping.
func (s *State) TryStart(start func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
		return ErrStopped
	case s.started:
		return ErrStarted
	}
	if err := start(); err != nil {
		s.stopped = true
		return err
	}
	s.started = true
	return nil
}

// MarkStopped marks the service stopped and reports whether it was running (its
// Start succeeded): only then has the caller anything to stop. It returns
// true to every call after a successful Start, so that a second Stop
// waits for the stop too.
func (s *State) MarkStopped() (running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	return s.started
}

// Loop is a service that runs a function until Stop. The function must
// return soon after its context is done: a loop has no work to drain, so
// its soft stop is its cancellation, and Stop waits for the function to
// return whatever its ctx (a single-active loop releases its lock when it
// returns).
type Loop struct {
	name  string
	run   func(ctx context.Context) error
	state State

	cancel context.CancelFunc
	done   chan struct{}
	err    error // run's result; read after done is closed
}

// NewLoop returns a loop service named name (in errors) around run;
// nothing runs until Start.
func NewLoop(name string, run func(ctx context.Context) error) *Loop {
	return &Loop{name: name, run: run, done: make(chan struct{})}
}

// Name is the loop's name.
func (l *Loop) Name() string { return l.name }

// Start runs the function in its own goroutine and returns.
func (l *Loop) Start(ctx context.Context) error {
	return l.state.TryStart(func() error {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		l.cancel = cancel
		go func() {
			defer close(l.done)
			l.err = l.run(rctx)
		}()
		return nil
	})
}

// Stop cancels the function's context and waits for it to return (ctx
// changes nothing: the cancellation is already the hard stop). A loop
// stopped before Start never runs.
func (l *Loop) Stop(context.Context) error {
	if !l.state.MarkStopped() {
		return nil
	}
	l.cancel()
	<-l.done
	return nil
}

// Done is closed when the function returned. Before a successful Start it
// is never closed.
func (l *Loop) Done() <-chan struct{} { return l.done }

// Err is what the function returned once [Loop.Done] is closed; nil
// before.
func (l *Loop) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}
