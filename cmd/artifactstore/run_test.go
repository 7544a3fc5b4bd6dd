package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
)

// envMain makes the test binary act as the artifactstore binary, so that
// tests run real processes (and send them real signals) without a build.
const envMain = "ARTIFACTSTORE_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// binary starts the test binary as `artifactstore args...`.
func binary(t *testing.T, logFile string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envMain+"=1")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
		}
	})
	return cmd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// hang bounds the waits of these tests. It only stops a hung test: no wait
// is expected to come near it, however slow or busy the machine.
const hang = 2 * time.Minute

// poll checks cond, a state that the test's own actions make true sooner or
// later, until it holds; it fails the test after hang. The polling interval
// only costs time.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", hang, what)
		}
		<-tick.C
	}
}

// waitFile waits until path exists and returns its content.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	var content string
	poll(t, path+" did not appear", func() bool {
		b, err := os.ReadFile(path)
		content = strings.TrimSpace(string(b))
		return err == nil && content != ""
	})
	return content
}

// TestRunGracefulStop sends SIGTERM to `artifactstore run` in the middle of
// a stream of ingests: the process exits within its stop deadline with
// status 0, and after a restart every command sent is stored exactly once
// (invariant 9: nothing half-done is acked, nothing is lost).
func TestRunGracefulStop(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "run.log")
	natsPort := freePort(t)
	// A stop deadline that in-flight ingests meet on any machine: past it
	// they are nak'd and run exits non-zero, which this test reports.
	const stopTimeout = time.Minute
	args := []string{"run", "--database-url", dbURL, "--data-dir", dataDir, "--http-addr", "127.0.0.1:0",
		"--embedded-nats-port", fmt.Sprint(natsPort), "--stop-timeout", stopTimeout.String(), "--log-format", "json"}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("run log:\n%s", b)
		}
	})

	proc := binary(t, logFile, args...)
	url := waitFile(t, filepath.Join(dataDir, "nats.url"))
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
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

	const n = 150
	ids := make([]string, n)
	pending := make([]*producer.Pending, n)
	for i := range n {
		body := bytes.Repeat([]byte{byte(i)}, 2048+i)
		ids[i] = fmt.Sprintf("graceful-%03d", i)
		p, err := client.Put(ctx, producer.Put{CommandID: ids[i], Package: "graceful", Path: fmt.Sprintf("f/%03d", i), Body: bytes.NewReader(body), Size: int64(len(body))})
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		pending[i] = p
		if i == n/3 {
			// Mid-stream: wait for one reply so ingests are in flight, then stop.
			wctx, cancel := context.WithTimeout(ctx, hang)
			if _, err := pending[0].Wait(wctx); err != nil {
				t.Fatalf("first reply: %v", err)
			}
			cancel()
			checkMetrics(t, logFile)
			if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// The stop deadline bounds the wait for in-flight handlers;
			// closing the rest takes what the machine needs, so the test
			// bounds the whole stop only by hang, against a process that
			// never exits.
			start := time.Now()
			exited := make(chan error, 1)
			go func() { exited <- proc.Wait() }()
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("run exited with %v after SIGTERM, want status 0", err)
				}
			case <-time.After(stopTimeout + hang):
				t.Fatalf("run did not exit %s after SIGTERM (stop deadline %s)", stopTimeout+hang, stopTimeout)
			}
			t.Logf("stopped in %s", time.Since(start))
			proc = binary(t, logFile, args...)
		}
	}

	// Every command ends stored, exactly once.
	var done int
	poll(t, fmt.Sprintf("not every one of the %d commands committed after the restart", n), func() bool {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM commands WHERE command_id LIKE 'graceful-%'`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		return done == n
	})
	var files, stored, rejected int
	if err := pool.QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE event_type = 'file.added'),
		count(*) FILTER (WHERE event_type = 'object.stored'),
		count(*) FILTER (WHERE event_type = 'ingest.rejected')
		FROM events WHERE command_id LIKE 'graceful-%'`).Scan(&files, &stored, &rejected); err != nil {
		t.Fatal(err)
	}
	if files != n || stored != n || rejected != 0 {
		t.Fatalf("events: %d file.added, %d object.stored, %d rejected; want %d, %d, 0", files, stored, rejected, n, n)
	}
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("second run exited with %v", err)
	}
}

// checkMetrics finds the HTTP address run logged and checks that /metrics
// counts the ingest, /readyz is ready and the API answers.
func checkMetrics(t *testing.T, logFile string) {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("run did not log its HTTP address:\n%s", b)
	}
	get := func(path string) string {
		resp, err := http.Get("http://" + string(m[1]) + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		return string(body)
	}
	if metrics := get("/metrics"); !regexp.MustCompile(`artifactstore_ingest_objects_total\{deduplicated="false"\} [1-9]`).MatchString(metrics) ||
		!strings.Contains(metrics, "artifactstore_projector_lag_events") {
		t.Fatalf("/metrics does not count the ingest or lacks the projector lag:\n%s", metrics)
	}
	if ready := get("/readyz"); !strings.Contains(ready, `"ready":true`) {
		t.Fatalf("/readyz: %s", ready)
	}
	get("/v1/packages")
}
