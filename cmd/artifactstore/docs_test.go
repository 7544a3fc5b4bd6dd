package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md from the flags")

// TestConfigurationReferenceIsCurrent keeps docs/configuration.md equal to
// what the flags say.
func TestConfigurationReferenceIsCurrent(t *testing.T) {
	var buf bytes.Buffer
	if err := writeConfigReference(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "docs", "configuration.md")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf.Bytes()) {
		t.Fatal("docs/configuration.md is stale: run go test ./cmd/artifactstore -run ConfigurationReference -update")
	}
	if !bytes.Contains(got, []byte("ARTIFACTSTORE_DATABASE_URL")) {
		t.Fatal("the reference lacks the database URL's environment variable")
	}
}
