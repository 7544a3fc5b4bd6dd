package projector_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/projector"
)

// steppingClock returns a clock that advances a millisecond per call, so
// that events appended in different calls have different times.
func steppingClock() func() time.Time {
	var n atomic.Int64
	base := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	return func() time.Time { return base.Add(time.Duration(n.Add(1)) * time.Millisecond) }
}

// hangGuard bounds every wait of these tests for something that must
// happen; it only stops a hung test, never decides a result.
const hangGuard = 2 * time.Minute

type fixture struct {
	pool  *pgxpool.Pool
	url   string
	log   *events.Log
	codec *events.Codec
}

func newFixture(t testing.TB) fixture {
	pool, url := pgtest.NewDB(t)
	codec := events.NewCodec()
	return fixture{pool: pool, url: url, log: events.NewLog(pool, codec, events.WithClock(steppingClock())), codec: codec}
}

func (f fixture) projector(t testing.TB, cfg projector.Config) *projector.Projector {
	l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	cfg.Logger = &l
	return projector.New(f.pool, f.log, f.codec, cfg)
}

// tableOrder lists every projection table with its key, for snapshots.
var tableOrder = []struct{ name, key string }{
	{"artifact_packages", "name"},
	{"artifact_files", "package, path"},
	{"storage_locations", "content_address, backend_id"},
	{"retention_state", "package"},
}

// querier is a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// readTables returns every row of every projection table as JSON text, in key order.
func readTables(ctx context.Context, q querier, suffix string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, tb := range tableOrder {
		rows, err := q.Query(ctx, fmt.Sprintf(`SELECT to_jsonb(t)::text FROM %s t ORDER BY %s`, tb.name+suffix, tb.key))
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", tb.name+suffix, err)
		}
		rs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", tb.name+suffix, err)
		}
		out[tb.name] = rs
	}
	return out, nil
}

