package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/internal/s3test"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage/s3"
)

// TestStorageFlags opens the backends --storage names: the first takes
// new writes, ids come from ?id= or the kind, and mistakes are refused
// with what to do.
func TestStorageFlags(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s3URL := fmt.Sprintf("s3://%s/objects?endpoint=%s&region=%s&path_style=true", bucket, srv.Endpoint, s3test.Region)
	dir := t.TempDir()
	g := &Globals{DataDir: dir}
	g.Storage = []string{s3URL, "file://" + filepath.Join(dir, "cold") + "?id=cold"}
	g.S3AccessKeyID, g.S3SecretAccessKey = s3test.AccessKey, s3test.SecretKey
	lg := zerolog.New(zerolog.NewTestWriter(t))
	dp, bs, err := g.storage(t.Context(), lg)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	if dp.DefaultBackend() != "s3" {
		t.Fatalf("default backend %q, want the first --storage, s3", dp.DefaultBackend())
	}
	for id, h := range dp.Health(t.Context()) {
		if !h.Healthy {
			t.Errorf("backend %s unhealthy: %s", id, h.Detail)
		}
	}
	stores := bs.reaperStores()
	if len(stores) != 2 || stores[0].BackendID != "s3" || stores[0].CleanAbandoned == nil || stores[0].Quarantiner == nil ||
		stores[1].BackendID != "cold" || stores[1].CleanAbandoned != nil || stores[1].Quarantiner == nil {
		t.Fatalf("reaper stores = %+v", stores)
	}
	if _, err := os.Stat(filepath.Join(dir, "cold")); err != nil {
		t.Fatalf("the file backend's directory: %v", err)
	}

	for _, c := range []struct {
		storage []string
		key     string
		want    string
	}{
		{[]string{"file://" + dir, "file://" + dir + "/b"}, "", "?id="},
		{[]string{"ftp://host/x"}, "", "file:///path or s3://"},
		{[]string{"file://host/x"}, "", "local path"},
		{[]string{"file:///x?mode=fast"}, "", "unknown parameter"},
		{[]string{s3URL}, "only-the-id", "go together"},
		{[]string{"s3://b?pathstyle=1"}, "", "unknown parameter"},
	} {
		g := &Globals{DataDir: dir}
		g.Storage, g.S3AccessKeyID = c.storage, c.key
		_, bs, err := g.storage(context.Background(), lg)
		if err == nil {
			bs.Close()
			t.Errorf("--storage %v: accepted", c.storage)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("--storage %v: %v; want it to say %q", c.storage, err, c.want)
		}
	}

	// No --storage: the local backend under --data-dir, as before.
	dp, bs, err = (&Globals{DataDir: dir}).storage(t.Context(), lg)
	if err != nil {
		t.Fatal(err)
	}
	bs.Close()
	if dp.DefaultBackend() != "local" {
		t.Fatalf("default backend without --storage: %q, want local", dp.DefaultBackend())
	}
}

