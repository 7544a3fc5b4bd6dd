package main

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/internal/service"
)

// runServicesEnv builds the services of 'run' on a real PostgreSQL
// database, a NATS server of the test's own and a local backend; each call
// of build returns new instances (a service runs once).
func runServicesEnv(t *testing.T) (build func() *service.Group) {
	t.Helper()
	_, dbURL := pgtest.NewDB(t)
	ns := natstest.StartEmbedded(t, nil)
	var g Globals
	var c runCmd
	for _, v := range []any{&g, &c} {
		if err := kong.ApplyDefaults(v); err != nil {
			t.Fatal(err)
		}
	}
	g.DatabaseURL, g.NATSURL, g.DataDir, g.HTTPAddr = dbURL, ns.URL(), t.TempDir(), "127.0.0.1:0"
	lg := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	ctx := t.Context()
	cn, err := g.connect(ctx, "run", topologyFlags{ApplyTopology: true, replicasFlag: c.replicasFlag}, lg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cn.Close)
	dp, be, err := g.storage(ctx, lg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	codec := events.NewCodec()
	evlog := events.NewLog(cn.pool, codec)
	return func() *service.Group {
		t.Helper()
		_, rrService := readReporter(&lg)
		svcs, _, err := c.services(&g, lg, cn, dp, be, evlog, codec, rrService(dp, evlog, cn.pool, codec))
		if err != nil {
			t.Fatal(err)
		}
		return svcs
	}
}

// flatten lists the leaves of a group: every worker, loop and consumer.
func flatten(ms []service.Named) []service.Named {
	var out []service.Named
	for _, m := range ms {
		switch s := m.Service.(type) {
		case *service.Group:
			out = append(out, flatten(s.Members())...)
		case *service.Parallel:
			out = append(out, flatten(s.Members())...)
		default:
			out = append(out, m)
		}
	}
	return out
}

// memberOf returns the member name of a fresh group of build.
func memberOf(t *testing.T, build func() *service.Group, name string) service.Service {
	t.Helper()
	for _, m := range flatten(build().Members()) {
		if m.Name == name {
			return m.Service
		}
	}
	t.Fatalf("no service %q in run", name)
	return nil
}

// TestEveryServiceKeepsTheLifecycle runs the lifecycle contract of
// internal/service against every service 'run' starts (and against run's
// group as a whole): Start returns once running and Stop stops it; a
// second Start fails; Stop is safe before Start (and Start then fails:
// a service runs once) and twice, also concurrently; Stop with a cancelled
// ctx returns (hard stop) and leaves the service stopped. Every wait is
// bounded by the test's own timeout only: a hang is the failure.
func TestEveryServiceKeepsTheLifecycle(t *testing.T) {
	t.Parallel()
	build := runServicesEnv(t)
	names := []string{}
	for _, m := range flatten(build().Members()) {
		names = append(names, m.Name)
	}
	if len(names) < 11 {
		t.Fatalf("run has %d services (%v); want at least the 11 roles", len(names), names)
	}
	bg := context.Background()
	check := func(t *testing.T, fresh func() service.Service) {
		t.Run("start then stop twice", func(t *testing.T) {
			s := fresh()
			if err := s.Start(bg); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if err := s.Stop(bg); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if err := s.Stop(bg); err != nil {
				t.Fatalf("second Stop: %v", err)
			}
			if err := s.Start(bg); err == nil {
				t.Fatal("Start after Stop succeeded; a service runs once")
			}
		})
		t.Run("second start fails", func(t *testing.T) {
			s := fresh()
			if err := s.Start(bg); err != nil {
				t.Fatalf("Start: %v", err)
			}
			defer func() { _ = s.Stop(bg) }()
			if err := s.Start(bg); !errors.Is(err, service.ErrStarted) {
				t.Fatalf("second Start = %v, want service.ErrStarted", err)
			}
		})
		t.Run("stop before start", func(t *testing.T) {
			s := fresh()
			if err := s.Stop(bg); err != nil {
				t.Fatalf("Stop before Start: %v", err)
			}
			if err := s.Start(bg); !errors.Is(err, service.ErrStopped) {
				t.Fatalf("Start after Stop = %v, want service.ErrStopped", err)
			}
			if err := s.Stop(bg); err != nil {
				t.Fatalf("second Stop: %v", err)
			}
		})
		t.Run("concurrent stops", func(t *testing.T) {
			s := fresh()
			if err := s.Start(bg); err != nil {
				t.Fatalf("Start: %v", err)
			}
			var wg sync.WaitGroup
			errs := make([]error, 3)
			for i := range errs {
				wg.Go(func() { errs[i] = s.Stop(bg) })
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Errorf("Stop: %v", err)
				}
			}
		})
		t.Run("hard stop", func(t *testing.T) {
			s := fresh()
			if err := s.Start(bg); err != nil {
				t.Fatalf("Start: %v", err)
			}
			cancelled, cancel := context.WithCancel(bg)
			cancel()
			if err := s.Stop(cancelled); err != nil && !errors.Is(err, service.ErrStopDeadline) {
				t.Fatalf("Stop with a cancelled ctx = %v; want nil or a stop-deadline error", err)
			}
			if err := s.Start(bg); err == nil {
				t.Fatal("Start after a hard stop succeeded")
			}
		})
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			check(t, func() service.Service { return memberOf(t, build, name) })
		})
	}
	t.Run("run", func(t *testing.T) {
		check(t, func() service.Service { return build() })
	})
}
