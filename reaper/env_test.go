package reaper_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// hangGuard bounds every wait of these tests on a signal or a reply; it
// only stops a hung test, however slow the machine.
const hangGuard = 60 * time.Second

// clock is a test clock that only moves when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now().UTC().Truncate(time.Second)} }

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

// env is one test's world: a migrated database, a local backend in a temp
// directory, the data plane over it, the log and a clock.
type env struct {
	t     testing.TB
	pool  *pgxpool.Pool
	dbURL string
	codec *events.Codec
	log   *events.Log
	root  string
	be    *local.Backend
	dp    *dataplane.DataPlane
	clock *clock
}

func newEnv(t testing.TB) *env {
	t.Helper()
	pool, dbURL := pgtest.NewDB(t)
	return openEnv(t, pool, dbURL, t.TempDir(), newClock())
}

func openEnv(t testing.TB, pool *pgxpool.Pool, dbURL, root string, c *clock) *env {
	t.Helper()
	codec := events.NewCodec()
	e := &env{t: t, pool: pool, dbURL: dbURL, codec: codec, log: events.NewLog(pool, codec), root: root, clock: c}
	be, err := local.Open(root, local.WithClock(c.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(be); err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(reg, be.ID())
	if err != nil {
		t.Fatal(err)
	}
	e.be, e.dp = be, dp
	return e
}

func (e *env) config(mod func(*reaper.Config)) reaper.Config {
	cfg := reaper.Config{
		Pool: e.pool, Log: e.log, DataPlane: e.dp,
		Stores:      []reaper.Store{{BackendID: e.be.ID(), Lister: e.be, Quarantiner: e.be}},
		BatchSize:   3, // small, so that every phase runs several batches
		BatchJitter: -1,
		Now:         e.clock.Now,
		Logger:      zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
	}
	if mod != nil {
		mod(&cfg)
	}
	return cfg
}

func (e *env) reaper(mod func(*reaper.Config)) *reaper.Reaper {
	e.t.Helper()
	r, err := reaper.New(e.config(mod))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) runOnce(r *reaper.Reaper) reaper.Report {
	e.t.Helper()
	rep, err := r.RunOnce(context.Background())
	if err != nil {
		e.t.Fatalf("RunOnce: %v", err)
	}
	return rep
}

// store puts bytes on the backend (as an ingest's put does) and returns
// their address.
func (e *env) store(data []byte) digest.Address {
	e.t.Helper()
	res, err := e.dp.Ingest(context.Background(), bytes.NewReader(data), dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Address
}

var classDays = map[string]int{"transient": 7, "raw-evidence": 90, "summary-evidence": 365, "release-evidence": 2557}

// ingest records a package with files the way the ingester commits it:
// the bytes stored, then, in one transaction under the ingest lock, the
// events, the command-side rows, and each object's gc row taken FOR
// UPDATE and set live.
func (e *env) ingest(pkg, class string, files map[string][]byte) map[string]digest.Address {
	e.t.Helper()
	ctx := context.Background()
	out := map[string]digest.Address{}
	sizes := map[string]int64{}
	for path, data := range files {
		out[path] = e.store(data)
		sizes[path] = int64(len(data))
	}
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pkgstate.KeyPackageState); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ingest_packages WHERE name = $1)`, pkg).Scan(&exists); err != nil {
			return err
		}
		var drafts []events.Draft
		var until *time.Time
		if d, ok := classDays[class]; ok {
			u := e.clock.Now().AddDate(0, 0, d)
			until = &u
		}
		if !exists {
			drafts = append(drafts,
				events.Draft{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test", Payload: events.PackageCreatedV1{Name: pkg, RetentionClass: class}},
				events.Draft{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test", Payload: events.RetentionAssignedV1{Package: pkg, Class: class, RetainUntil: until}})
		}
		for path, a := range out {
			dg, err := digest.Compute(bytes.NewReader(files[path]), nil)
			if err != nil {
				return err
			}
			drafts = append(drafts,
				events.Draft{SubjectKind: events.SubjectObject, SubjectID: a.String(), Actor: "test",
					Payload: events.ObjectStoredV1{Address: a, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size, BackendID: e.be.ID()}},
				events.Draft{SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test",
					Payload: events.FileAddedV1{Package: pkg, Path: path, Address: a, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size}})
		}
		res, err := e.log.AppendTx(ctx, tx, events.Batch{Events: drafts})
		if err != nil {
			return err
		}
		seq := res[0].Events[0].Sequence
		if !exists {
			md, _ := json.Marshal(map[string]string{})
			if _, err := tx.Exec(ctx, `INSERT INTO ingest_packages (name, retention_class, metadata, retain_until, created_seq) VALUES ($1, $2, $3, $4, $5)`,
				pkg, class, md, until, seq); err != nil {
				return err
			}
		}
		for path, a := range out {
			if _, err := tx.Exec(ctx, `INSERT INTO ingest_files (package, path, content_address, added_seq) VALUES ($1, $2, $3, $4)
				ON CONFLICT (package, path) DO UPDATE SET content_address = excluded.content_address`, pkg, path, a.String(), seq); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO gc_objects (content_address, backend_id, size_bytes, state) VALUES ($1, $2, $3, 'live')
				ON CONFLICT (content_address, backend_id) DO UPDATE SET state = 'live', marked_at = NULL`, a.String(), e.be.ID(), sizes[path]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("ingest %s: %v", pkg, err)
	}
	return out
}

func (e *env) exists(a digest.Address) bool {
	e.t.Helper()
	_, err := e.be.Head(context.Background(), a)
	if errors.Is(err, storage.ErrNotFound) {
		return false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return true
}

func (e *env) countEvents(t events.Type) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE event_type = $1`, string(t)).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) head() int64 {
	e.t.Helper()
	h, err := e.log.Head(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func (e *env) gcState(a digest.Address) string {
	e.t.Helper()
	var s string
	err := e.pool.QueryRow(context.Background(), `SELECT state FROM gc_objects WHERE content_address = $1`, a.String()).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return "absent"
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

// checkLiveBytes fails when a live package (not expired, or held) has a
// file whose bytes are missing or do not verify. It reads the references
// under the ingest lock, so it sees no half-done sweep.
func (e *env) checkLiveBytes(ctx context.Context) {
	e.t.Helper()
	var addrs []string
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pkgstate.KeyPackageState); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT DISTINCT f.content_address FROM ingest_files f JOIN ingest_packages p ON p.name = f.package
			WHERE p.expired_at IS NULL OR p.legal_hold`)
		if err != nil {
			return err
		}
		addrs, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, s := range addrs {
			a, err := digest.Parse(s)
			if err != nil {
				return err
			}
			if _, err := e.be.Head(ctx, a); err != nil {
				return fmt.Errorf("live content %s: %w", a, err)
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("a live reference points at missing bytes: %v", err)
	}
	for _, s := range addrs {
		a, _ := digest.Parse(s)
		res, err := e.dp.Verify(ctx, "", a, dataplane.Expected{Size: -1})
		if err != nil {
			e.t.Fatal(err)
		}
		if !res.Verified {
			e.t.Fatalf("live content %s does not verify: %s", a, res.Reason)
		}
	}
}

// quarantined lists the files under the backend's quarantine folder.
func (e *env) quarantined() []string {
	e.t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(e.root, ".quarantine"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}
