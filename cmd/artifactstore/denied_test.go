package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/bus"
)

// withoutPublish returns role r named name, without the publish grant on
// subject.
func withoutPublish(t *testing.T, r bus.Role, name, subject string) bus.Role {
	t.Helper()
	n := len(r.Publish)
	r.Name = name
	r.Publish = slices.DeleteFunc(slices.Clone(r.Publish), func(g bus.Grant) bool { return g.Subject == subject })
	if len(r.Publish) != n-1 {
		t.Fatalf("role %s has no publish grant on %s", name, subject)
	}
	return r
}

// TestPutDeniedPublishFailsAtOnce runs put as producers that lack the
// publish grant on a command subject, or on the staging bucket's chunks
// (the command is sent, the upload refused): the server refuses the publish with
// an asynchronous error only, and put must fail on it at once, naming the
// subject and where the grants are listed, instead of waiting out its
// retries and --timeout for a PubAck that never comes.
func TestPutDeniedPublishFailsAtOnce(t *testing.T) {
	t.Parallel()
	topo := bus.DefaultTopology()
	roles := topo.Roles()
	producerRole, _ := topo.Role(bus.RoleProducer)
	batch, file := topo.Subject(bus.CmdIngestBatch), topo.Subject(bus.CmdIngest)
	chunks := "$O." + topo.StagingBucket + ".C.*"
	roles = append(roles,
		withoutPublish(t, producerRole, "nobatch", batch),
		withoutPublish(t, producerRole, "nofile", file),
		withoutPublish(t, producerRole, "nochunks", chunks))
	url, pw, u := startSecuredNATSRoles(t, roles)
	dataDir := t.TempDir()
	as := func(role string, args ...string) []string {
		return append([]string{"--nats-url", url, "--nats-user", role, "--nats-password", pw[role],
			"--data-dir", dataDir, "--log-format", "json"}, args...)
	}
	cliOK(t, as(bus.RoleAdmin, "topology", "apply")...)

	dir := t.TempDir()
	small, large := filepath.Join(dir, "small.txt"), filepath.Join(dir, "large.bin")
	if err := os.WriteFile(small, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(large, bytes.Repeat([]byte("0123456789abcdef"), 3<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, file, subject string
	}{
		{"nobatch", small, batch},   // a small file goes in a batch command
		{"nofile", large, file},     // a large one is staged, its command sent alone
		{"nochunks", large, chunks}, // its chunks refused: the staging upload fails at once
	} {
		t.Run(tc.user, func(t *testing.T) {
			// The default --timeout (30 min) and the retry budget (2 min)
			// are both longer than wait's hang guard.
			p := startCLI(t, as(tc.user, "put", "--package", "denied/run-1", tc.file)...)
			code := p.wait(t)
			stderr := p.errOut.String() + p.out.String()
			if code == 0 || !strings.Contains(stderr, "publish grant on "+tc.subject) ||
				!strings.Contains(stderr, "artifactstore topology permissions") {
				t.Fatalf("put as a user without the grant on %s: exit %d, output:\n%s", tc.subject, code, stderr)
			}
		})
	}
	if v := strings.Join(u.takeViolations(), "\n"); !strings.Contains(v, batch) || !strings.Contains(v, file) ||
		!strings.Contains(v, "$O."+topo.StagingBucket+".C.") {
		t.Fatalf("the server's refusals were not seen: %s", v)
	}
}
