package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/verifier"
)

// ingestCmd runs the ingester role.
type ingestCmd struct {
	Concurrency   int           `help:"Commands handled at once by this process (more processes share the work); many handlers let fsyncs overlap and commits group." default:"32" placeholder:"N"`
	MaxBlobSize   int64         `name:"max-blob-size" help:"Largest blob accepted, in bytes; larger ones are rejected. 0 means unlimited." default:"17179869184" placeholder:"BYTES"`
	CommitWindow  time.Duration `help:"How long the committer gathers concurrent ingests into one transaction (group commit)." default:"2ms"`
	StopTimeout   time.Duration `help:"How long a SIGINT/SIGTERM waits for in-flight ingests before cancelling them (they are redelivered)." default:"30s"`
	stagingFlags  `embed:""`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

// stagingFlags are the ingester's storage reserve and staging janitor
// flags, shared by 'ingest' and 'run'.
type stagingFlags struct {
	StorageReserve string        `help:"Free space the ingester leaves on the storage backend: a blob that does not fit in the free space minus this is refused (insufficient_storage) before any byte is written; suffixes KiB, MiB, GiB." default:"1GiB" placeholder:"BYTES"`
	StagingMaxAge  time.Duration `help:"How old a staged upload must be, with no command waiting to consume it, before the staging janitor purges it (the janitor sweeps every 10 minutes, one ingest process at a time)." default:"30m"`
}

// janitor returns the staging janitor's loop under its leader lock.
func (f stagingFlags) janitor(pool *pgxpool.Pool, js jetstream.JetStream, top bus.Topology, lg zerolog.Logger) (*service.Loop, error) {
	if f.StagingMaxAge <= 0 {
		return nil, fmt.Errorf("--staging-max-age %s must be positive, e.g. 30m", f.StagingMaxAge)
	}
	j, err := ingest.NewJanitor(ingest.JanitorConfig{JetStream: js, Pool: pool, Topology: top, MaxAge: f.StagingMaxAge, Logger: lg})
	if err != nil {
		return nil, err
	}
	return leader.Singleton(pool, leader.Config{Key: leader.KeyStagingJanitor, Name: "staging-janitor", Logger: &lg}, j.Run), nil
}

// reserve parses --storage-reserve.
func (f stagingFlags) reserve() (int64, error) {
	n, err := verifier.ParseBytes(f.StorageReserve)
	if err != nil {
		return 0, fmt.Errorf("--storage-reserve: %w", err)
	}
	return n, nil
}

func (c ingestCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	}
	if c.MaxBlobSize < 0 {
		return fmt.Errorf("--max-blob-size %d is negative; use 0 for unlimited", c.MaxBlobSize)
	}
	reserve, err := c.reserve()
	if err != nil {
		return err
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
	srv, opsSvc := g.opsServer(c.opsFlags, lg, pool, nc, js, dp, bus.RoleIngester)
	codec := events.NewCodec()
	ing, err := ingest.New(ingest.Config{
		Pool: pool, Log: events.NewLog(pool, codec), Codec: codec, DataPlane: dp, NATS: nc, JetStream: js,
		Topology:    cn.top,
		Concurrency: c.Concurrency, MaxBlobSize: maxBlob, CommitWindow: c.CommitWindow, StorageReserve: reserve,
		Logger: lg, Metrics: ingest.NewMetrics(srv.Registry),
	})
	if err != nil {
		return err
	}
	janitor, err := c.janitor(pool, js, cn.top, lg)
	if err != nil {
		return err
	}
	// A janitor that fails stops the ingester (and the process).
	return runServices(ctx, lg, c.StopTimeout, service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "staging janitor", Service: janitor},
		service.Named{Name: "ingester", Service: ing},
	))
}
