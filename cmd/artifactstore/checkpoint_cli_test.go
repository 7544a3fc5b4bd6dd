package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

// TestCheckpointKeygenSignVerify: keygen writes a private key only its
// owner reads and refuses to overwrite it; sign --once prints a checkpoint
// of the head; verify accepts it with the public key, and refuses it with
// another key's.
func TestCheckpointKeygenSignVerify(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, dbURL := pgtest.NewDB(t)
	ns := natstest.Start(t)
	dir := t.TempDir()
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(ctx, append(args, "--database-url", dbURL, "--nats-url", ns.URL(), "--log-level", "warn"), &out, &errOut)
		if code != wantCode {
			t.Fatalf("artifactstore %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, out.String(), errOut.String())
		}
		return out.String() + errOut.String()
	}
	prefix := filepath.Join(dir, "keys", "prod")
	if out := cli(0, "checkpoint", "keygen", "--name", "prod-log", prefix); !strings.Contains(out, "prod-log+") {
		t.Fatalf("keygen printed:\n%s", out)
	}
	if fi, err := os.Stat(prefix + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v, %v; want mode 0600", fi, err)
	}
	if out := cli(1, "checkpoint", "keygen", prefix); !strings.Contains(out, "exists") {
		t.Fatalf("second keygen:\n%s", out)
	}
	cli(0, "checkpoint", "keygen", filepath.Join(dir, "other"))

	log := events.NewLog(pool, events.NewCodec())
	if _, err := log.Append(ctx, events.Batch{Events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: "p", Actor: "test",
		Payload: events.PackageCreatedV1{Name: "p", RetentionClass: "transient"}}}}); err != nil {
		t.Fatal(err)
	}
	// The signer checks that the checkpoints stream exists; the admin
	// creates it.
	if out := cli(1, "checkpoint", "sign", "--once", "--no-ops", "--checkpoint-key", prefix+".key"); !strings.Contains(out, "artifactstore topology apply") {
		t.Fatalf("sign --once before the topology exists:\n%s", out)
	}
	cli(0, "topology", "apply")
	note := cli(0, "checkpoint", "sign", "--once", "--no-ops", "--checkpoint-key", prefix+".key")
	if !strings.Contains(note, "sequence 1\n") || !strings.Contains(note, "— prod-log ") {
		t.Fatalf("sign --once printed:\n%s", note)
	}
	if out := cli(0, "checkpoint", "sign", "--once", "--no-ops", "--checkpoint-key", prefix+".key"); !strings.Contains(out, "nothing signed") {
		t.Fatalf("second sign --once:\n%s", out)
	}
	cpFile := filepath.Join(dir, "cp.txt")
	if err := os.WriteFile(cpFile, []byte(note), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := cli(0, "checkpoint", "verify", "--checkpoint-public-key", prefix+".pub", "--no-log", cpFile); !strings.Contains(out, "valid: sequence 1") {
		t.Fatalf("verify:\n%s", out)
	}
	if out := cli(1, "checkpoint", "verify", "--checkpoint-public-key", filepath.Join(dir, "other.pub"), cpFile); !strings.Contains(out, "no checkpoint signed by") {
		t.Fatalf("verify with another key:\n%s", out)
	}
	if out := cli(1, "audit", "--checkpoints"); !strings.Contains(out, "--checkpoint-public-key") {
		t.Fatalf("audit --checkpoints without a key:\n%s", out)
	}
	if out := cli(0, "audit", "--checkpoints", "--checkpoint-public-key", prefix+".pub"); !strings.Contains(out, "the log agrees with all 1 checkpoints") {
		t.Fatalf("audit --checkpoints:\n%s", out)
	}
}
