package ingest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage/local"
)

// TestDedupRewritesReapedBytes: an ingest deduplicates against stored
// bytes, and before it commits the reaper deletes them (simulated: the
// test holds the ingest lock while the ingest's put is done, deletes the
// file and its gc row as the reaper's sweep does, then lets the commit
// go). The commit must find the row gone, write the bytes again from the
// command's blob (inline or staged), and leave a live row.
func TestDedupRewritesReapedBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		size int
	}{{"inline", 100}, {"staged", 200 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.startIngester(nil)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			data := randomBytes(t, tc.size)
			first := e.put(e.client, blob(producer.Put{Package: "p1", Path: "f"}, data))
			if first.Status != commands.StatusStored {
				t.Fatalf("first put: %+v", first)
			}
			addr, err := digest.Parse(first.Address)
			if err != nil {
				t.Fatal(err)
			}
			if st := gcState(t, e, first.Address); st != "live" {
				t.Fatalf("gc row after the first ingest: %s; want live", st)
			}

			tx, err := e.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(context.Background()) }()
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pkgstate.KeyPackageState); err != nil {
				t.Fatal(err)
			}
			pend, err := e.client.Put(ctx, blob(producer.Put{Package: "p2", Path: "g"}, data))
			if err != nil {
				t.Fatal(err)
			}
			waitForLockWaiter(ctx, t, e)
			// The reaper's sweep, under the lock: file and row go.
			if err := os.Remove(filepath.Join(e.root, filepath.FromSlash(local.ObjectPath(addr)))); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM gc_objects WHERE content_address = $1`, first.Address); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			second, err := pend.Wait(ctx)
			if err != nil || second.Status != commands.StatusStored || second.Address != first.Address {
				t.Fatalf("second put: %+v, %v", second, err)
			}
			e.checkObject(second.Address, second.BLAKE3, second.SHA256, second.Size)
			if st := gcState(t, e, first.Address); st != "live" {
				t.Fatalf("gc row after the racing ingest: %s; want live", st)
			}
		})
	}
}

// TestIngestRevivesMarkedObject: ingesting content whose row the reaper
// marked sets it live again (the sweep's re-check then keeps it).
func TestIngestRevivesMarkedObject(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	data := []byte("marked content")
	r := e.put(e.client, blob(producer.Put{Package: "p1", Path: "f"}, data))
	if _, err := e.pool.Exec(context.Background(), `UPDATE gc_objects SET state = 'marked', marked_at = now() WHERE content_address = $1`, r.Address); err != nil {
		t.Fatal(err)
	}
	e.put(e.client, blob(producer.Put{Package: "p2", Path: "f"}, data))
	var marked *time.Time
	if err := e.pool.QueryRow(context.Background(), `SELECT marked_at FROM gc_objects WHERE content_address = $1`, r.Address).Scan(&marked); err != nil || marked != nil {
		t.Fatalf("marked_at = %v (%v); want NULL", marked, err)
	}
	if st := gcState(t, e, r.Address); st != "live" {
		t.Fatalf("state %s; want live", st)
	}
}

func gcState(t *testing.T, e *env, addr string) string {
	t.Helper()
	var s string
	err := e.pool.QueryRow(context.Background(), `SELECT state FROM gc_objects WHERE content_address = $1`, addr).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return "absent"
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitForLockWaiter polls until a session of this database waits for the
// ingest advisory lock.
func waitForLockWaiter(ctx context.Context, t *testing.T, e *env) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = $1 AND objid = $2 AND objsubid = 1
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
			uint32(pkgstate.KeyPackageState>>32), uint32(pkgstate.KeyPackageState&0xffffffff)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the ingest never waited for the ingest lock")
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(5 * time.Millisecond): // a polling interval, not a deadline
		}
	}
}
