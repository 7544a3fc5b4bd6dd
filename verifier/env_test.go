package verifier_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
	"github.com/artifactstore/artifactstore/verifier"
)

// env is one test's world: its own database, object root and (when asked
// for) NATS topology.
type env struct {
	t      testing.TB
	pool   *pgxpool.Pool
	root   string
	dp     *dataplane.DataPlane
	log    *events.Log
	codec  *events.Codec
	logger zerolog.Logger

	nc   *nats.Conn
	js   jetstream.JetStream
	topo bus.Topology
}

func newEnv(t testing.TB, opts ...dataplane.Option) *env {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	e := &env{t: t, pool: pool, root: t.TempDir(), codec: events.NewCodec()}
	if _, ok := t.(*testing.B); ok {
		e.logger = zerolog.Nop()
	} else {
		e.logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	b, err := local.Open(e.root)
	if err != nil {
		t.Fatalf("open local backend: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	if e.dp, err = dataplane.New(reg, b.ID(), opts...); err != nil {
		t.Fatal(err)
	}
	e.log = events.NewLog(pool, e.codec)
	return e
}

// hang bounds the waits of these tests. It only stops a hung test: no wait
// is expected to come near it, however slow or busy the machine.
const hang = 3 * time.Minute

// withNATS starts a server and creates a topology with a unique prefix.
func (e *env) withNATS() *env {
	e.t.Helper()
	srv := natstest.Start(e.t)
	e.nc = srv.Connect(e.t)
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		e.t.Fatal(err)
	}
	// The default AckWait (30 s): no test here waits for one to lapse.
	e.topo = bus.DefaultTopology().WithPrefix(natstest.Prefix(e.t))
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	if err := bus.EnsureTopology(ctx, e.js, e.topo); err != nil {
		e.t.Fatalf("ensure topology: %v", err)
	}
	return e
}

func (e *env) worker(name string) *verifier.Worker {
	l := e.logger.With().Str("worker", name).Logger()
	return verifier.NewWorker(e.dp, e.log, e.pool, e.codec, e.nc, verifier.WorkerConfig{
		Concurrency: 2, Logger: &l, RetryDelay: 100 * time.Millisecond,
		// Short pulls make stops quick (a soft stop waits for the pull in
		// flight); an expired pull is issued again, so it is no deadline.
		Consumer:  bus.ConsumerOptions{FetchWait: 200 * time.Millisecond, StopTimeout: hang},
		JetStream: e.js, Topology: e.topo,
	})
}

// store puts data on the local backend and records its location as the
// projector would after object.stored.
func (e *env) store(data []byte) digest.Address {
	e.t.Helper()
	ctx := context.Background()
	res, err := e.dp.Ingest(ctx, bytes.NewReader(data), dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		e.t.Fatalf("ingest: %v", err)
	}
	e.insertLocation(res.Address, res.Digests, time.Now())
	return res.Address
}

func (e *env) insertLocation(addr digest.Address, d digest.Digests, storedAt time.Time) {
	e.t.Helper()
	_, err := e.pool.Exec(context.Background(), `INSERT INTO storage_locations
		(content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, stored_at)
		VALUES ($1, 'local', $2, $3, $4, $5, $6)`,
		addr.String(), addr.Algorithm().String(), d.BLAKE3[:], d.SHA256[:], d.Size, storedAt)
	if err != nil {
		e.t.Fatalf("insert storage_locations: %v", err)
	}
}

// path is the file of addr on the local backend.
func (e *env) path(addr digest.Address) string {
	return filepath.Join(e.root, filepath.FromSlash(local.ObjectPath(addr)))
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// rewrite replaces the stored file's bytes (the file is read-only).
func rewrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o444); err != nil {
		t.Fatal(err)
	}
}
