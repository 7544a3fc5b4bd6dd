package events_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

func newLog(t testing.TB, opts ...events.LogOption) (*events.Log, *pgxpool.Pool) {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	return events.NewLog(pool, events.NewCodec(), opts...), pool
}

// testCtx bounds a whole test. The tests take a few seconds; the bound
// only stops a hung one.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func pkgCreated(name string) events.Draft {
	return events.Draft{
		SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test",
		Payload: events.PackageCreatedV1{Name: name, RetentionClass: "transient", Metadata: map[string]string{"ci": "1"}},
	}
}

func fileAdded(t testing.TB, pkg, path string, content []byte) events.Draft {
	t.Helper()
	d, err := digest.Compute(bytes.NewReader(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	return events.Draft{
		SubjectKind: events.SubjectPackage, SubjectID: pkg, Actor: "test",
		Payload: events.FileAddedV1{
			Package: pkg, Path: path, Address: d.Address(digest.BLAKE3),
			BLAKE3: d.BLAKE3[:], SHA256: d.SHA256[:], Size: d.Size,
		},
	}
}

func countRows(t testing.TB, pool *pgxpool.Pool, table string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendReadRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	at := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.FixedZone("x", 3600))
	log, _ := newLog(t, events.WithClock(func() time.Time { return at }))
	codec := events.NewCodec()

	batches := []events.Batch{
		{CommandID: "cmd-1", Events: []events.Draft{pkgCreated("p1"), fileAdded(t, "p1", "a.txt", []byte("hello"))}},
		{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: "p1", Actor: "sealer",
			Payload: events.PackageSealedV1{Name: "p1"}}}},
	}
	res, err := log.Append(ctx, batches...)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Duplicate || res[1].Duplicate || res[0].CommandID != "cmd-1" {
		t.Fatalf("results = %+v", res)
	}
	var appended []events.Event
	for _, r := range res {
		appended = append(appended, r.Events...)
	}

	got, err := log.Read(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, appended) {
		t.Fatalf("Read = %+v\nwant %+v", got, appended)
	}
	var prev [32]byte
	var i int
	for bi, b := range batches {
		for _, d := range b.Events {
			e := got[i]
			i++
			if e.Sequence != int64(i) || e.Type != d.Payload.EventType() || e.SubjectID != d.SubjectID ||
				e.Actor != d.Actor || e.CommandID != b.CommandID || !e.OccurredAt.Equal(at.Truncate(time.Microsecond)) {
				t.Errorf("batch %d event %d envelope = %+v", bi, i, e)
			}
			p, err := codec.DecodeEvent(e)
			if err != nil {
				t.Fatalf("decode event %d: %v", e.Sequence, err)
			}
			if !reflect.DeepEqual(p, d.Payload) {
				t.Errorf("event %d payload = %#v, want %#v", e.Sequence, p, d.Payload)
			}
			if want := events.ChainDigestV2(prev, e); e.ChainDigest != want || e.ChainVersion != events.ChainV2 {
				t.Errorf("event %d chain digest = %x, want %x", e.Sequence, e.ChainDigest, want)
			}
			prev = e.ChainDigest
		}
	}

	if head, err := log.Head(ctx); err != nil || head != 3 {
		t.Fatalf("Head = %d, %v; want 3", head, err)
	}
	if tail, err := log.Read(ctx, 2, 100); err != nil || len(tail) != 1 || tail[0].Sequence != 3 {
		t.Fatalf("Read(after 2) = %+v, %v; want event 3", tail, err)
	}
	if first, err := log.Read(ctx, 0, 1); err != nil || len(first) != 1 || first[0].Sequence != 1 {
		t.Fatalf("Read(limit 1) = %+v, %v; want event 1", first, err)
	}
	byCmd, err := log.ByCommand(ctx, "cmd-1")
	if err != nil || !reflect.DeepEqual(byCmd, res[0].Events) {
		t.Fatalf("ByCommand = %+v, %v; want %+v", byCmd, err, res[0].Events)
	}
	if _, err := log.ByCommand(ctx, "nope"); !errors.Is(err, events.ErrCommandNotFound) {
		t.Fatalf("ByCommand(unknown) = %v, want ErrCommandNotFound", err)
	}
	if _, err := log.Read(ctx, 0, 0); err == nil {
		t.Fatal("Read with limit 0 succeeded")
	}
}

