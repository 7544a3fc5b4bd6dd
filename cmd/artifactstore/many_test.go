package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/fetch"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/internal/s3test"
	"github.com/artifactstore/artifactstore/storage/s3"
)

// machine is one simulated host of TestManyMachines: what its processes
// share with the others (NATS, PostgreSQL, the S3 bucket, all through the
// environment, as docker-compose.yml gives them) and its own data
// directory.
type machine struct {
	t       *testing.T
	name    string
	dataDir string
	env     []string
	logs    []string
}

// role starts `artifactstore args...` as a process of the machine.
func (m *machine) role(args ...string) *exec.Cmd {
	m.t.Helper()
	log := filepath.Join(m.t.TempDir(), fmt.Sprintf("%s-%s-%d.log", m.name, args[0], len(m.logs)))
	m.logs = append(m.logs, log)
	return binaryEnv(m.t, log, m.env, append([]string{"--data-dir", m.dataDir, "--http-addr", "127.0.0.1:0"}, args...)...)
}

// cli runs a client command of the machine to its end and returns its
// standard output and error and its exit status.
func (m *machine) cli(args ...string) (stdout, stderr string, code int) {
	m.t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--data-dir", m.dataDir}, args...)...)
	cmd.Env = append(append(os.Environ(), m.env...), envMain+"=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		m.t.Fatalf("artifactstore %v: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// cliOK is cli that fails the test unless the command exits 0, and
// returns its standard output and error.
func (m *machine) cliOK(args ...string) string {
	m.t.Helper()
	out, errOut, code := m.cli(args...)
	if code != 0 {
		m.t.Fatalf("artifactstore %v on %s exited %d:\n%s%s", args, m.name, code, out, errOut)
	}
	return out + errOut
}

// stopRole sends SIGTERM to a role and wants it to exit 0.
func stopRole(t *testing.T, p *exec.Cmd) {
	t.Helper()
	if err := p.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Errorf("artifactstore %v exited with %v after SIGTERM", p.Args[1:], err)
	}
}

// logAddr finds the HTTP address a role logged.
func logAddr(t *testing.T, logFile string) string {
	t.Helper()
	re := regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`)
	var addr string
	poll(t, logFile+" names no HTTP address", func() bool {
		b, _ := os.ReadFile(logFile)
		if m := re.FindSubmatch(b); m != nil {
			addr = string(m[1])
			return true
		}
		return false
	})
	return addr
}

// TestManyMachines runs the pipeline as on several machines that share
// only NATS, PostgreSQL and an S3 bucket: two ingesters with data
// directories of their own, the projector, and an API server, a verifier
// and a reaper with no local storage at all (their data directory never
// comes to exist). Every file put through either ingester (inline and
// staged, by the real producer of `put`) is served by the API and proven
// by the verifying client, whole and as a range; the scrub and `verify`
// read the bytes from S3 and find damage made there; the reaper deletes
// an expired object from the bucket; `status` and `explain` work with
// nothing but the S3 backend configured.
func TestManyMachines(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pool, dbURL := pgtest.NewDB(t)
	ns := natstest.StartEmbedded(t, nil)
	ctx := t.Context()
	const prefix = "objects"
	shared := []string{
		"ARTIFACTSTORE_NATS_URL=" + ns.URL(),
		"ARTIFACTSTORE_DATABASE_URL=" + dbURL,
		"ARTIFACTSTORE_STORAGE=" + fmt.Sprintf("s3://%s/%s?endpoint=%s&region=%s&path_style=true&part_size=5MiB", bucket, prefix, srv.Endpoint, s3test.Region),
		"ARTIFACTSTORE_LOG_FORMAT=json",
		"AWS_ACCESS_KEY_ID=" + s3test.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey,
		"AWS_PROFILE=", "AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent",
	}
	root := t.TempDir()
	host := func(name string, mkdir bool) *machine {
		m := &machine{t: t, name: name, dataDir: filepath.Join(root, name), env: shared}
		if mkdir {
			if err := os.Mkdir(m.dataDir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	hostA, hostB := host("ingest-a", true), host("ingest-b", true)
	apiHost := host("api", false) // also runs the projector, verifier, reaper and the clients
	all := []*machine{hostA, hostB, apiHost}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, m := range all {
			for _, l := range m.logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), b)
			}
		}
	})

	apiHost.cliOK("topology", "apply")
	project := apiHost.role("project")
	serve := apiHost.role("serve")
	ingestA := hostA.role("ingest")
	api := &fetch.Client{BaseURL: "http://" + logAddr(t, apiHost.logs[1])}

	// Each ingester alone stores an inline and a staged file (A's staged
	// one in two parts of 5 MiB), then both share the work.
	src := t.TempDir()
	files := map[string]map[string][]byte{}
	write := func(pkg, name string, body []byte) {
		t.Helper()
		dir := filepath.Join(src, strings.ReplaceAll(pkg, "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
		if files[pkg] == nil {
			files[pkg] = map[string][]byte{}
		}
		files[pkg][name] = body
	}
	put := func(m *machine, pkg string, extra ...string) {
		t.Helper()
		dir := filepath.Join(src, strings.ReplaceAll(pkg, "/", "_"))
		out := m.cliOK(append(append([]string{"put", "--package", pkg}, extra...), dir)...)
		if want := fmt.Sprintf("%d of %d file(s) stored", len(files[pkg]), len(files[pkg])); !strings.Contains(out, want) {
			t.Fatalf("put %s: want %q in\n%s", pkg, want, out)
		}
	}
	unique := func(seed string, n int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("%-31s\n", seed)), n/32+1)[:n]
	}
	write("many/a", "inline.txt", []byte("put through ingester A, inline\n"))
	write("many/a", "staged.bin", unique("staged through ingester A", 6<<20+12345))
	put(hostA, "many/a")

	ingestB := hostB.role("ingest")
	stopRole(t, ingestA)
	write("many/b", "inline.txt", []byte("put through ingester B, inline\n"))
	write("many/b", "staged.bin", unique("staged through ingester B", 2<<20+777))
	put(hostB, "many/b")

	ingestA = hostA.role("ingest")
	for i := range 6 {
		write("many/both", fmt.Sprintf("f%d.txt", i), unique(fmt.Sprintf("either ingester %d", i), 1000+i*40_000))
	}
	put(hostA, "many/both")

	// Every file, from the API with no local storage, proven by the
	// verifying client, whole and as a range.
	objects := map[digest.Address][]byte{}
	for pkg, byName := range files {
		for name, body := range byName {
			var (
				target fetch.Target
				err    error
			)
			poll(t, "the API does not list "+pkg+"/"+name, func() bool {
				// put stores a directory's files under its name.
				target, err = api.ResolveFile(ctx, pkg, strings.ReplaceAll(pkg, "/", "_")+"/"+name)
				var ae *fetch.APIError
				pending := errors.As(err, &ae) && ae.Status == http.StatusNotFound || err != nil && strings.Contains(err.Error(), "has no file")
				return !pending // the projection follows the reply shortly
			})
			if err != nil {
				t.Fatal(err)
			}
			objects[target.Address] = body
			var whole bytes.Buffer
			if _, err := api.Get(ctx, target, nil, &whole); err != nil || !bytes.Equal(whole.Bytes(), body) {
				t.Fatalf("GET %s/%s through the API: %d bytes, %v", pkg, name, whole.Len(), err)
			}
			off, end := int64(len(body)/3), int64(len(body)/3+len(body)/4)
			var part bytes.Buffer
			if _, err := api.Get(ctx, target, &fetch.Range{Start: off, End: end}, &part); err != nil || !bytes.Equal(part.Bytes(), body[off:end+1]) {
				t.Fatalf("GET %s/%s bytes %d-%d through the API: %d bytes, %v", pkg, name, off, end, part.Len(), err)
			}
		}
	}
	s3c := srv.Client()
	for a, body := range objects {
		key := prefix + "/" + s3.ObjectKey(a)
		out, err := s3c.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &bucket, Key: &key})
		if err != nil || aws.ToInt64(out.ContentLength) != int64(len(body)) {
			t.Fatalf("%s is not at %s in the bucket: %v", a, key, err)
		}
	}

	// The scrub scheduler of a verifier started now finds every object
	// never verified and verifies it, from the bucket.
	verify := apiHost.role("verify")
	poll(t, "the scrub does not verify every object", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(DISTINCT subject_id) FROM events WHERE event_type = 'object.verified'`).Scan(&n)
		return err == nil && n == len(objects)
	})
	if out := apiHost.cliOK("verify", "--package", "many/a"); !strings.Contains(out, "2 verified, 0 corrupt, 0 missing, 0 errors") {
		t.Fatalf("verify --package many/a:\n%s", out)
	}
	// Damage made in the bucket is found by a verification.
	damaged := files["many/both"]["f1.txt"]
	var damagedAddr digest.Address
	for a, body := range objects {
		if bytes.Equal(body, damaged) {
			damagedAddr = a
		}
	}
	bad := bytes.Clone(damaged)
	bad[len(bad)/2] ^= 1
	key := prefix + "/" + s3.ObjectKey(damagedAddr)
	if _, err := s3c.PutObject(ctx, &s3sdk.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(bad)}); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := apiHost.cli("verify", "--object", damagedAddr.String()); !strings.Contains(out, "0 verified, 1 corrupt") {
		t.Fatalf("verify --object of an object damaged in the bucket:\n%s", out)
	}

	// An expired object is deleted from the bucket, with its tree. The
	// transient class expires at once on this store.
	if _, err := pool.Exec(ctx, `UPDATE retention_classes SET default_duration = interval '0' WHERE name = 'transient'`); err != nil {
		t.Fatal(err)
	}
	expiring := unique("expires at once", 300_000)
	write("many/transient", "gone.bin", expiring)
	put(hostB, "many/transient", "--class", "transient")
	gone := digest.MustParse(fmt.Sprintf("blake3:%x", blake3.Sum256(expiring)))
	goneKey := prefix + "/" + s3.ObjectKey(gone)
	for _, k := range []string{goneKey, goneKey + ".bao"} {
		if _, err := s3c.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &bucket, Key: &k}); err != nil {
			t.Fatalf("%s is not in the bucket before the reaper runs: %v", k, err)
		}
	}
	reap := apiHost.role("reap", "--grace", "0", "--interval", "200ms")
	poll(t, "the reaper does not delete the expired object", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'object.deleted' AND subject_id = $1`, gone.String()).Scan(&n)
		return err == nil && n == 1
	})
	for _, k := range []string{goneKey, goneKey + ".bao"} {
		_, err := s3c.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &bucket, Key: &k})
		var nf *types.NotFound
		if !errors.As(err, &nf) {
			t.Errorf("%s after the reaper deleted its object: %v, want not found", k, err)
		}
	}

	// status and explain, with only the S3 backend configured.
	out, _, _ := apiHost.cli("status", "--json")
	var rep struct {
		Backends []struct {
			ID      string `json:"id"`
			Healthy bool   `json:"healthy"`
			Detail  string `json:"detail"`
		} `json:"backends"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(rep.Backends) != 1 || rep.Backends[0].ID != "s3" || !rep.Backends[0].Healthy {
		t.Errorf("status reports the backends %+v, want the one S3 backend, healthy", rep.Backends)
	}
	for _, p := range rep.Problems {
		if strings.Contains(p, "storage backend") {
			t.Errorf("status reports a storage problem: %s", p)
		}
	}
	if out := apiHost.cliOK("explain", gone.String()); !regexp.MustCompile(`(?m)^\s+s3\s+deleted\b`).MatchString(out) {
		t.Errorf("explain of the reaped object does not show its S3 copy deleted:\n%s", out)
	}
	if out := apiHost.cliOK("explain", damagedAddr.String()); !regexp.MustCompile(`(?m)^\s+s3\s+corrupt\b`).MatchString(out) {
		t.Errorf("explain of the damaged object does not show its S3 copy corrupt:\n%s", out)
	}
	resp, err := http.Get(api.BaseURL + "/v1/objects/" + gone.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Errorf("GET of the reaped object: %d, want 410", resp.StatusCode)
	}

	for _, p := range []*exec.Cmd{ingestA, ingestB, verify, reap, serve, project} {
		stopRole(t, p)
	}
	// The machines kept no object bytes: the API's host has no data
	// directory at all, the ingesters' are empty.
	if _, err := os.Stat(apiHost.dataDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the API host's data directory %s exists (%v); its roles need no local storage", apiHost.dataDir, err)
	}
	for _, m := range []*machine{hostA, hostB} {
		_ = filepath.WalkDir(m.dataDir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && path != m.dataDir {
				t.Errorf("ingester %s left %s in its data directory", m.name, path)
			}
			return nil
		})
	}
}
