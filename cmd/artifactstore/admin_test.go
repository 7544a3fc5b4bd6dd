package main

// Functional tests of the administration commands (migrate, schema, audit)
// on a real PostgreSQL database of the test's own.

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/migrations"
)

// runOn runs `artifactstore --database-url dbURL args...` in-process and
// returns its exit status and its standard output and error together.
func runOn(t *testing.T, dbURL string, args ...string) (int, string) {
	t.Helper()
	code, out, errOut := runCLI(t, append([]string{"--database-url", dbURL}, args...)...)
	return code, out + errOut
}

// latestMigration is the highest version among the embedded migrations.
func latestMigration(t *testing.T) uint {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.up.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("embedded migrations: %v, %d files", err, len(names))
	}
	var latest uint
	for _, n := range names {
		v, err := strconv.ParseUint(strings.SplitN(n, "_", 2)[0], 10, 32)
		if err != nil {
			t.Fatalf("migration %s has no version: %v", n, err)
		}
		latest = max(latest, uint(v))
	}
	return latest
}

// tables lists the tables of the public schema other than golang-migrate's
// own bookkeeping table.
func tables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_name <> 'schema_migrations' ORDER BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestMigrateUpDownVersion applies the schema to a database that does not
// exist yet, rolls it back, and applies it again, checking what `migrate
// version` reports and which tables exist at each step.
func TestMigrateUpDownVersion(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewEmptyDB(t)
	latest := latestMigration(t)
	versionLine := func(v uint) string { return fmt.Sprintf("schema version %d (clean)", v) }

	// `migrate up` creates a missing database: drop the test's database
	// (pgtest drops it again, if it exists, when the test ends).
	admin, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(admin.Path, "/")
	admin.Path = "/postgres"
	conn, err := pgx.Connect(t.Context(), admin.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pool.Close()
	if _, err := conn.Exec(t.Context(), "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}

	if code, out := runOn(t, dbURL, "migrate", "up"); code != 0 || !strings.Contains(out, versionLine(latest)) {
		t.Fatalf("migrate up on a missing database: exit %d, output %q; want exit 0 and %q", code, out, versionLine(latest))
	}
	pool, err = pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	migrated := tables(t, pool)
	for _, want := range []string{"events", "event_log_head", "commands", "artifact_packages", "artifact_files",
		"storage_locations", "retention_state", "retention_classes", "metadata_schemas"} {
		if !contains(migrated, want) {
			t.Errorf("table %s missing after migrate up; tables: %v", want, migrated)
		}
	}
	if code, out := runOn(t, dbURL, "migrate", "version"); code != 0 || !strings.Contains(out, versionLine(latest)) {
		t.Fatalf("migrate version: exit %d, output %q; want %q", code, out, versionLine(latest))
	}
	if code, out := runOn(t, dbURL, "migrate", "up"); code != 0 || !strings.Contains(out, versionLine(latest)) {
		t.Fatalf("second migrate up: exit %d, output %q; want a no-op at %q", code, out, versionLine(latest))
	}

	if code, out := runOn(t, dbURL, "migrate", "down"); code == 0 || !strings.Contains(out, "--yes") {
		t.Fatalf("migrate down without --yes: exit %d, output %q; want a refusal naming --yes", code, out)
	}
	if got := tables(t, pool); !reflect.DeepEqual(got, migrated) {
		t.Fatalf("migrate down without --yes changed the tables: %v", got)
	}
	if code, out := runOn(t, dbURL, "migrate", "down", "--yes"); code != 0 || !strings.Contains(out, "rolled back") {
		t.Fatalf("migrate down --yes: exit %d, output %q", code, out)
	}
	if got := tables(t, pool); len(got) != 0 {
		t.Fatalf("tables left after migrate down: %v", got)
	}
	const empty = "no migration applied (run 'artifactstore migrate up')"
	if code, out := runOn(t, dbURL, "migrate", "version"); code != 0 || !strings.Contains(out, empty) || strings.Contains(out, "schema version") {
		t.Fatalf("migrate version after down: exit %d, output %q; want %q", code, out, empty)
	}

	if code, out := runOn(t, dbURL, "migrate", "up"); code != 0 || !strings.Contains(out, versionLine(latest)) {
		t.Fatalf("migrate up after down: exit %d, output %q", code, out)
	}
	if got := tables(t, pool); !reflect.DeepEqual(got, migrated) {
		t.Fatalf("tables after down and up %v, want %v", got, migrated)
	}
	var classes int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM retention_classes`).Scan(&classes); err != nil || classes != 5 {
		t.Fatalf("%d seeded retention classes after down and up (%v), want 5", classes, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// schemaRow is one line of `schema list --json`.
type schemaRow struct {
	ID             int64           `json:"id"`
	RetentionClass *string         `json:"retention_class"`
	Schema         json.RawMessage `json:"schema"`
	CreatedAt      time.Time       `json:"created_at"`
}

func (r schemaRow) String() string {
	class := "(every class)"
	if r.RetentionClass != nil {
		class = *r.RetentionClass
	}
	return fmt.Sprintf("#%d %s %s", r.ID, class, r.Schema)
}

func listSchemas(t *testing.T, dbURL string) []schemaRow {
	t.Helper()
	code, out, errOut := runCLI(t, "--database-url", dbURL, "schema", "list", "--json")
	if code != 0 {
		t.Fatalf("schema list --json: exit %d, %s", code, errOut)
	}
	var rows []schemaRow
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r schemaRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("schema list --json line %q: %v", line, err)
		}
		rows = append(rows, r)
	}
	return rows
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

// TestSchemaSetAndList sets schemas from files, for every package and for
// one class, replaces one, lists them, and checks the errors of an invalid
// schema, a file that is not JSON, a missing file and an unknown class.
func TestSchemaSetAndList(t *testing.T) {
	t.Parallel()
	_, dbURL := pgtest.NewDB(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	if code, out := runOn(t, dbURL, "schema", "list"); code != 0 || !strings.Contains(out, "no metadata schemas") {
		t.Fatalf("schema list on a fresh database: exit %d, %q", code, out)
	}
	if rows := listSchemas(t, dbURL); len(rows) != 0 {
		t.Fatalf("schema list --json on a fresh database: %+v", rows)
	}

	every := `{
		"type": "object",
		"required": ["git_commit"],
		"properties": {"git_commit": {"type": "string", "pattern": "^[0-9a-f]{7,40}$"}}
	}`
	if code, out := runOn(t, dbURL, "schema", "set", write("every.json", every)); code != 0 || !strings.Contains(out, "every package") {
		t.Fatalf("schema set: exit %d, %q", code, out)
	}
	release := `{"type": "object", "required": ["version"]}`
	if code, out := runOn(t, dbURL, "schema", "set", "--class", "release-evidence", write("release.json", release)); code != 0 || !strings.Contains(out, "release-evidence") {
		t.Fatalf("schema set --class release-evidence: exit %d, %q", code, out)
	}
	rows := listSchemas(t, dbURL)
	if len(rows) != 2 || rows[0].RetentionClass != nil || rows[1].RetentionClass == nil || *rows[1].RetentionClass != "release-evidence" {
		t.Fatalf("schema list --json: %+v; want the schema for every class, then release-evidence's", rows)
	}
	if !sameJSON(t, rows[0].Schema, []byte(every)) || !sameJSON(t, rows[1].Schema, []byte(release)) {
		t.Fatalf("listed schemas %s and %s differ from the files set", rows[0].Schema, rows[1].Schema)
	}
	if code, out := runOn(t, dbURL, "schema", "list"); code != 0 || !strings.Contains(out, "(every class)") || !strings.Contains(out, "release-evidence") ||
		!strings.Contains(out, fmt.Sprintf("#%d", rows[0].ID)) || !strings.Contains(out, "git_commit") {
		t.Fatalf("schema list: exit %d, %q", code, out)
	}

	// Setting the schema of a scope again replaces it.
	replacement := `{"type": "object", "required": ["git_commit", "pipeline"]}`
	if code, out := runOn(t, dbURL, "schema", "set", write("every2.json", replacement)); code != 0 {
		t.Fatalf("schema set again: exit %d, %q", code, out)
	}
	after := listSchemas(t, dbURL)
	if len(after) != 2 || after[0].RetentionClass != nil || !sameJSON(t, after[0].Schema, []byte(replacement)) || after[0].ID == rows[0].ID {
		t.Fatalf("after replacing the schema for every class: %+v", after)
	}
	if after[1].ID != rows[1].ID {
		t.Fatalf("replacing the schema for every class changed release-evidence's: %+v", after)
	}

	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"invalid schema", []string{"schema", "set", write("bad.json", `{"type": 12}`)}, []string{"bad.json", "not a usable JSON Schema", "/type"}},
		{"not JSON", []string{"schema", "set", write("broken.json", `{"type": "object"`)}, []string{"broken.json"}},
		{"missing file", []string{"schema", "set", filepath.Join(dir, "nowhere.json")}, []string{"nowhere.json"}},
		{"unknown class", []string{"schema", "set", "--class", "forever-ish", write("ok.json", `{}`)}, []string{`"forever-ish" does not exist`}},
	} {
		code, out := runOn(t, dbURL, c.args...)
		t.Logf("%s: exit %d, %s", c.name, code, strings.TrimSpace(out))
		if code == 0 {
			t.Errorf("%s: exit 0, output %q; want a failure", c.name, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output %q lacks %q", c.name, out, w)
			}
		}
	}
	if got := listSchemas(t, dbURL); !reflect.DeepEqual(got, after) {
		t.Fatalf("failed schema sets changed the schemas: %+v, want %+v", got, after)
	}
}

// TestAuditIntactAndDamaged audits an intact log, then damages one payload
// as a superuser could (triggers bypassed in this test's own database) and
// checks that the audit fails and names the damaged event's sequence.
func TestAuditIntactAndDamaged(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewDB(t)
	ctx := t.Context()

	if code, out := runOn(t, dbURL, "audit"); code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("audit of an empty log: exit %d, %q", code, out)
	}

	const n, bad = 12, 7
	log := events.NewLog(pool, events.NewCodec())
	for i := range n {
		if _, err := log.Append(ctx, events.Batch{CommandID: fmt.Sprintf("cmd-%d", i), Events: []events.Draft{{
			SubjectKind: events.SubjectPackage, SubjectID: fmt.Sprintf("pkg-%d", i), Actor: "test",
			Payload: events.PackageCreatedV1{Name: fmt.Sprintf("pkg-%d", i), RetentionClass: "transient"},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	code, out := runOn(t, dbURL, "audit")
	if code != 0 || !strings.Contains(out, "intact") || !strings.Contains(out, strconv.Itoa(n)) {
		t.Fatalf("audit of an intact log of %d events: exit %d, %q", n, code, out)
	}
	t.Logf("intact: %s", strings.TrimSpace(out))

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Superuser only: no trigger fires in this session, the append-only
	// one included.
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	tag, err := conn.Exec(ctx, `UPDATE events SET payload = set_byte(payload, 3, get_byte(payload, 3) # 1) WHERE sequence = $1`, bad)
	conn.Release()
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("damage event %d: %v, %d rows", bad, err, tag.RowsAffected())
	}

	code, out = runOn(t, dbURL, "audit")
	t.Logf("damaged: exit %d, %s", code, strings.TrimSpace(out))
	if code == 0 || code == 2 {
		t.Fatalf("audit of a log with a damaged payload: exit %d, want a failure other than a usage error; output %q", code, out)
	}
	// The bad event's number, as a sequence (not as a count of events read,
	// which is the same number when the audit stops at the first bad one).
	if !regexp.MustCompile(`(?i)(sequence|seq|event|#)\s*[:=]?\s*` + strconv.Itoa(bad) + `\b`).MatchString(out) {
		t.Fatalf("audit output does not name sequence %d: %q", bad, out)
	}
}