func TestAppendIsIdempotentByCommandID(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)

	first, err := log.Append(ctx, events.Batch{CommandID: "c", Events: []events.Draft{pkgCreated("p"), pkgCreated("q")}})
	if err != nil {
		t.Fatal(err)
	}
	again, err := log.Append(ctx,
		events.Batch{CommandID: "c", Events: []events.Draft{pkgCreated("other")}},
		events.Batch{CommandID: "d", Events: []events.Draft{pkgCreated("r")}},
		events.Batch{CommandID: "d", Events: []events.Draft{pkgCreated("r2")}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Duplicate || !reflect.DeepEqual(again[0].Events, first[0].Events) {
		t.Fatalf("second append of c = %+v, want duplicate with the first events %+v", again[0], first[0].Events)
	}
	if again[1].Duplicate || len(again[1].Events) != 1 || again[1].Events[0].Sequence != 3 {
		t.Fatalf("first append of d = %+v, want event 3", again[1])
	}
	if !again[2].Duplicate || !reflect.DeepEqual(again[2].Events, again[1].Events) {
		t.Fatalf("repeated d in one call = %+v, want duplicate of %+v", again[2], again[1].Events)
	}
	if n := countRows(t, pool, "events"); n != 3 {
		t.Fatalf("events rows = %d, want 3", n)
	}
	// A duplicate-only append changes nothing, not even the head.
	only, err := log.Append(ctx, events.Batch{CommandID: "c", Events: []events.Draft{pkgCreated("p")}})
	if err != nil || !only[0].Duplicate {
		t.Fatalf("duplicate-only append = %+v, %v", only, err)
	}
	if head, err := log.Head(ctx); err != nil || head != 3 {
		t.Fatalf("Head = %d, %v; want 3", head, err)
	}
}

func TestAppendSameCommandIDRacing(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	const n = 16
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]events.Result, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			res, err := log.Append(ctx, events.Batch{CommandID: "race", Events: []events.Draft{
				pkgCreated(fmt.Sprintf("p%d", i)), pkgCreated(fmt.Sprintf("q%d", i)),
			}})
			errs[i] = err
			if err == nil {
				results[i] = res[0]
			}
		})
	}
	close(start)
	wg.Wait()
	fresh := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("appender %d: %v", i, errs[i])
		}
		if !results[i].Duplicate {
			fresh++
		}
		if !reflect.DeepEqual(results[i].Events, results[0].Events) {
			t.Fatalf("appender %d got events %+v, appender 0 got %+v", i, results[i].Events, results[0].Events)
		}
	}
	if fresh != 1 {
		t.Fatalf("%d appenders appended, want exactly 1", fresh)
	}
	if rows := countRows(t, pool, "events"); rows != 2 {
		t.Fatalf("events rows = %d, want 2", rows)
	}
}

