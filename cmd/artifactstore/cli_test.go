package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestHelpListsRolesAndClients(t *testing.T) {
	t.Parallel()
	code, out, _ := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, want := range []string{"Pipeline roles", "Client commands:", "Administration:", "run ", "put ", "ARTIFACTSTORE_DATABASE_URL"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := runCLI(t, "put", "--help"); code != 0 || !strings.Contains(out, "--package") {
		t.Errorf("put --help exited %d:\n%s", code, out)
	}
}

func TestUserErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--no-such-flag"}, 2, "Run 'artifactstore --help'"},
		{[]string{"migrate", "down"}, 1, "add --yes to confirm"},
		{[]string{"verify", "--object", "sha256:../../etc/passwd"}, 1, "--object"},
		{[]string{"reap", "--at", "2030-01-01T00:00:00Z"}, 1, "--at is only for --dry-run"},
		{[]string{"--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", "audit"}, 1, "does not answer"},
	}
	for _, c := range cases {
		code, _, errOut := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("artifactstore %v: exit %d, stderr %q; want exit %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
}

// TestClientsNeverGuessTheNATSServer: with no --nats-url and no URL
// recorded by 'run' in the data directory, every command that talks to
// NATS fails at once (before touching PostgreSQL) and says how to name a
// server, instead of trying nats://127.0.0.1:4222. A URL left behind by a
// stopped 'run' is named as the culprit.
func TestClientsNeverGuessTheNATSServer(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	file := filepath.Join(t.TempDir(), "f.txt")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An unreachable database: a command that went there first would
	// report it instead.
	global := []string{"--nats-url=", "--data-dir", dataDir, "--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}
	commands := [][]string{
		{"put", "--package", "p", file},
		{"seal", "--package", "p"},
		{"hold", "--package", "p", "--reason", "r"},
		{"release", "--package", "p"},
		{"retain", "--package", "p", "--class", "transient"},
		{"verify", "--all"},
		{"status"},
		{"topology", "apply"},
		{"topology", "check"},
		{"ingest", "--no-ops"},
		{"verify", "--no-ops"},
		{"relay", "--no-ops"},
	}
	for _, c := range commands {
		code, _, errOut := runCLI(t, append(global, c...)...)
		if code != 1 || !strings.Contains(errOut, "no NATS server to connect to") || !strings.Contains(errOut, "--nats-url") ||
			!strings.Contains(errOut, "artifactstore run") || !strings.Contains(errOut, filepath.Join(dataDir, "nats.url")) {
			t.Errorf("artifactstore %v: exit %d, stderr %q; want exit 1 and how to name a NATS server", c, code, errOut)
		}
	}

	// A URL recorded by a 'run' that has stopped.
	if err := os.WriteFile(filepath.Join(dataDir, "nats.url"), []byte(fmt.Sprintf("nats://127.0.0.1:%d\n", freePort(t))), 0o640); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, append(global, "seal", "--package", "p")...)
	if code != 1 || !strings.Contains(errOut, "no NATS server answers") || !strings.Contains(errOut, "nats.url, written by an 'artifactstore run' that may have stopped") {
		t.Errorf("seal with a stale nats.url: exit %d, stderr %q", code, errOut)
	}
}
