package main

import (
	"context"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
)

// ingestCmd runs the ingester role.
type ingestCmd struct {
	Concurrency   int           `help:"Commands handled at once by this process (more processes share the work); many handlers let fsyncs overlap and commits group." default:"32" placeholder:"N"`
	MaxBlobSize   int64         `name:"max-blob-size" help:"Largest blob accepted, in bytes; larger ones are rejected. 0 means unlimited." default:"17179869184" placeholder:"BYTES"`
	CommitWindow  time.Duration `help:"How long the committer gathers concurrent ingests into one transaction (group commit)." default:"2ms"`
	StopTimeout   time.Duration `help:"How long a SIGINT/SIGTERM waits for in-flight ingests before cancelling them (they are redelivered)." default:"30s"`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

func (c ingestCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	}
	if c.MaxBlobSize < 0 {
		return fmt.Errorf("--max-blob-size %d is negative; use 0 for unlimited", c.MaxBlobSize)
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	cn, err := g.connect(ctx, bus.RoleIngester, c.topologyFlags, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	pool, nc, js := cn.pool, cn.nc, cn.js
	dp, err := g.dataPlane(ctx, lg)
	if err != nil {
		return err
	}
	maxBlob := c.MaxBlobSize
	if maxBlob == 0 {
		maxBlob = -1
	}
	srv, stopOps, err := g.serveOps(ctx, c.opsFlags, lg, pool, nc, js, dp, bus.RoleIngester)
	if err != nil {
		return err
	}
	defer stopOps()
	codec := events.NewCodec()
	ing, err := ingest.New(ingest.Config{
		Pool: pool, Log: events.NewLog(pool, codec), Codec: codec, DataPlane: dp, NATS: nc, JetStream: js,
		Topology:    cn.top,
		Concurrency: c.Concurrency, MaxBlobSize: maxBlob, CommitWindow: c.CommitWindow,
		Logger: lg, Metrics: ingest.NewMetrics(srv.Registry),
	})
	if err != nil {
		return err
	}
	if err := ing.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	lg.Info().Msg("signal received; stopping the ingester")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.StopTimeout)
	defer cancel()
	return ing.Stop(sctx)
}
