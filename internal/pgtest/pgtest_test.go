package pgtest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/internal/pgtest"
)

func TestNewDBIsMigratedAndDroppedAfterTheTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("inner", func(t *testing.T) {
		pool, dbURL := pgtest.NewDB(t)
		if err := pool.QueryRow(context.Background(), `SELECT current_database()`).Scan(&name); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(dbURL, name) || !strings.HasPrefix(name, "ast_testnewdb") {
			t.Fatalf("database %q, URL %q", name, dbURL)
		}
		var classes int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM retention_classes`).Scan(&classes); err != nil || classes != 5 {
			t.Fatalf("retention classes: %d, %v; want a migrated database", classes, err)
		}
	})
	admin, _ := pgtest.NewEmptyDB(t)
	var exists bool
	if err := admin.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

// fatalRecorder captures Fatalf instead of failing the real test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Helper() {}

func TestUnreachableServerFailsWithHowToStartIt(t *testing.T) {
	t.Setenv(pgtest.EnvURL, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pgtest.NewDB(rec)
		t.Error("NewDB returned on an unreachable server")
	}()
	<-done
	if !strings.Contains(rec.msg, "does not answer") || !strings.Contains(rec.msg, "pg_ctlcluster --skip-systemctl-redirect") {
		t.Fatalf("failure message = %q, want it to say how to start PostgreSQL", rec.msg)
	}
}