func TestAppendTxRollbackLeavesNoHole(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.AppendTx(ctx, tx, events.Batch{CommandID: "rolled", Events: []events.Draft{pkgCreated("a")}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := log.Append(ctx, events.Batch{CommandID: "rolled", Events: []events.Draft{pkgCreated("b")}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Duplicate || res[0].Events[0].Sequence != 1 {
		t.Fatalf("append after rollback = %+v, want fresh event at sequence 1", res[0])
	}
	if rep, err := log.Audit(ctx, events.AuditOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Audit = %+v, %v", rep, err)
	}
}

// TestQueueAppendRefusesAKnownCommandID: QueueAppend does not look
// command ids up (its caller did, under the lock); one already in the log
// fails the whole batch on the commands table's key, appending nothing.
func TestQueueAppendRefusesAKnownCommandID(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	if _, err := log.Append(ctx, events.Batch{CommandID: "known", Events: []events.Draft{pkgCreated("a")}}); err != nil {
		t.Fatal(err)
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		head := log.QueueLockHead(b)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		b = &pgx.Batch{}
		if _, err := log.QueueAppend(b, head, events.Batch{CommandID: "new", Events: []events.Draft{pkgCreated("b")}},
			events.Batch{CommandID: "known", Events: []events.Draft{pkgCreated("c")}}); err != nil {
			return err
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err == nil {
		t.Fatal("a known command id was appended again")
	}
	if head, _ := log.Head(ctx); head != 1 {
		t.Fatalf("head %d after the refused batch, want 1", head)
	}
	if rep, err := log.Audit(ctx, events.AuditOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Audit = %+v, %v", rep, err)
	}
}

func TestAppendTxUnderRepeatableReadConflicts(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM event_log_head`); err != nil { // takes the snapshot
		t.Fatal(err)
	}
	if _, err := log.Append(ctx, events.Batch{CommandID: "c", Events: []events.Draft{pkgCreated("a")}}); err != nil {
		t.Fatal(err)
	}
	_, err = log.AppendTx(ctx, tx, events.Batch{CommandID: "c", Events: []events.Draft{pkgCreated("b")}})
	if !errors.Is(err, events.ErrConflict) {
		t.Fatalf("AppendTx after a concurrent append under REPEATABLE READ = %v, want ErrConflict", err)
	}
	if n := countRows(t, pool, "events"); n != 1 {
		t.Fatalf("events rows = %d, want 1", n)
	}
}

func TestAppendRefusesInvalidBatches(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	for name, b := range map[string][]events.Batch{
		"no batch":     nil,
		"no events":    {{CommandID: "x"}},
		"nil payload":  {{Events: []events.Draft{{SubjectKind: "package", SubjectID: "p", Actor: "a"}}}},
		"no actor":     {{Events: []events.Draft{{SubjectKind: "package", SubjectID: "p", Payload: events.PackageSealedV1{Name: "p"}}}}},
		"no subject":   {{Events: []events.Draft{{Actor: "a", Payload: events.PackageSealedV1{Name: "p"}}}}},
		"invalid":      {{Events: []events.Draft{{SubjectKind: "package", SubjectID: "p", Actor: "a", Payload: events.PackageSealedV1{}}}}},
		"one bad of 2": {{Events: []events.Draft{pkgCreated("ok")}}, {Events: []events.Draft{{SubjectKind: "package", SubjectID: "p", Actor: "a"}}}},
	} {
		if _, err := log.Append(ctx, b...); !errors.Is(err, events.ErrInvalidBatch) {
			t.Errorf("%s: err = %v, want ErrInvalidBatch", name, err)
		}
	}
	if n := countRows(t, pool, "events"); n != 0 {
		t.Fatalf("events rows = %d after refused appends, want 0", n)
	}
}

func TestAppendNotifiesOnCommit(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	log, pool := newLog(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+events.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{pkgCreated("a"), pkgCreated("b")}}); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Conn().WaitForNotification(ctx) // sent at commit, so before Append returned
	if err != nil {
		t.Fatalf("no notification after append: %v", err)
	}
	if n.Channel != events.NotifyChannel || n.Payload != "2" {
		t.Fatalf("notification = %s %q, want %s \"2\"", n.Channel, n.Payload, events.NotifyChannel)
	}
}

func TestAppendOnUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool, _ := pgtest.NewEmptyDB(t)
	log := events.NewLog(pool, events.NewCodec())
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{pkgCreated("a")}}); !errors.Is(err, events.ErrNotMigrated) {
		t.Fatalf("Append = %v, want ErrNotMigrated", err)
	}
	if _, err := log.Read(ctx, 0, 10); !errors.Is(err, events.ErrNotMigrated) {
		t.Fatalf("Read = %v, want ErrNotMigrated", err)
	}
}

// ---- gap-free tailing -------------------------------------------------------

// appender is what the gap checker drives: the real Log, or a naive table
// with a BIGSERIAL sequence that proves the checker can fail.
type appender struct {
	// appendInTx appends in tx without committing and returns the sequences.
	appendInTx func(ctx context.Context, tx pgx.Tx, i int) ([]int64, error)
	// appendCommit appends in its own transaction(s), commits, and returns
	// the sequences.
	appendCommit func(ctx context.Context, i int) ([]int64, error)
	// read returns sequences greater than after, ascending.
	read func(ctx context.Context, after int64, limit int) ([]int64, error)
}

func logAppender(log *events.Log, pool *pgxpool.Pool) appender {
	seqs := func(res []events.Result) []int64 {
		var out []int64
		for _, r := range res {
			for _, e := range r.Events {
				out = append(out, e.Sequence)
			}
		}
		return out
	}
	return appender{
		appendInTx: func(ctx context.Context, tx pgx.Tx, i int) ([]int64, error) {
			res, err := log.AppendTx(ctx, tx, events.Batch{CommandID: fmt.Sprintf("held-%d", i),
				Events: []events.Draft{pkgCreated(fmt.Sprintf("held-%d", i)), pkgCreated(fmt.Sprintf("held2-%d", i))}})
			return seqs(res), err
		},
		appendCommit: func(ctx context.Context, i int) ([]int64, error) {
			switch i % 4 {
			case 0: // group commit of several commands
				res, err := log.Append(ctx,
					events.Batch{CommandID: fmt.Sprintf("g%d-a", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("g%d-a", i))}},
					events.Batch{CommandID: fmt.Sprintf("g%d-b", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("g%d-b", i)), pkgCreated(fmt.Sprintf("g%d-c", i))}},
					events.Batch{Events: []events.Draft{pkgCreated(fmt.Sprintf("g%d-d", i))}})
				return seqs(res), err
			case 1: // in a caller's transaction kept open for one more round trip
				var out []int64
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					res, err := log.AppendTx(ctx, tx, events.Batch{CommandID: fmt.Sprintf("tx%d", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("tx%d", i))}})
					if err != nil {
						return err
					}
					out = seqs(res)
					_, err = tx.Exec(ctx, `SELECT count(*) FROM projector_checkpoints`)
					return err
				})
				return out, err
			case 2: // the head locked in the first batch, the append queued with the commit's
				var out []int64
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					b := &pgx.Batch{}
					head := log.QueueLockHead(b)
					if err := tx.SendBatch(ctx, b).Close(); err != nil {
						return err
					}
					b = &pgx.Batch{}
					res, err := log.QueueAppend(b, head,
						events.Batch{CommandID: fmt.Sprintf("q%d-a", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("q%d-a", i))}},
						events.Batch{CommandID: fmt.Sprintf("q%d-b", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("q%d-b", i)), pkgCreated(fmt.Sprintf("q%d-c", i))}})
					if err != nil {
						return err
					}
					out = seqs(res)
					return tx.SendBatch(ctx, b).Close()
				})
				return out, err
			default:
				res, err := log.Append(ctx, events.Batch{CommandID: fmt.Sprintf("s%d", i), Events: []events.Draft{pkgCreated(fmt.Sprintf("s%d", i))}})
				return seqs(res), err
			}
		},
		read: func(ctx context.Context, after int64, limit int) ([]int64, error) {
			evs, err := log.Read(ctx, after, limit)
			out := make([]int64, len(evs))
			for i, e := range evs {
				out[i] = e.Sequence
			}
			return out, err
		},
	}
}

// naiveAppender numbers events with a BIGSERIAL and no lock: the textbook
// broken log, whose sequences commit out of order.
func naiveAppender(t *testing.T, pool *pgxpool.Pool) appender {
	if _, err := pool.Exec(context.Background(),
		`CREATE TABLE naive_events (sequence bigserial PRIMARY KEY, body text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	insert := func(ctx context.Context, tx pgx.Tx, i int) ([]int64, error) {
		var seq int64
		err := tx.QueryRow(ctx, `INSERT INTO naive_events (body) VALUES ($1) RETURNING sequence`, strconv.Itoa(i)).Scan(&seq)
		return []int64{seq}, err
	}
	return appender{
		appendInTx: insert,
		appendCommit: func(ctx context.Context, i int) ([]int64, error) {
			var out []int64
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var err error
				out, err = insert(ctx, tx, i)
				return err
			})
			return out, err
		},
		read: func(ctx context.Context, after int64, limit int) ([]int64, error) {
			rows, err := pool.Query(ctx, `SELECT sequence FROM naive_events WHERE sequence > $1 ORDER BY sequence LIMIT $2`, after, limit)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[int64])
		},
	}
}

// tailer reads continuously from after its last seen sequence, as a
// projector does, and records everything it sees.
type tailer struct {
	last atomic.Int64

	mu      sync.Mutex
	seen    []int64
	passes  int64
	waiters map[chan struct{}]int64 // closed once passes reaches the value
}

func (tl *tailer) run(ctx context.Context, a appender, stop <-chan struct{}) error {
	drain := false
	for {
		if !drain {
			select {
			case <-stop:
				drain = true // everything is committed: read to the end once more
			default:
			}
		}
		seqs, err := a.read(ctx, tl.last.Load(), 500)
		if err != nil {
			return err
		}
		if len(seqs) > 0 {
			tl.last.Store(seqs[len(seqs)-1])
		}
		tl.mu.Lock()
		tl.seen = append(tl.seen, seqs...)
		tl.passes++
		for ch, target := range tl.waiters {
			if tl.passes >= target {
				close(ch)
				delete(tl.waiters, ch)
			}
		}
		tl.mu.Unlock()
		if drain && len(seqs) == 0 {
			return nil
		}
	}
}

// waitPasses waits until the tailer has completed two more read passes, so
// that it has read everything committed before the call.
func (tl *tailer) waitPasses(ctx context.Context) error {
	ch := make(chan struct{})
	tl.mu.Lock()
	if tl.waiters == nil {
		tl.waiters = map[chan struct{}]int64{}
	}
	tl.waiters[ch] = tl.passes + 2
	tl.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tailer made no progress: %w", ctx.Err())
	}
}

// gapScenario drives an appender and a tailer. Each round holds one
// appending transaction open, starts `workers` concurrent appenders, waits
// until each of them has either committed or is blocked on a lock, lets the
// tailer read, and only then commits the held transaction. It returns every
// problem the checker found; none means the tailer saw every committed event
// exactly once, in order, and never read past an uncommitted one.
func gapScenario(t *testing.T, pool *pgxpool.Pool, a appender, rounds, workers, perWorker int) []string {
	t.Helper()
	ctx := testCtx(t)
	var (
		tl        tailer
		stop      = make(chan struct{})
		tailErr   = make(chan error, 1)
		mu        sync.Mutex
		committed []int64
		problems  []string
	)
	go func() { tailErr <- tl.run(ctx, a, stop) }()

	for round := range rounds {
		held, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		heldSeqs, err := a.appendInTx(ctx, held, round)
		if err != nil {
			t.Fatal(err)
		}

		var unfinished atomic.Int64
		unfinished.Store(int64(workers))
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				defer unfinished.Add(-1)
				for k := range perWorker {
					seqs, err := a.appendCommit(ctx, (round*workers+w)*perWorker+k)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					committed = append(committed, seqs...)
					mu.Unlock()
				}
			})
		}

		// Every worker has committed everything or is waiting for a lock.
		deadline := time.Now().Add(time.Minute) // only stops a hung test
		for {
			var blocked int64
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&blocked); err != nil {
				t.Fatal(err)
			}
			if blocked == unfinished.Load() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d workers unfinished, %d blocked on a lock", round, unfinished.Load(), blocked)
			}
		}
		if err := tl.waitPasses(ctx); err != nil {
			t.Fatal(err)
		}
		if last := tl.last.Load(); last > heldSeqs[0] {
			problems = append(problems, fmt.Sprintf("round %d: tailer read up to %d while %d was not committed", round, last, heldSeqs[0]))
		}
		if err := held.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		committed = append(committed, heldSeqs...)
		mu.Unlock()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: append: %v", round, err)
		}
	}
	close(stop)
	if err := <-tailErr; err != nil {
		t.Fatalf("tailer: %v", err)
	}
	return append(problems, checkTail(committed, tl.seen)...)
}