// TestRunOnS3 runs the whole pipeline with its bytes on S3, configured as
// an operator would: ARTIFACTSTORE_STORAGE and the AWS SDK's standard
// environment variables for the credentials. Files are stored (one of
// them in two parts, its BLAKE3 claimed), land under their addresses in
// the bucket with their trees, and read back through the API with ranges.
func TestRunOnS3(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	_, dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "run.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("run log:\n%s", b)
		}
	})
	proc := binaryEnv(t, logFile, []string{
		"ARTIFACTSTORE_STORAGE=" + fmt.Sprintf("s3://%s/evidence?endpoint=%s&region=%s&path_style=true&part_size=5MiB", bucket, srv.Endpoint, s3test.Region),
		"AWS_ACCESS_KEY_ID=" + s3test.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey,
		"AWS_PROFILE=", "AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent",
	}, "run", "--database-url", dbURL, "--data-dir", dataDir, "--http-addr", "127.0.0.1:0",
		"--embedded-nats-port", fmt.Sprint(freePort(t)), "--log-format", "json")
	url := waitFile(t, filepath.Join(dataDir, "nats.url"))
	// Staging needs the topology, which exists once run says it runs.
	poll(t, "run did not log that it runs", func() bool {
		b, err := os.ReadFile(logFile)
		return err == nil && bytes.Contains(b, []byte("artifactstore running"))
	})
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	client, err := producer.New(ctx, producer.Config{NATS: nc, JetStream: js, Producer: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	files := map[string][]byte{
		"small":  []byte("stored on S3"),
		"tree":   bytes.Repeat([]byte("0123456789abcdef"), 20_000),
		"parted": bytes.Repeat([]byte("fedcba9876543210"), 6<<16+3), // two parts of 5 MiB
	}
	addrs := map[string]digest.Address{}
	for name, body := range files {
		put := producer.Put{Package: "on-s3", Path: name, Body: bytes.NewReader(body), Size: int64(len(body))}
		if name == "parted" {
			put.Expect = []digest.Address{digest.MustParse(fmt.Sprintf("blake3:%x", blake3.Sum256(body)))}
		}
		p, err := client.Put(ctx, put)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		rep, err := p.Wait(wctx)
		cancel()
		if err != nil || rep.Err() != nil {
			t.Fatalf("put %s: %v %v", name, err, rep.Err())
		}
		addrs[name] = digest.MustParse(rep.Address)
	}

	s3c := srv.Client()
	for name, a := range addrs {
		key := "evidence/" + s3.ObjectKey(a)
		out, err := s3c.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &bucket, Key: &key})
		if err != nil || aws.ToInt64(out.ContentLength) != int64(len(files[name])) {
			t.Fatalf("%s is not at %s in the bucket: %v", name, key, err)
		}
		if name != "small" {
			tree := key + ".bao"
			if _, err := s3c.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &bucket, Key: &tree}); err != nil {
				t.Fatalf("the tree of %s is not at %s: %v", name, tree, err)
			}
		}
	}

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("run did not log its HTTP address")
	}
	if bytes.Contains(b, []byte(s3test.SecretKey)) {
		t.Fatal("the log shows the S3 secret key")
	}
	// The API reads the projection, which follows the replies shortly.
	get := func(path, rng string) []byte {
		var body []byte
		var status int
		poll(t, "GET "+path+" kept answering 404", func() bool {
			req, _ := http.NewRequest(http.MethodGet, "http://"+string(m[1])+path, nil)
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if body, err = io.ReadAll(resp.Body); err != nil {
				t.Fatal(err)
			}
			status = resp.StatusCode
			return status != http.StatusNotFound
		})
		if status/100 != 2 {
			t.Fatalf("GET %s (%s): %d %s", path, rng, status, body)
		}
		return body
	}
	parted := files["parted"]
	if got := get("/v1/objects/"+addrs["parted"].String(), ""); !bytes.Equal(got, parted) {
		t.Fatalf("GET of the parted object: %d bytes, want %d", len(got), len(parted))
	}
	off := 5<<20 - 1000
	if got := get("/v1/objects/"+addrs["parted"].String(), fmt.Sprintf("bytes=%d-%d", off, off+1<<20-1)); !bytes.Equal(got, parted[off:off+1<<20]) {
		t.Fatal("a range across the part boundary differs")
	}
	if got := get("/v1/objects/"+addrs["small"].String(), ""); !bytes.Equal(got, files["small"]) {
		t.Fatal("GET of the small object differs")
	}
	if ready := get("/readyz", ""); !bytes.Contains(ready, []byte(`"ready":true`)) {
		t.Fatalf("/readyz: %s", ready)
	}
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		t.Fatalf("run exited with %v", err)
	}
}

// TestStatusBackendSpace: status reports the backends --storage names,
// each under its id (S3 through the store's health check, a directory
// through its file system), and the local backend under --data-dir only
// when --storage names none.
func TestStatusBackendSpace(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s3URL := fmt.Sprintf("s3://%s/objects?endpoint=%s&region=%s&path_style=true", bucket, srv.Endpoint, s3test.Region)
	dir := t.TempDir()
	g := &Globals{DataDir: filepath.Join(dir, "absent")}
	g.Storage = []string{s3URL, "file://" + dir + "?id=cold"}
	g.S3AccessKeyID, g.S3SecretAccessKey = s3test.AccessKey, s3test.SecretKey
	space, err := g.backendSpace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := space(t.Context())
	if len(got) != 2 || !got["s3"].Healthy || got["s3"].FreeBytes != 0 || !got["cold"].Healthy || got["cold"].FreeBytes == 0 {
		t.Fatalf("backend space with --storage s3 and file: %+v", got)
	}

	missing := *g
	missing.Storage = []string{fmt.Sprintf("s3://nobucket-%s/objects?endpoint=%s&region=%s&path_style=true", bucket, srv.Endpoint, s3test.Region)}
	space, err = missing.backendSpace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if h := space(t.Context())["s3"]; h.Healthy {
		t.Fatalf("a bucket that does not exist is healthy: %+v", h)
	}

	twice := *g
	twice.Storage = []string{"file://" + dir, "file://" + dir + "/b"}
	if _, err := twice.backendSpace(t.Context()); err == nil || !strings.Contains(err.Error(), "?id=") {
		t.Fatalf("two backends with one id: %v", err)
	}

	local := &Globals{DataDir: filepath.Join(dir, "absent")}
	space, err = local.backendSpace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := space(t.Context())["local"]; !ok || h.Healthy || !strings.Contains(h.Detail, "--data-dir") {
		t.Fatalf("no --storage and no data directory: %+v", space(t.Context()))
	}
}