// snapshot is readTables for the test goroutine.
func snapshot(ctx context.Context, t testing.TB, q querier, suffix string) map[string][]string {
	t.Helper()
	out, err := readTables(ctx, q, suffix)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareSnapshots(t testing.TB, what string, a, b map[string][]string) {
	t.Helper()
	for _, tb := range tableOrder {
		x, y := a[tb.name], b[tb.name]
		if len(x) != len(y) {
			t.Errorf("%s: %s has %d rows vs %d", what, tb.name, len(x), len(y))
		}
		bad := 0
		for i := range min(len(x), len(y)) {
			if x[i] != y[i] {
				t.Errorf("%s: %s row %d differs:\n  %s\n  %s", what, tb.name, i, x[i], y[i])
				if bad++; bad > 5 {
					break
				}
			}
		}
	}
}

func count(ctx context.Context, t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestPutProjectsEverything plays the events of one `put` of a directory
// (two files, one of them deduplicated) and checks every projected column.
func TestPutProjectsEverything(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	b3a, s2a := bytesOf(1), bytesOf(2)
	b3b, s2b := bytesOf(3), bytesOf(4)
	a := digest.New(digest.BLAKE3, [32]byte(b3a))
	b := digest.New(digest.SHA256, [32]byte(s2b))
	until := time.Date(2027, 2, 25, 0, 0, 0, 0, time.UTC)
	ds := []events.Draft{
		pkgDraft("ci/run-1", events.PackageCreatedV1{Name: "ci/run-1", RetentionClass: "raw-evidence", Metadata: map[string]string{"git.sha": "abc"}}),
		pkgDraft("ci/run-1", events.RetentionAssignedV1{Package: "ci/run-1", Class: "raw-evidence", RetainUntil: &until}),
		objDraft(a, events.ObjectStoredV1{Address: a, BLAKE3: b3a, SHA256: s2a, Size: 10, BackendID: "local"}),
		pkgDraft("ci/run-1", events.FileAddedV1{Package: "ci/run-1", Path: "logs/a.txt", Address: a, BLAKE3: b3a, SHA256: s2a, Size: 10, MediaType: "text/plain"}),
		objDraft(b, events.ObjectStoredV1{Address: b, BLAKE3: b3b, SHA256: s2b, Size: 32, BackendID: "local"}),
		pkgDraft("ci/run-1", events.FileAddedV1{Package: "ci/run-1", Path: "b.bin", Address: b, BLAKE3: b3b, SHA256: s2b, Size: 32}),
		objDraft(a, events.ObjectStoredV1{Address: a, BLAKE3: b3a, SHA256: s2a, Size: 10, BackendID: "local", Deduplicated: true}),
		pkgDraft("ci/run-1", events.FileAddedV1{Package: "ci/run-1", Path: "copy/a.txt", Address: a, BLAKE3: b3a, SHA256: s2a, Size: 10}),
		pkgDraft("ci/run-1", events.PackageSealedV1{Name: "ci/run-1"}),
		objDraft(a, events.ObjectVerifiedV1{Address: a, BackendID: "local", Size: 10}),
	}
	appendAll(ctx, t, f.log, ds, 3)
	p := f.projector(t, projector.Config{BatchSize: 4})
	n, err := p.CatchUp(ctx)
	if err != nil || n != len(ds) {
		t.Fatalf("CatchUp = %d, %v; want %d, nil", n, err, len(ds))
	}
	var (
		class, meta, state string
		created            time.Time
		sealed             *time.Time
		files, bytes       int64
	)
	if err := f.pool.QueryRow(ctx, `SELECT retention_class, metadata::text, created_at, sealed_at, file_count, total_bytes, state
		FROM artifact_packages WHERE name = 'ci/run-1'`).Scan(&class, &meta, &created, &sealed, &files, &bytes, &state); err != nil {
		t.Fatalf("package row: %v", err)
	}
	if class != "raw-evidence" || meta != `{"git.sha": "abc"}` || sealed == nil || !sealed.After(created) || files != 3 || bytes != 52 || state != "sealed" {
		t.Errorf("package = %s %s %v %v %d %d %s", class, meta, created, sealed, files, bytes, state)
	}
	rows, _ := f.pool.Query(ctx, `SELECT path, content_address, digest_algorithm, digest_primary, digest_blake3, digest_sha256, size_bytes, coalesce(media_type, '')
		FROM artifact_files WHERE package = 'ci/run-1' ORDER BY path`)
	type fileRow struct {
		Path, Addr, Alg string
		P, B3, S2       []byte
		Size            int64
		MT              string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[fileRow])
	if err != nil {
		t.Fatal(err)
	}
	want := []fileRow{
		{"b.bin", b.String(), "sha256", s2b, b3b, s2b, 32, ""},
		{"copy/a.txt", a.String(), "blake3", b3a, b3a, s2a, 10, ""},
		{"logs/a.txt", a.String(), "blake3", b3a, b3a, s2a, 10, "text/plain"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("files:\n got %v\nwant %v", got, want)
	}
	var locState string
	var verified int64
	var lastVerified *time.Time
	if err := f.pool.QueryRow(ctx, `SELECT state, verification_count, last_verified_at FROM storage_locations
		WHERE content_address = $1 AND backend_id = 'local'`, a.String()).Scan(&locState, &verified, &lastVerified); err != nil {
		t.Fatal(err)
	}
	if locState != "ok" || verified != 1 || lastVerified == nil {
		t.Errorf("location of a = %s %d %v", locState, verified, lastVerified)
	}
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM storage_locations`); n != 2 {
		t.Errorf("%d storage locations, want 2", n)
	}
	var rc string
	var ru time.Time
	var hold bool
	if err := f.pool.QueryRow(ctx, `SELECT retention_class, retain_until, legal_hold FROM retention_state WHERE package = 'ci/run-1'`).Scan(&rc, &ru, &hold); err != nil {
		t.Fatal(err)
	}
	if rc != "raw-evidence" || !ru.Equal(until) || hold {
		t.Errorf("retention = %s %v %v", rc, ru, hold)
	}
	st, err := p.Status(ctx)
	if err != nil || st.Checkpoint != int64(len(ds)) || st.Head != int64(len(ds)) || st.LagSeconds != 0 {
		t.Errorf("Status = %+v, %v", st, err)
	}
}

func bytesOf(b byte) []byte {
	out := make([]byte, 32)
	for i := range out {
		out[i] = b
	}
	return out
}

// TestIncrementalEqualsRebuild projects a random log of every event type
// in random batch sizes, with restarts (new projectors) while the log
// grows, then rebuilds and compares every table row by row.
func TestIncrementalEqualsRebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	g := newGen(seed, coverageMix)
	r := rand.New(rand.NewPCG(seed, 1))
	appended := 0
	for appended < 12000 {
		ds := g.drafts(500 + r.IntN(2000))
		appendAll(ctx, t, f.log, ds, 100+r.IntN(900))
		appended += len(ds)
		// A "restart": a new projector with another batch size runs a few batches.
		p := f.projector(t, projector.Config{BatchSize: 1 + r.IntN(700)})
		for range 1 + r.IntN(5) {
			if _, err := p.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
		}
	}
	p := f.projector(t, projector.Config{BatchSize: 1 + r.IntN(3000)})
	if _, err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	incremental := snapshot(ctx, t, f.pool, "")

	// Every kind of row the generator is meant to reach must be there, or
	// the comparison proves little.
	for _, q := range []string{
		`SELECT count(*) FROM storage_locations WHERE state = 'corrupt'`,
		`SELECT count(*) FROM storage_locations WHERE state = 'missing'`,
		`SELECT count(*) FROM storage_locations WHERE state = 'deleted'`,
		`SELECT count(*) FROM storage_locations WHERE state = 'ok' AND verification_count > 1`,
		`SELECT count(*) FROM storage_locations WHERE state = 'ok' AND repair_count > 1`,
		`SELECT count(*) FROM storage_locations WHERE repair_count > 0 AND state <> 'ok'`,
		`SELECT count(*) FROM retention_state WHERE legal_hold`,
		`SELECT count(*) FROM retention_state WHERE NOT legal_hold AND legal_hold_reason IS NULL AND expired_at IS NULL`,
		`SELECT count(*) FROM retention_state WHERE expired_at IS NOT NULL AND reaped_at IS NULL`,
		`SELECT count(*) FROM retention_state WHERE reaped_at IS NOT NULL`,
		`SELECT count(*) FROM artifact_packages WHERE state = 'sealed'`,
		`SELECT count(*) FROM artifact_packages WHERE state = 'reaped'`,
		`SELECT count(*) FROM artifact_packages WHERE state = 'expired'`,
		`SELECT count(*) FROM artifact_files WHERE digest_algorithm = 'sha256'`,
	} {
		if n := count(ctx, t, f.pool, q); n == 0 {
			t.Errorf("no row for %s", q)
		}
	}
	var types int64
	if types = count(ctx, t, f.pool, `SELECT count(DISTINCT event_type) FROM events`); types != int64(len(events.KnownTypes())) {
		t.Errorf("the log has %d event types, want all %d", types, len(events.KnownTypes()))
	}

	// The first rebuild finds the reap rule's candidates with queries in
	// every batch and remembers nothing between batches; the incremental
	// tables were built with the memo (reap index and recent rows), built
	// afresh at each restart and kept across batches otherwise.
	if err := projector.WithoutMemo(f.projector(t, projector.Config{BatchSize: 1 + r.IntN(3000)})).Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	rebuilt := snapshot(ctx, t, f.pool, "")
	compareSnapshots(t, "incremental vs rebuild", incremental, rebuilt)
	head, _ := f.log.Head(ctx)
	if cp, _ := projector.Checkpoint(ctx, f.pool, projector.DefaultName); cp != head {
		t.Errorf("checkpoint after rebuild = %d, want head %d", cp, head)
	}
	// The swapped-in tables carry the migrations' index names and no
	// rebuild leftovers remain.
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM pg_class WHERE relname LIKE '%\_rebuild%' OR relname LIKE '%\_old'`); n != 0 {
		t.Errorf("%d relations named *_rebuild* or *_old remain", n)
	}
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM pg_indexes WHERE indexname = 'artifact_files_content_address_idx'`); n != 1 {
		t.Errorf("index artifact_files_content_address_idx missing after the swap")
	}
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM pg_class WHERE relname = 'storage_locations' AND 'fillfactor=85' = ANY(reloptions)`); n != 1 {
		t.Errorf("storage_locations lost its fillfactor in the swap")
	}
	// Projection continues on the swapped-in tables.
	appendAll(ctx, t, f.log, g.drafts(300), 300)
	if _, err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp after rebuild: %v", err)
	}
	after := snapshot(ctx, t, f.pool, "")
	if err := p.Rebuild(ctx); err != nil {
		t.Fatalf("second Rebuild: %v", err)
	}
	compareSnapshots(t, "after second rebuild", after, snapshot(ctx, t, f.pool, ""))
}