// checkTail compares what was committed with what a tailer saw.
func checkTail(committed, seen []int64) []string {
	var problems []string
	count := map[int64]int{}
	for i, s := range seen {
		count[s]++
		if i > 0 && s <= seen[i-1] {
			problems = append(problems, fmt.Sprintf("read %d after %d: out of order", s, seen[i-1]))
		}
	}
	for _, c := range committed {
		switch count[c] {
		case 0:
			problems = append(problems, fmt.Sprintf("sequence %d was committed but never read (skipped)", c))
		case 1:
		default:
			problems = append(problems, fmt.Sprintf("sequence %d read %d times", c, count[c]))
		}
		delete(count, c)
	}
	for s := range count {
		problems = append(problems, fmt.Sprintf("read sequence %d that no appender committed", s))
	}
	return problems
}

func TestGapFreeUnderConcurrentAppends(t *testing.T) {
	t.Parallel()
	log, pool := newLog(t)
	const rounds, workers, perWorker = 3, 8, 3
	problems := gapScenario(t, pool, logAppender(log, pool), rounds, workers, perWorker)
	for _, p := range problems {
		t.Error(p)
	}
	head, err := log.Head(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	evs, err := log.Read(testCtx(t), 0, events.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(evs)) != head || head == 0 {
		t.Fatalf("%d events, head %d", len(evs), head)
	}
	for i, e := range evs {
		if e.Sequence != int64(i+1) {
			t.Fatalf("event %d has sequence %d: the log has a hole", i+1, e.Sequence)
		}
	}
	if rep, err := log.Audit(testCtx(t), events.AuditOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Audit = %+v, %v", rep, err)
	}
}

// TestGapFreeCheckerDetectsNaiveSkip proves the checker of the test above
// can fail: against a BIGSERIAL table without a lock, a held-open
// transaction commits sequence 1 after the tailer already read past it.
func TestGapFreeCheckerDetectsNaiveSkip(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	problems := gapScenario(t, pool, naiveAppender(t, pool), 1, 8, 3)
	want := "sequence 1 was committed but never read (skipped)"
	if !slices.Contains(problems, want) {
		t.Fatalf("checker problems = %q, want it to report %q", problems, want)
	}
}

// BenchmarkAppend measures append throughput: group commit (64 commands of
// 4 events per Append) and single-command appends from 16 goroutines.
func BenchmarkAppend(b *testing.B) {
	log, _ := newLog(b)
	ctx := context.Background()
	var ids atomic.Int64
	batch := func() events.Batch {
		id := ids.Add(1)
		bt := events.Batch{CommandID: "bench-" + strconv.FormatInt(id, 10)}
		for j := range 4 {
			bt.Events = append(bt.Events, pkgCreated(fmt.Sprintf("p%d-%d", id, j)))
		}
		return bt
	}

	b.Run("group64x4", func(b *testing.B) {
		for b.Loop() {
			batches := make([]events.Batch, 64)
			for i := range batches {
				batches[i] = batch()
			}
			if _, err := log.Append(ctx, batches...); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*64*4)/b.Elapsed().Seconds(), "events/s")
	})

	b.Run("single4x16goroutines", func(b *testing.B) {
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for range 16 {
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					if _, err := log.Append(ctx, batch()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(b.N*4)/b.Elapsed().Seconds(), "events/s")
	})
}
