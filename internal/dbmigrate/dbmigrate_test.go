package dbmigrate_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/internal/dbmigrate"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/migrations"
)

// latestVersion is the highest version among the embedded migrations.
func latestVersion(t *testing.T) uint {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	var latest uint
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "_")
		if !ok || !strings.HasSuffix(e.Name(), ".up.sql") {
			continue
		}
		v, err := strconv.ParseUint(prefix, 10, 32)
		if err != nil {
			t.Fatalf("migration %s: version prefix: %v", e.Name(), err)
		}
		latest = max(latest, uint(v))
	}
	if latest == 0 {
		t.Fatal("no embedded up migration")
	}
	return latest
}

// missingTables reports the tables of wantTables missing from got.
func missingTables(got []string) []string {
	var missing []string
	for _, w := range wantTables {
		if !slices.Contains(got, w) {
			missing = append(missing, w)
		}
	}
	return missing
}

// wantTables are the tables of 000001_init; later migrations add more.
var wantTables = []string{
	"artifact_files", "artifact_packages", "commands", "event_log_head", "events",
	"metadata_schemas", "projector_checkpoints", "retention_classes", "retention_state",
	"storage_locations",
}

func tables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT table_name FROM information_schema.tables
		 WHERE table_schema = 'public' AND table_name <> 'schema_migrations' ORDER BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

func wantVersion(t *testing.T, dbURL string, want uint) {
	t.Helper()
	v, dirty, err := dbmigrate.Version(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v != want || dirty {
		t.Fatalf("Version = %d dirty=%v, want %d clean", v, dirty, want)
	}
}

func TestUpCreatesSchemaAndSeedsRetentionClasses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dbURL := pgtest.NewEmptyDB(t)
	wantVersion(t, dbURL, 0)
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, dbURL, latestVersion(t))
	if got := tables(t, pool); len(missingTables(got)) > 0 {
		t.Fatalf("tables = %v, missing %v", got, missingTables(got))
	}

	type class struct {
		days                     *int
		mayShorten, neverExpires bool
	}
	days := func(d int) *int { return &d }
	want := map[string]class{
		"transient":        {days(7), true, false},
		"raw-evidence":     {days(90), true, false},
		"summary-evidence": {days(365), true, false},
		"release-evidence": {days(2557), false, false},
		"permanent-record": {nil, false, true},
	}
	rows, err := pool.Query(ctx, `SELECT name, extract(day FROM default_duration)::int, may_shorten, never_expires FROM retention_classes`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]class{}
	for rows.Next() {
		var name string
		var c class
		if err := rows.Scan(&name, &c.days, &c.mayShorten, &c.neverExpires); err != nil {
			t.Fatal(err)
		}
		got[name] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d retention classes, want %d: %v", len(got), len(want), got)
	}
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("class %s missing", name)
		case (g.days == nil) != (w.days == nil) || g.days != nil && *g.days != *w.days:
			t.Errorf("class %s: duration %v days, want %v", name, deref(g.days), deref(w.days))
		case g.mayShorten != w.mayShorten || g.neverExpires != w.neverExpires:
			t.Errorf("class %s: may_shorten=%v never_expires=%v, want %v %v", name, g.mayShorten, g.neverExpires, w.mayShorten, w.neverExpires)
		}
	}

	var head int64
	if err := pool.QueryRow(ctx, `SELECT last_sequence FROM event_log_head`).Scan(&head); err != nil || head != 0 {
		t.Fatalf("event_log_head: last_sequence=%d err=%v, want one row at 0", head, err)
	}
	var retrievalTier string
	if err := pool.QueryRow(ctx, `SELECT column_default FROM information_schema.columns
		WHERE table_name = 'storage_locations' AND column_name = 'retrieval_tier'`).Scan(&retrievalTier); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(retrievalTier, "'hot'") {
		t.Fatalf("storage_locations.retrieval_tier default = %s, want 'hot'", retrievalTier)
	}
}

func deref(p *int) any {
	if p == nil {
		return "never"
	}
	return *p
}

func TestUpTwiceIsNoOp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dbURL := pgtest.NewDB(t) // migrated once already
	if _, err := pool.Exec(ctx, `INSERT INTO projector_checkpoints (projector, sequence) VALUES ('p', 42)`); err != nil {
		t.Fatal(err)
	}
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	wantVersion(t, dbURL, latestVersion(t))
	var seq int64
	if err := pool.QueryRow(ctx, `SELECT sequence FROM projector_checkpoints WHERE projector = 'p'`).Scan(&seq); err != nil || seq != 42 {
		t.Fatalf("data after second Up: seq=%d err=%v, want 42", seq, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM retention_classes`).Scan(&n); err != nil || n != 5 {
		t.Fatalf("retention classes after second Up: %d (%v), want 5", n, err)
	}
}

func TestDownDropsEverythingThenUpAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dbURL := pgtest.NewDB(t)
	if err := dbmigrate.Down(ctx, dbURL); err != nil {
		t.Fatalf("Down: %v", err)
	}
	wantVersion(t, dbURL, 0)
	if got := tables(t, pool); len(got) != 0 {
		t.Fatalf("tables after Down: %v, want none", got)
	}
	var funcs int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'public'`).Scan(&funcs); err != nil || funcs != 0 {
		t.Fatalf("functions after Down: %d (%v), want 0", funcs, err)
	}
	if err := dbmigrate.Down(ctx, dbURL); err != nil {
		t.Fatalf("Down on an empty schema: %v", err)
	}
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatalf("Up after Down: %v", err)
	}
	wantVersion(t, dbURL, latestVersion(t))
	if got := tables(t, pool); len(missingTables(got)) > 0 {
		t.Fatalf("tables = %v, missing %v", got, missingTables(got))
	}
}

func TestEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	zero := make([]byte, 32)
	if _, err := pool.Exec(ctx, `INSERT INTO events (sequence, event_id, occurred_at, event_type, payload_version,
		subject_kind, subject_id, actor, command_id, payload, payload_digest, chain_digest)
		VALUES (1, gen_random_uuid(), now(), 'package.created', 1, 'package', 'p', 'test', NULL, '\xa0', $1, $1)`, zero); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE events SET actor = 'mallory'`,
		`UPDATE events SET actor = 'mallory' WHERE sequence = 999`, // no row: still refused
		`DELETE FROM events`,
		`TRUNCATE events`,
		`DELETE FROM event_log_head`,
		`TRUNCATE event_log_head`,
	} {
		_, err := pool.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Errorf("%s: err = %v, want a refusal", stmt, err)
			continue
		}
		if pgErr.Code != "23001" || !strings.Contains(pgErr.Message, "is refused") {
			t.Errorf("%s: %s %q, want 23001 restrict_violation saying it is refused", stmt, pgErr.Code, pgErr.Message)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE actor = 'test'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("events after refused changes: %d (%v), want the 1 original row", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_log_head`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("event_log_head rows: %d (%v), want 1", n, err)
	}
}

func TestDirtyStateSaysWhatToDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dbURL := pgtest.NewDB(t)
	if _, err := pool.Exec(ctx, `UPDATE schema_migrations SET dirty = true`); err != nil {
		t.Fatal(err)
	}
	v, dirty, err := dbmigrate.Version(ctx, dbURL)
	if err != nil || v != latestVersion(t) || !dirty {
		t.Fatalf("Version = %d, %v, %v; want %d, dirty", v, dirty, err, latestVersion(t))
	}
	err = dbmigrate.Up(ctx, dbURL)
	if !errors.Is(err, dbmigrate.ErrDirty) || !strings.Contains(err.Error(), "force") {
		t.Fatalf("Up on a dirty schema: %v, want ErrDirty naming force", err)
	}
	if err := dbmigrate.Force(ctx, dbURL, int(latestVersion(t))); err != nil {
		t.Fatalf("Force: %v", err)
	}
	wantVersion(t, dbURL, latestVersion(t))
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatalf("Up after Force: %v", err)
	}
}

func TestUnreachableAndBadURL(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a closed port refuses at once
	defer cancel()
	err := dbmigrate.Up(ctx, "postgres://postgres:secret@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if !errors.Is(err, dbmigrate.ErrUnreachable) {
		t.Fatalf("Up on a closed port: %v, want ErrUnreachable", err)
	}
	if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "PostgreSQL is running") {
		t.Fatalf("unreachable message leaks the password or gives no advice: %v", err)
	}
	for _, bad := range []string{"mysql://root@localhost/db", "host=localhost dbname=x", "::"} {
		if err := dbmigrate.Up(ctx, bad); !errors.Is(err, dbmigrate.ErrBadURL) {
			t.Errorf("Up(%q) = %v, want ErrBadURL", bad, err)
		}
	}
}

func TestPostgresqlSchemeIsAccepted(t *testing.T) {
	t.Parallel()
	_, dbURL := pgtest.NewEmptyDB(t)
	alt := "postgresql" + strings.TrimPrefix(dbURL, "postgres")
	if err := dbmigrate.Up(context.Background(), alt); err != nil {
		t.Fatalf("Up(%s): %v", alt, err)
	}
	wantVersion(t, dbURL, latestVersion(t))
}

func TestEveryMigrationHasUpAndDown(t *testing.T) {
	t.Parallel()
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	for name := range names {
		base, ok := strings.CutSuffix(name, ".up.sql")
		if !ok {
			base, ok = strings.CutSuffix(name, ".down.sql")
		}
		if !ok {
			t.Errorf("embedded file %s is not NNNNNN_name.up.sql or .down.sql", name)
			continue
		}
		if !names[base+".up.sql"] || !names[base+".down.sql"] {
			t.Errorf("migration %s lacks its up or down file", base)
		}
	}
}
