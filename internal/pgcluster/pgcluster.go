// Package pgcluster runs a private PostgreSQL cluster for tests that stop
// and start the database: initdb into a fresh directory, pg_ctl start on a
// free loopback port, and Stop and Start at will, as an outage would. The
// shared test server (internal/pgtest) must never be stopped; this one
// belongs to one test.
//
// The binaries are found in ARTIFACTSTORE_TEST_PG_BIN, else in the newest
// /usr/lib/postgresql/<version>/bin, else through pg_config --bindir.
// PostgreSQL refuses to run as root: when the test runs as root, every
// command runs as the "postgres" user (the data directory is created for
// it).
package pgcluster

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvBin names the environment variable with the directory of initdb and
// pg_ctl.
const EnvBin = "ARTIFACTSTORE_TEST_PG_BIN"

// installHint says how to get the binaries.
const installHint = "install the PostgreSQL server binaries (Debian: apt-get install postgresql) or set " + EnvBin + " to the directory holding initdb and pg_ctl"

// Cluster is one private PostgreSQL server.
type Cluster struct {
	bin  string
	dir  string // parent of data, socket and log
	port int
	cred *syscall.Credential // set when running as root

	mu      sync.Mutex
	running bool
}

// Start creates and starts a cluster for the test; it is stopped and
// removed when the test ends. The superuser is "postgres", trust
// authentication, on 127.0.0.1 and a free port.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin, err := findBin()
	if err != nil {
		t.Fatalf("pgcluster: %v; %s", err, installHint)
	}
	c := &Cluster{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgcluster: running as root, PostgreSQL needs an unprivileged user and there is no \"postgres\" user: %v; run the tests as another user or create it", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir(): its parents are private to the test's user, and
	// the postgres user must reach the data directory.
	dir, err := os.MkdirTemp("", "pgcluster-")
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	c.dir = dir
	t.Cleanup(func() {
		c.stop(context.Background())
		_ = os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	for _, sub := range []string{"data", "run"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatalf("pgcluster: %v", err)
		}
		if c.cred != nil {
			if err := os.Chown(filepath.Join(dir, sub), int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				t.Fatalf("pgcluster: %v", err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard
	defer cancel()
	if out, err := c.run(ctx, "initdb", "-D", c.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		t.Fatalf("pgcluster: initdb: %v\n%s", err, out)
	}
	c.port, err = freePort()
	if err != nil {
		t.Fatalf("pgcluster: free port: %v", err)
	}
	c.Start(t)
	return c
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

// URL is the URL of database db on the cluster.
func (c *Cluster) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: "127.0.0.1:" + strconv.Itoa(c.port), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// CreateDB creates database name and returns its URL.
func (c *Cluster) CreateDB(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatalf("pgcluster: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgcluster: create database %s: %v", name, err)
	}
	return c.URL(name)
}

// Start starts the stopped cluster and returns once it accepts
// connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB",
		c.port, filepath.Join(c.dir, "run"))
	if out, err := c.run(ctx, "pg_ctl", "start", "-w", "-t", "110", "-D", c.dataDir(), "-l", filepath.Join(c.dataDir(), "server.log"), "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dataDir(), "server.log"))
		t.Fatalf("pgcluster: pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	c.running = true
}

// Stop shuts the cluster down (fast mode: sessions are terminated, as in
// an outage) and returns once it is gone. Connections fail until Start.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.stop(ctx); err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
}

func (c *Cluster) stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if out, err := c.run(ctx, "pg_ctl", "stop", "-w", "-t", "110", "-m", "fast", "-D", c.dataDir()); err != nil {
		return fmt.Errorf("pg_ctl stop: %w\n%s", err, out)
	}
	c.running = false
	return nil
}

// run runs a PostgreSQL binary, as the postgres user when root.
func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

func findBin() (string, error) {
	if d := os.Getenv(EnvBin); d != "" {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBin, d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no initdb/pg_ctl found")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
