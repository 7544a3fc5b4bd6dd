package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/commands"
)

// TestPutSaysRepaired: a file whose upload replaced a damaged copy is
// reported as repaired, on its line and in the summary, and the put
// succeeds.
func TestPutSaysRepaired(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	results := []putResult{
		{file: putFile{local: "a", path: "a"}, reply: commands.Reply{Status: commands.StatusStored, Address: "blake3:aa", SHA256: "bb", Size: 3}},
		{file: putFile{local: "b", path: "b"}, reply: commands.Reply{Status: commands.StatusRepaired, Repaired: "corrupt", Address: "blake3:cc", SHA256: "dd", Size: 4}},
	}
	if err := (putCmd{}).report(&ioStreams{out: &out, err: &errOut}, "pkg", results); err != nil {
		t.Fatalf("report of a stored and a repaired file: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || strings.Contains(lines[0], "repaired") || !strings.Contains(lines[1], "repaired (the stored copy was corrupt") {
		t.Fatalf("put output:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "2 of 2 file(s) stored, 1 of them repaired") {
		t.Fatalf("put summary: %q", errOut.String())
	}
}
