package main

import (
	"bytes"
	"context"
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
