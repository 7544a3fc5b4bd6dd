package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/catalog"
)

// projectionTables are the tables the projector writes (and their
// *_rebuild twins, which the pattern matches too).
var projectionTables = []string{"artifact_packages", "artifact_files", "storage_locations", "retention_state", "projector_checkpoints"}

// projectionOwners may name the projection tables in their code: the
// projector writes them, the catalog reads them. Tests may too (they set
// up rows); archtest checks non-test files only.
var projectionOwners = []string{module + "/projector", module + "/catalog"}

// TestOnlyCatalogAndProjectorNameProjectionTables fails when a non-test Go
// file of any other package has a string literal (SQL, in practice) that
// names a projection table: readers go through the catalog's methods, so
// that the read model has one owner.
func TestOnlyCatalogAndProjectorNameProjectionTables(t *testing.T) {
	t.Parallel()
	table := regexp.MustCompile(`(^|[^a-z0-9_])(` + strings.Join(projectionTables, "|") + `)`)
	forEachString(t, projectionOwners, func(pos token.Position, s string) {
		if m := table.FindStringSubmatch(s); m != nil {
			t.Errorf("%s names the projection table %s: read it through catalog (add a method there), or write it in projector", pos, m[2])
		}
	})
}

// packageStateTables are the command side's state, owned by pkgstate.
var packageStateTables = []string{"ingest_packages", "ingest_files", "gc_objects"}

// TestOnlyPkgstateNamesPackageStateTables fails when a non-test Go file
// of any package but pkgstate has a string literal that names a
// package-state table: every read and write of them, and the lock that
// orders the decisions on them, go through pkgstate, so that the state
// has one owner (migrations create them in SQL files; tests may set up
// rows).
func TestOnlyPkgstateNamesPackageStateTables(t *testing.T) {
	t.Parallel()
	table := regexp.MustCompile(`(^|[^a-z0-9_])(` + strings.Join(packageStateTables, "|") + `)($|[^a-z0-9_])`)
	forEachString(t, []string{module + "/pkgstate"}, func(pos token.Position, s string) {
		if m := table.FindStringSubmatch(s); m != nil {
			t.Errorf("%s names the package-state table %s: read or write it through pkgstate (add a function there)", pos, m[2])
		}
	})
}

// TestOnlyCatalogSpellsTheStates fails when a non-test Go file outside
// catalog has a string literal with a location or package state quoted as
// an SQL literal ('ok', 'deleted', …): the states are catalog's constants.
func TestOnlyCatalogSpellsTheStates(t *testing.T) {
	t.Parallel()
	var quoted []string
	for _, s := range catalog.LocationStates() {
		quoted = append(quoted, regexp.QuoteMeta("'"+string(s)+"'"))
	}
	for _, s := range catalog.PackageStates() {
		quoted = append(quoted, regexp.QuoteMeta("'"+string(s)+"'"))
	}
	state := regexp.MustCompile(strings.Join(quoted, "|"))
	forEachString(t, []string{module + "/catalog"}, func(pos token.Position, s string) {
		if m := state.FindString(s); m != "" {
			t.Errorf("%s spells the state %s: use catalog's constant (string(catalog.Location…) in SQL)", pos, m)
		}
	})
}

// forEachString calls fn with every string literal of every non-test Go
// file of the module's packages, except those under the allowed import
// paths.
func forEachString(t *testing.T, allowed []string, fn func(token.Position, string)) {
	t.Helper()
	forEachFile(t, allowed, func(fset *token.FileSet, f *ast.File) {
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				t.Fatalf("%s: unquote %s: %v", fset.Position(lit.Pos()), lit.Value, err)
			}
			fn(fset.Position(lit.Pos()), s)
			return true
		})
	})
}

// forEachFile calls fn with every non-test Go file of the module's
// packages, parsed, except those under the skipped import paths; it fails
// the test when it read too few files for a rule to check anything.
func forEachFile(t *testing.T, skipped []string, fn func(*token.FileSet, *ast.File)) {
	t.Helper()
	fset := token.NewFileSet()
	files := 0
	for _, p := range listPackages(t) {
		if isAllowed(p.ImportPath, skipped) {
			continue
		}
		for _, name := range p.GoFiles {
			path := filepath.Join(p.Dir, name)
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			files++
			fn(fset, f)
		}
	}
	if files < 50 {
		t.Fatalf("read only %d Go files: the rule would check nothing", files)
	}
}

func isAllowed(path string, allowed []string) bool {
	for _, a := range allowed {
		if isUnder(path, a) {
			return true
		}
	}
	return false
}
