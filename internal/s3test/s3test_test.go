package s3test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakefileInstallsThisVersion keeps `make tools` (which .ci/run calls)
// installing the versitygw the tests name in their messages.
func TestMakefileInstallsThisVersion(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "VERSITYGW_VERSION ?= " + Version + "\n"; !strings.Contains(string(b), want) {
		t.Fatalf("the Makefile lacks %q: make tools would install another versitygw than %s", strings.TrimSpace(want), InstallCommand)
	}
}

// TestStartServesABucket starts the shared server and creates a bucket.
func TestStartServesABucket(t *testing.T) {
	s := Start(t)
	name := s.Bucket(t)
	if _, err := os.Stat(filepath.Join(s.Root, name)); err != nil {
		t.Fatalf("bucket %s has no folder under %s: %v", name, s.Root, err)
	}
}

func TestMain(m *testing.M) { Main(m) }
