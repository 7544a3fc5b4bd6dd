package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/status"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// objectsDir is where the local backend keeps object bytes.
func (g *Globals) objectsDir() string { return filepath.Join(g.DataDir, "objects") }

// dataPlane opens the local backend under the data directory and returns the
// data plane over it.
func (g *Globals) dataPlane(logger zerolog.Logger, opts ...dataplane.Option) (*dataplane.DataPlane, error) {
	dp, _, err := g.storage(logger, opts...)
	return dp, err
}

// storage opens the local backend under the data directory and returns the
// data plane over it and the backend itself (the reaper walks and
// quarantines through it). This is the only place that knows a concrete
// backend.
func (g *Globals) storage(logger zerolog.Logger, opts ...dataplane.Option) (*dataplane.DataPlane, *local.Backend, error) {
	b, err := local.Open(g.objectsDir())
	if err != nil {
		return nil, nil, fmt.Errorf("open object storage under --data-dir %s: %w", g.DataDir, err)
	}
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		return nil, nil, err
	}
	if n := b.CleanedTemp(); n > 0 {
		logger.Info().Int("files", n).Str("dir", g.objectsDir()).Msg("removed temp files of interrupted writes")
	}
	dp, err := dataplane.New(reg, b.ID(), opts...)
	if err != nil {
		return nil, nil, err
	}
	return dp, b, nil
}

// opsFlags are the flags of a role's operator endpoints.
type opsFlags struct {
	NoOps bool `name:"no-ops" help:"Do not serve /metrics, /healthz and /readyz on --http-addr (e.g. several roles on one host without distinct addresses)."`
}

// serveOps builds the operator server of a role (readiness checks of what
// it uses, the status metrics of what role may read on NATS) and, unless
// --no-ops, starts it on --http-addr. The returned stop function is safe
// to defer.
func (g *Globals) serveOps(ctx context.Context, f opsFlags, lg zerolog.Logger, pool *pgxpool.Pool, nc *nats.Conn, js jetstream.JetStream, dp *dataplane.DataPlane, role string) (*ops.Server, func(), error) {
	srv := ops.New(lg)
	addReadyChecks(srv, pool, nc, dp)
	srv.Registry.MustRegister(status.NewCollector(statusSources(pool, js, 7*24*time.Hour, 0, role)))
	if f.NoOps {
		return srv, func() {}, nil
	}
	if err := srv.Start(g.HTTPAddr); err != nil {
		return nil, nil, fmt.Errorf("serve --http-addr %s (another process on it? pass another address or --no-ops): %w", g.HTTPAddr, err)
	}
	return srv, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Stop(sctx)
	}, nil
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
