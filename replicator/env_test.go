package replicator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/internal/s3test"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/replicator"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
	"github.com/artifactstore/artifactstore/storage/s3"
)

func TestMain(m *testing.M) { s3test.Main(m) }

// hangGuard bounds every wait; it only stops a hung test.
const hangGuard = 2 * time.Minute

// clock is a test clock that only moves when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// reports collects what served reads found corrupt.
type reports struct {
	mu   sync.Mutex
	seen []*dataplane.CorruptError
}

func (r *reports) ReportCorruption(c *dataplane.CorruptError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, c)
}

func (r *reports) all() []*dataplane.CorruptError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*dataplane.CorruptError(nil), r.seen...)
}

// env is one test's world: a migrated database, two backends (a local
// primary and a mirror, local or S3), the data plane over both, the log,
// the projector and a replicator.
type env struct {
	t       testing.TB
	ctx     context.Context
	pool    *pgxpool.Pool
	codec   *events.Codec
	log     *events.Log
	clock   *clock
	primary storage.Backend
	mirror  storage.Backend
	dp      *dataplane.DataPlane
	reports *reports
	proj    *projector.Projector
	rep     *replicator.Replicator
}

// mirrors are the kinds of second backend every test runs against.
var mirrors = []string{"local", "s3"}

func newEnv(t testing.TB, mirror string, copies map[string]int) *env {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	codec := events.NewCodec()
	e := &env{t: t, ctx: context.Background(), pool: pool, codec: codec, log: events.NewLog(pool, codec),
		clock: &clock{now: time.Now().UTC().Truncate(time.Second)}, reports: &reports{}}
	pb, err := local.Open(t.TempDir(), local.WithClock(e.clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pb.Close() })
	e.primary = pb
	switch mirror {
	case "local":
		mb, err := local.Open(t.TempDir(), local.WithID("mirror"), local.WithClock(e.clock.Now))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = mb.Close() })
		e.mirror = mb
	case "s3":
		srv := s3test.Start(t)
		mb, err := s3.New(srv.Client(), s3.Config{ID: "mirror", Bucket: srv.Bucket(t)})
		if err != nil {
			t.Fatal(err)
		}
		e.mirror = mb
	default:
		t.Fatalf("unknown mirror %q", mirror)
	}
	reg := storage.NewRegistry()
	for _, b := range []storage.Backend{e.primary, e.mirror} {
		if err := reg.Register(b); err != nil {
			t.Fatal(err)
		}
	}
	if e.dp, err = dataplane.New(reg, e.primary.ID(), dataplane.WithCorruptionReporter(e.reports)); err != nil {
		t.Fatal(err)
	}
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	e.proj = projector.New(pool, e.log, codec, projector.Config{Logger: &logger})
	e.rep, err = replicator.New(replicator.Config{
		Pool: pool, Log: e.log, DataPlane: e.dp, Now: e.clock.Now, Logger: logger,
		Policy: replicator.Policy{Backends: []string{e.primary.ID(), e.mirror.ID()}, Copies: copies},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// project brings the projections up to the log's head.
func (e *env) project() {
	e.t.Helper()
	if _, err := e.proj.CatchUp(e.ctx); err != nil {
		e.t.Fatalf("projector: %v", err)
	}
}

var classDays = map[string]int{"transient": 7, "raw-evidence": 90, "summary-evidence": 365, "release-evidence": 2557}

// stored is an object as its object.stored event recorded it.
type stored struct {
	replicator.Stored
	seq int64
}

// ingest records a one-file package the way the ingester commits it:
// the bytes stored on the primary through the data plane, then, in one
// transaction under the package-state lock, the events, the
// command-side rows and the object's gc row.
func (e *env) ingest(pkg, class string, data []byte) stored {
	e.t.Helper()
	s := e.ingestFrom(pkg, class, bytes.NewReader(data))
	e.project()
	return s
}

// ingestFrom is ingest from a stream, without bringing the projections
// up to date.
func (e *env) ingestFrom(pkg, class string, r io.Reader) stored {
	e.t.Helper()
	res, err := e.dp.Ingest(e.ctx, r, dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		e.t.Fatal(err)
	}
	dg, a := res.Digests, res.Address
	var until *time.Time
	if d, ok := classDays[class]; ok {
		u := e.clock.Now().AddDate(0, 0, d)
		until = &u
	}
	s := stored{Stored: replicator.Stored{Address: a, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size, BackendID: e.primary.ID()}}
	err = pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		if err := pkgstate.Lock(e.ctx, tx); err != nil {
			return err
		}
		r, err := e.log.AppendTx(e.ctx, tx, events.Batch{Events: []events.Draft{
			{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test", Payload: events.PackageCreatedV1{Name: pkg, RetentionClass: class}},
			{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test", Payload: events.RetentionAssignedV1{Package: pkg, Class: class, RetainUntil: until}},
			{SubjectKind: events.SubjectObject, SubjectID: a.String(), Actor: "test",
				Payload: events.ObjectStoredV1{Address: a, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size, BackendID: e.primary.ID()}},
			{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test",
				Payload: events.FileAddedV1{Package: pkg, Path: "f", Address: a, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size}},
		}})
		if err != nil {
			return err
		}
		s.seq = r[0].Events[2].Sequence
		md, _ := json.Marshal(map[string]string{})
		if _, err := tx.Exec(e.ctx, `INSERT INTO ingest_packages (name, retention_class, metadata, retain_until, created_seq) VALUES ($1, $2, $3, $4, $5)`,
			pkg, class, md, until, r[0].Events[0].Sequence); err != nil {
			return err
		}
		if _, err := tx.Exec(e.ctx, `INSERT INTO ingest_files (package, path, content_address, added_seq) VALUES ($1, 'f', $2, $3)`,
			pkg, a.String(), s.seq); err != nil {
			return err
		}
		return pkgstate.KeepCopy(e.ctx, tx, pkgstate.Sized{Key: pkgstate.ObjectKey{Address: a.String(), Backend: e.primary.ID()}, Size: dg.Size}, e.clock.Now())
	})
	if err != nil {
		e.t.Fatalf("ingest %s: %v", pkg, err)
	}
	return s
}

// holds reports whether b holds addr.
func (e *env) holds(b storage.Backend, a digest.Address) bool {
	e.t.Helper()
	_, err := b.Head(e.ctx, a)
	return err == nil
}

// damage replaces the stored copy of addr on b with other bytes of the
// same length, behind the data plane's back (as a disk would).
func (e *env) damage(b storage.Backend, a digest.Address, data []byte) {
	e.t.Helper()
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	w, err := b.Create(e.ctx, storage.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer w.Abort()
	if _, err := w.Write(bad); err != nil {
		e.t.Fatal(err)
	}
	h := digest.NewDualHasher()
	defer h.Close()
	h.Write(data)
	h.Sum()
	if _, err := w.Commit(e.ctx, a, h.Tree(), storage.CommitReplace); err != nil {
		e.t.Fatal(err)
	}
}

// count counts the events of type t.
func (e *env) count(t events.Type) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM events WHERE event_type = $1`, string(t)).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// lastSeq returns the sequence of the newest event of type t.
func (e *env) lastSeq(t events.Type) int64 {
	e.t.Helper()
	var n int64
	if err := e.pool.QueryRow(e.ctx, `SELECT coalesce(max(sequence), 0) FROM events WHERE event_type = $1`, string(t)).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// pattern returns n bytes that differ for every seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/251) ^ seed
	}
	return b
}
