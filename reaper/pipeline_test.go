package reaper_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/producer"
)

// pipeline is a real ingester (on its own JetStream topology) storing into
// the env's backend and database, and a producer client for it.
type pipeline struct {
	client *producer.Client
	topo   bus.Topology
}

// startPipeline starts an ingester whose database connections carry
// appName as application_name (so that a test can see, in pg_locks, that
// this ingester waits for the ingest lock) and the env's clock.
func (e *env) startPipeline(srv *natstest.Server, appName string) *pipeline {
	e.t.Helper()
	ctx := context.Background()
	nc := srv.Connect(e.t)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	topo := bus.DefaultTopology().WithPrefix(natstest.Prefix(e.t))
	topo.AckWait = 10 * time.Second
	if err := bus.EnsureTopology(ctx, js, topo); err != nil {
		e.t.Fatal(err)
	}
	pcfg, err := pgxpool.ParseConfig(e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = appName
	pcfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(pool.Close)
	cfg := ingest.Config{
		Pool: pool, Log: e.log, Codec: e.codec, DataPlane: e.dp, NATS: nc, JetStream: js,
		Topology: topo, Concurrency: 8, RetryDelay: 50 * time.Millisecond,
		Logger: zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
		Now:    e.clock.Now,
	}
	cfg.Consumer.FetchWait = 200 * time.Millisecond
	ing, err := ingest.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := ing.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := ing.Stop(sctx); err != nil {
			e.t.Errorf("stop ingester: %v", err)
		}
	})
	client, err := producer.New(ctx, producer.Config{NATS: nc, JetStream: js, Topology: topo, Codec: e.codec, Producer: appName})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = client.Close() })
	return &pipeline{client: client, topo: topo}
}

// send publishes one put without waiting for its reply.
func (p *pipeline) send(ctx context.Context, pkg, path, class string, data []byte) (*producer.Pending, error) {
	return p.client.Put(ctx, producer.Put{Package: pkg, Path: path, Class: class, Body: bytes.NewReader(data), Size: int64(len(data))})
}

func (p *pipeline) put(t testing.TB, pkg, path, class string, data []byte) commands.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	pend, err := p.send(ctx, pkg, path, class, data)
	if err != nil {
		t.Fatalf("put %s/%s: %v", pkg, path, err)
	}
	r, err := pend.Wait(ctx)
	if err != nil {
		t.Fatalf("put %s/%s: %v", pkg, path, err)
	}
	if r.Status != commands.StatusStored {
		t.Fatalf("put %s/%s: %+v", pkg, path, r)
	}
	return r
}

// commit ingests data as package pkg and waits until the reference is
// committed.
func (p *pipeline) commit(ctx context.Context, pkg string, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, hangGuard)
	defer cancel()
	pend, err := p.send(ctx, pkg, "f", "transient", data)
	if err != nil {
		return fmt.Errorf("put %s: %w", pkg, err)
	}
	r, err := pend.Wait(ctx)
	if err != nil {
		return fmt.Errorf("put %s: no reply within %s: %w", pkg, hangGuard, err)
	}
	if r.Status != commands.StatusStored {
		return fmt.Errorf("put %s: %+v", pkg, r)
	}
	return nil
}

// awaitLockWaiter returns once a connection of application appName waits
// for the ingest lock, or an error after hangGuard. PostgreSQL signals no
// lock wait, so it polls pg_locks; the bound only stops a hung test.
func (e *env) awaitLockWaiter(ctx context.Context, appName string, a digest.Address) error {
	ctx, cancel := context.WithTimeout(ctx, hangGuard)
	defer cancel()
	for {
		waiting, err := e.waitingForLock(ctx, appName)
		if ctx.Err() != nil {
			return fmt.Errorf("the ingest of %s by %s never waited for the ingest lock within %s", a, appName, hangGuard)
		}
		if err != nil {
			return err
		}
		if waiting {
			return nil
		}
		runtime.Gosched()
	}
}

// waitingForLock reports whether a connection of application appName waits
// for the ingest advisory lock in the env's database.
func (e *env) waitingForLock(ctx context.Context, appName string) (bool, error) {
	var n int
	err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND NOT l.granted AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND a.application_name = $3`, uint32(0x61727469), uint32(0x66616374), appName).Scan(&n)
	return n > 0, err
}
