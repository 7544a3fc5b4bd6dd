package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/status"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

// objectsDir is where the local backend keeps object bytes when --storage
// names no backend.
func (g *Globals) objectsDir() string { return filepath.Join(g.DataDir, "objects") }

// readReporter returns the corruption reporter of a process that serves
// reads, and the function that makes its service once the data plane
// exists: a read that meets corrupt bytes is verified at once, so
// object.corrupt is in the log within seconds (see verifier.ReadReporter).
func readReporter(lg *zerolog.Logger) (*verifier.ReadReporter, func(dp *dataplane.DataPlane, log *events.Log, pool *pgxpool.Pool, codec *events.Codec) service.Service) {
	rr := verifier.NewReadReporter(verifier.ReadReporterConfig{Logger: lg})
	return rr, func(dp *dataplane.DataPlane, log *events.Log, pool *pgxpool.Pool, codec *events.Codec) service.Service {
		return rr.Service(verifier.NewWorker(dp, log, pool, codec, nil, verifier.WorkerConfig{Actor: "read-check", Logger: lg}))
	}
}

// opsFlags are the flags of a role's operator endpoints.
type opsFlags struct {
	NoOps bool `name:"no-ops" help:"Do not serve /metrics, /healthz and /readyz on --http-addr (e.g. several roles on one host without distinct addresses)."`
}

// opsServer builds the operator server of a role (readiness checks of what
// it uses, the status metrics of what role may read on NATS) and its
// service: serving on --http-addr, or nothing with --no-ops.
func (g *Globals) opsServer(f opsFlags, lg zerolog.Logger, pool *pgxpool.Pool, nc *nats.Conn, js jetstream.JetStream, dp *dataplane.DataPlane, role string) (*ops.Server, service.Service) {
	srv := ops.New(lg, g.HTTPAddr)
	addReadyChecks(srv, pool, nc, dp)
	srv.Registry.MustRegister(status.NewCollector(statusSources(pool, js, 7*24*time.Hour, 0, role)))
	if f.NoOps {
		return srv, service.NewGroup()
	}
	return srv, opsService{srv: srv, hint: " or --no-ops", stop: opsStopTimeout}
}

// opsStopTimeout is how long the operator endpoints of a role get to
// finish their requests at stop, counted from their own stop.
const opsStopTimeout = 5 * time.Second

// opsService is an operator (or API) server as a role's service: its start
// error names --http-addr; its stop gets its own budget (stop) and, as
// before services, its errors are not the process's (an endpoint cut off
// at exit is no failure).
type opsService struct {
	srv  *ops.Server
	hint string
	stop time.Duration
}

func (o opsService) Start(ctx context.Context) error {
	if err := o.srv.Start(ctx); err != nil {
		return fmt.Errorf("serve --http-addr %s (another process on it? pass another address%s): %w", o.srv.ListenAddr(), o.hint, err)
	}
	return nil
}

func (o opsService) Stop(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.stop)
	defer cancel()
	_ = o.srv.Stop(sctx)
	return nil
}

// runServices is every role's main loop: it starts the services in order,
// waits for a signal (ctx) or the first service that fails, and stops them
// in reverse order, within stopTimeout before in-flight work is cancelled.
func runServices(ctx context.Context, lg zerolog.Logger, stopTimeout time.Duration, svcs *service.Group) error {
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	return stopServices(ctx, lg, stopTimeout, svcs)
}

// stopServices waits for a signal (ctx) or the first service of svcs that
// fails, then stops them in reverse order within stopTimeout.
func stopServices(ctx context.Context, lg zerolog.Logger, stopTimeout time.Duration, svcs *service.Group) error {
	err := svcs.Wait(ctx)
	if err != nil {
		lg.Error().Err(err).Msg("a role failed; stopping")
	} else {
		lg.Info().Msg("signal received; stopping")
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	return errors.Join(err, svcs.Stop(sctx))
}

// requester connects a client command to NATS for commands that wait for
// their replies. The returned close function closes the requester, then
// the connection.
func (g *Globals) requester(ctx context.Context, name string, lg zerolog.Logger) (*bus.Requester, jetstream.JetStream, func(), error) {
	nc, js, err := g.natsConn(ctx, name, lg)
	if err != nil {
		return nil, nil, nil, err
	}
	req, err := bus.NewRequester(nc, js)
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return req, js, func() {
		_ = req.Close()
		nc.Close()
	}, nil
}
