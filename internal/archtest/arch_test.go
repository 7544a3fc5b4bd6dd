// Package archtest holds tests about the shape of the code base itself: which
// package may import which, and which package may name which table.
package archtest

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/artifactstore/artifactstore"

type pkg struct {
	ImportPath   string
	Dir          string
	GoFiles      []string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages: the test would check nothing", len(pkgs))
	}
	return pkgs
}

// concreteBackends are the packages that hold bytes somewhere real. Only the
// binary's wiring may import them (invariant 7).
var concreteBackends = []string{module + "/storage/local", module + "/storage/s3"}

// TestControlPlaneNeverImportsConcreteBackend fails when any package other
// than cmd/... and the backend itself imports a concrete backend, directly
// or through another package. Tests of storage packages may (they run the
// conformance suite against it).
func TestControlPlaneNeverImportsConcreteBackend(t *testing.T) {
	t.Parallel()
	for _, p := range listPackages(t) {
		if strings.HasPrefix(p.ImportPath, module+"/cmd/") || isBackend(p.ImportPath) {
			continue
		}
		for _, dep := range p.Deps {
			if isBackend(dep) {
				t.Errorf("%s depends on the concrete backend %s: the control plane must see only storage interfaces (invariant 7); wire backends in cmd/artifactstore", p.ImportPath, dep)
			}
		}
		if strings.HasPrefix(p.ImportPath, module+"/storage") {
			continue
		}
		for _, imp := range append(append([]string{}, p.TestImports...), p.XTestImports...) {
			if isBackend(imp) && !allowedTestImporter(p.ImportPath) {
				t.Errorf("tests of %s import the concrete backend %s; only storage and worker tests that build a data plane may", p.ImportPath, imp)
			}
		}
	}
}

// allowedTestImporter lists packages whose tests build a real data plane
// over a local backend, as the binary does.
func allowedTestImporter(path string) bool {
	for _, p := range []string{"/ingest", "/verifier", "/reaper", "/replicator", "/api", "/internal/"} {
		if strings.HasPrefix(path, module+p) {
			return true
		}
	}
	return false
}

func isBackend(path string) bool {
	for _, b := range concreteBackends {
		if path == b || strings.HasPrefix(path, b+"/") {
			return true
		}
	}
	return false
}

// TestWorkersDoNotImportEachOther keeps the worker packages independent:
// each declares the small interfaces it needs instead.
func TestWorkersDoNotImportEachOther(t *testing.T) {
	t.Parallel()
	workers := []string{"ingest", "projector", "verifier", "reaper", "replicator"}
	for _, p := range listPackages(t) {
		for _, w := range workers {
			if !isUnder(p.ImportPath, module+"/"+w) {
				continue
			}
			for _, imp := range p.Imports {
				for _, other := range workers {
					if other != w && isUnder(imp, module+"/"+other) {
						t.Errorf("worker %s imports worker %s", p.ImportPath, imp)
					}
				}
			}
		}
	}
}

func isUnder(path, root string) bool { return path == root || strings.HasPrefix(path, root+"/") }