// TestAlteredPayloadStops changes a payload behind the log's back: the
// projector stops at that sequence and applies nothing from it on.
func TestAlteredPayloadStops(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	appendAll(ctx, t, f.log, newGen(7, coverageMix).drafts(50), 50)
	if _, err := f.pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER events_append_only;
		UPDATE events SET payload = payload || '\x00'::bytea WHERE sequence = 23;
		ALTER TABLE events ENABLE TRIGGER events_append_only`); err != nil {
		t.Fatalf("alter the log: %v", err)
	}
	p := f.projector(t, projector.Config{BatchSize: 10})
	_, err := p.CatchUp(ctx)
	if !errors.Is(err, projector.ErrLogAltered) || !errors.Is(err, events.ErrPayloadDigest) {
		t.Fatalf("CatchUp error = %v, want ErrLogAltered and events.ErrPayloadDigest", err)
	}
	if !strings.Contains(err.Error(), "sequence 23") {
		t.Errorf("error %q does not name sequence 23", err)
	}
	if cp, _ := projector.Checkpoint(ctx, f.pool, projector.DefaultName); cp != 20 {
		t.Errorf("checkpoint = %d, want 20 (the batch before the altered event)", cp)
	}
	// Run returns it too instead of retrying forever.
	runCtx, cancel := context.WithTimeout(ctx, hangGuard)
	defer cancel()
	if err := f.projector(t, projector.Config{BatchSize: 10}).Run(runCtx); !errors.Is(err, projector.ErrLogAltered) {
		t.Errorf("Run = %v, want ErrLogAltered", err)
	}
}

// insertRaw appends an event behind the log's back (the log refuses
// unknown types and invalid payloads), with a correct payload digest.
func insertRaw(ctx context.Context, t *testing.T, f fixture, typ string, payload []byte) int64 {
	t.Helper()
	head, err := f.log.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sum := events.PayloadDigest(payload)
	seq := head + 1
	if _, err := f.pool.Exec(ctx, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version, subject_kind, subject_id, actor, payload, payload_digest, chain_digest)
		VALUES ($1, gen_random_uuid(), now(), $2, 1, 'package', 'x', 'test', $3, $4, $5)`, seq, typ, payload, sum[:], make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE event_log_head SET last_sequence = $1`, seq); err != nil {
		t.Fatal(err)
	}
	return seq
}

// TestUnknownEventStops appends an event type this projector does not
// know, and one of a known type whose payload does not decode: each stops
// the projector before the batch holding it commits.
func TestUnknownEventStops(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, typ string
		want      error
	}{
		{"unknown type", "package.renamed", projector.ErrUnknownEvent},
		{"malformed payload", "package.sealed", events.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixture(t)
			appendAll(ctx, t, f.log, newGen(8, coverageMix).drafts(5), 5)
			seq := insertRaw(ctx, t, f, tc.typ, []byte{0xa0}) // an empty CBOR map
			_, err := f.projector(t, projector.Config{BatchSize: 100}).CatchUp(ctx)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.typ) ||
				!strings.Contains(err.Error(), fmt.Sprintf("sequence %d", seq)) {
				t.Fatalf("CatchUp error = %v, want %v naming %s and sequence %d", err, tc.want, tc.typ, seq)
			}
			if cp, _ := projector.Checkpoint(ctx, f.pool, projector.DefaultName); cp != 0 {
				t.Errorf("checkpoint = %d, want 0: the batch with the bad event must not commit", cp)
			}
			runCtx, cancel := context.WithTimeout(ctx, hangGuard)
			defer cancel()
			if err := f.projector(t, projector.Config{}).Run(runCtx); !errors.Is(err, tc.want) {
				t.Errorf("Run = %v, want %v (stop, not retry)", err, tc.want)
			}
		})
	}
}

// TestRunTailsAndWaitFor runs the projector and checks that WaitFor sees
// freshly appended events projected (read-your-writes).
func TestRunTailsAndWaitFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)

	// Nothing can project: WaitFor can only end with its deadline, however
	// slow the machine (an error of any query the deadline cuts short
	// wraps context.DeadlineExceeded too).
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := projector.WaitFor(short, f.pool, 1)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor with no projector = %v, want a deadline error", err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	p := f.projector(t, projector.Config{PollInterval: time.Hour}) // only NOTIFY can wake it within hangGuard
	go func() { done <- p.Run(runCtx) }()
	g := newGen(9, coverageMix)
	for range 5 {
		appendAll(ctx, t, f.log, g.drafts(20), 100)
		head, _ := f.log.Head(ctx)
		wctx, cancel := context.WithTimeout(ctx, hangGuard)
		if err := projector.WaitFor(wctx, f.pool, head); err != nil {
			t.Fatalf("WaitFor(%d): %v", head, err)
		}
		cancel()
		st, err := p.Status(ctx)
		if err != nil || st.Checkpoint < head {
			t.Fatalf("Status = %+v, %v; want checkpoint ≥ %d", st, err, head)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// errInterrupted is what a test hook returns to stop a batch.
var errInterrupted = errors.New("interrupted by the test")

// TestInterruptedBatches interrupts catch-ups at every point of a batch
// (checkpoint locked, events read, folded, rows and checkpoint written,
// committed), in a random batch of each catch-up, either by cancelling the
// catch-up's context there or by failing the batch there. The choices come
// from a seeded generator and the batches' bounds from the log alone, so
// every machine runs the same interruptions and the projection always
// progresses. After each interruption the checkpoint must be where the
// batch started, or where it ended if it had committed; the projector, the
// same one with its memo or a new one with another batch size, carries on.
// The result equals a rebuild.
func TestInterruptedBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	g := newGen(12, coverageMix)
	appendAll(ctx, t, f.log, g.drafts(2500), 1000)
	head, _ := f.log.Head(ctx)
	r := rand.New(rand.NewPCG(12, 12))

	// Every stage, once by cancelling and once by failing, in random order,
	// then again.
	type how struct {
		stage      projector.Stage
		cancelOnly bool
	}
	stages := projector.BatchStages()
	var plan []how
	for _, i := range r.Perm(2 * len(stages)) {
		plan = append(plan, how{stages[i/2], i%2 == 0})
	}
	hits := map[how]int{}
	var p *projector.Projector
	attempt := 0
	for ; ; attempt++ {
		cp, err := projector.Checkpoint(ctx, f.pool, projector.DefaultName)
		if err != nil {
			t.Fatal(err)
		}
		if cp == head {
			break
		}
		if attempt == 1000 {
			t.Fatalf("checkpoint %d of %d after 1000 catch-ups", cp, head)
		}
		if p == nil || r.IntN(2) == 0 {
			p = f.projector(t, projector.Config{BatchSize: 20 + r.IntN(200)})
		}
		h, target := plan[attempt%len(plan)], r.IntN(3) // the batch of this catch-up to interrupt
		cctx, cancel := context.WithCancel(ctx)
		var hit *projector.BatchPoint
		batches := 0
		projector.SetHook(p, func(b projector.BatchPoint) error {
			if b.Stage == projector.AtLocked {
				batches++
			}
			if hit != nil || batches-1 != target || b.Stage != h.stage {
				return nil
			}
			hit = &b
			cancel()
			if h.cancelOnly {
				return nil // the batch must notice the cancelled context by itself
			}
			return errInterrupted
		})
		_, err = p.CatchUp(cctx)
		cancel()
		after, cerr := projector.Checkpoint(ctx, f.pool, projector.DefaultName)
		if cerr != nil {
			t.Fatal(cerr)
		}
		if hit == nil {
			if err != nil || after != head {
				t.Fatalf("attempt %d: CatchUp not interrupted = %v, checkpoint %d; want nil and the head %d", attempt, err, after, head)
			}
			continue
		}
		hits[h]++
		want := hit.From
		if hit.Stage == projector.AtCommitted {
			want = hit.To
		}
		if after != want {
			t.Errorf("attempt %d: interrupted at %s of %s: checkpoint %d, want %d", attempt, hit.Stage, batchName(hit.From, hit.To), after, want)
		}
		switch {
		case !h.cancelOnly:
			if !errors.Is(err, errInterrupted) {
				t.Errorf("attempt %d: CatchUp failed at %s = %v, want the hook's error", attempt, hit.Stage, err)
			}
		case err == nil:
			// Only a catch-up whose last batch had committed may end well.
			if hit.Stage != projector.AtCommitted || after != head {
				t.Errorf("attempt %d: CatchUp cancelled at %s of %s returned no error", attempt, hit.Stage, batchName(hit.From, hit.To))
			}
		case !errors.Is(err, context.Canceled):
			t.Errorf("attempt %d: CatchUp cancelled at %s = %v, want context.Canceled", attempt, hit.Stage, err)
		}
	}
	t.Logf("caught up after %d catch-ups, %d of them interrupted", attempt, sumValues(hits))
	for _, h := range plan {
		if hits[h] == 0 {
			t.Errorf("no catch-up was interrupted at %s (cancel only: %v); the test proves less than it says", h.stage, h.cancelOnly)
		}
	}
	live := snapshot(ctx, t, f.pool, "")
	if err := f.projector(t, projector.Config{}).Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	compareSnapshots(t, "interrupted vs rebuild", live, snapshot(ctx, t, f.pool, ""))
}

func sumValues[K comparable](m map[K]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestRebuildSwapIsAtomic damages the live tables, then rebuilds while a
// reader counts rows without pause: it sees the damaged count or the full
// one, never a table being filled. The rebuild waits for the reader's first
// count before its first batch, and while the swap's transaction holds the
// renamed tables another count is started and must wait for it, then see
// the full table.
func TestRebuildSwapIsAtomic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	appendAll(ctx, t, f.log, newGen(13, coverageMix).drafts(3000), 1000)
	p := f.projector(t, projector.Config{BatchSize: 100})
	if _, err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	full := count(ctx, t, f.pool, `SELECT count(*) FROM artifact_files`)
	if _, err := f.pool.Exec(ctx, `DELETE FROM artifact_files WHERE path <> 'dir/file-0.txt'`); err != nil {
		t.Fatal(err)
	}
	damaged := count(ctx, t, f.pool, `SELECT count(*) FROM artifact_files`)
	if damaged == full || damaged == 0 {
		t.Fatalf("damage left %d of %d rows; want some but not all", damaged, full)
	}
	seen := map[int64]int{}
	stop := make(chan struct{})
	done := make(chan error, 1)
	counted := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			var n int64
			if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM artifact_files`).Scan(&n); err != nil {
				done <- err
				return
			}
			seen[n]++
			if i == 0 {
				close(counted)
			}
		}
	}()
	type result struct {
		n   int64
		err error
	}
	inSwap := make(chan result, 1)
	projector.SetHook(p, func(b projector.BatchPoint) error {
		switch {
		case b.Checkpoint != projector.DefaultName && b.Stage == projector.AtLocked && b.From == 0:
			select {
			case <-counted:
			case <-time.After(hangGuard):
				return errors.New("the reader never counted")
			}
		case b.Stage == projector.AtSwapped:
			conn, err := f.pool.Acquire(ctx)
			if err != nil {
				return err
			}
			counting := make(chan struct{})
			go func() {
				defer close(counting)
				defer conn.Release()
				var r result
				r.err = conn.QueryRow(ctx, `SELECT count(*) FROM artifact_files`).Scan(&r.n)
				inSwap <- r
			}()
			return awaitBlocked(ctx, f.pool, conn.Conn().PgConn().PID(), counting)
		}
		return nil
	})
	if err := p.Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("reader: %v", err)
	}
	for n, k := range seen {
		if n != full && n != damaged {
			t.Errorf("a reader saw %d rows %d times; only %d (before) or %d (after) are allowed", n, k, damaged, full)
		}
	}
	if seen[damaged] == 0 {
		t.Error("the reader never saw the damaged table; the test proves nothing")
	}
	if r := <-inSwap; r.err != nil || r.n != full {
		t.Errorf("a count started during the swap = %d, %v; want %d (the rebuilt table)", r.n, r.err, full)
	}
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM artifact_files`); n != full {
		t.Errorf("after the rebuild artifact_files has %d rows, want %d", n, full)
	}
}
