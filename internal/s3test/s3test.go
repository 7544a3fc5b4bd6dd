// Package s3test runs a real S3-compatible server for tests: versitygw in
// its posix mode, serving a temp folder on a loopback port. One server is
// shared by a test package (started by the first test that asks for a
// bucket, stopped by Main when the package's tests are done); each test
// gets its own bucket.
//
// A test package that uses it runs its tests through Main:
//
//	func TestMain(m *testing.M) { s3test.Main(m) }
//
// A test that cannot find or start versitygw fails with the command that
// installs it; it is never skipped.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	// Version is the versitygw release the tests run against.
	Version = "v1.8.0"
	// InstallCommand installs it (from the Go module proxy).
	InstallCommand = "go install github.com/versity/versitygw/cmd/versitygw@" + Version
	// EnvBinary names an environment variable that points at the
	// versitygw binary, when it is not on PATH nor in $(go env GOPATH)/bin.
	EnvBinary = "ARTIFACTSTORE_TEST_VERSITYGW"

	// AccessKey and SecretKey are the server's root credentials.
	AccessKey = "artifactstore-test"
	SecretKey = "artifactstore-test-secret"
	// Region is the server's region.
	Region = "us-east-1"

	// startTimeout only stops a hung start.
	startTimeout = 60 * time.Second
)

// Server is a running versitygw.
type Server struct {
	// Endpoint is the server's URL, http://127.0.0.1:<port>.
	Endpoint string
	// Root is the folder it serves; each bucket is a folder in it.
	Root string

	cmd    *exec.Cmd
	exited chan struct{}
	log    *lockedBuffer
	dir    string
}

var (
	mu      sync.Mutex
	shared  *Server
	started bool
	failure error
)

// Main runs the package's tests and stops the shared server, if one was
// started, before it exits with their result.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	s := shared
	mu.Unlock()
	if s != nil {
		s.stop()
	}
	os.Exit(code)
}

// Start returns the package's server, starting it on first use. It fails
// the test when versitygw cannot be found or started, saying how to
// install it.
func Start(t testing.TB) *Server {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !started {
		started = true
		shared, failure = start()
	}
	if failure != nil {
		t.Fatalf("s3test: %v", failure)
	}
	return shared
}

// Binary finds the versitygw binary: $ARTIFACTSTORE_TEST_VERSITYGW, then
// PATH, then $(go env GOPATH)/bin (where go install puts it).
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = string(bytes.TrimSpace(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw (an S3-compatible server the S3 tests run against) is not installed; install it with `%s` (it lands in $(go env GOPATH)/bin), or point %s at the binary", InstallCommand, EnvBinary)
}

func start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "s3test-")
	if err != nil {
		return nil, fmt.Errorf("create the server's folder: %w", err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// A free port can be taken between choosing and binding it; then the
	// server exits at once and another port is tried.
	var errs []error
	for range 3 {
		s, err := startOn(bin, dir, root)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	os.RemoveAll(dir)
	return nil, errors.Join(errs...)
}

func startOn(bin, dir, root string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s := &Server{Endpoint: "http://" + addr, Root: root, exited: make(chan struct{}), log: &lockedBuffer{}, dir: dir}
	s.cmd = exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", addr, "--quiet", "posix", root)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w; reinstall it with `%s`", bin, err, InstallCommand)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	deadline := time.After(startTimeout)
	for wait := time.Millisecond; ; wait = min(wait*2, 100*time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited at start (%v): %s", bin, s.cmd.ProcessState, s.log.String())
		case <-deadline:
			s.stop()
			return nil, fmt.Errorf("%s does not accept connections on %s after %s: %s", bin, addr, startTimeout, s.log.String())
		case <-time.After(wait):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stop ends the server and removes its folder.
func (s *Server) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	os.RemoveAll(s.dir)
}

// Client returns an S3 client of the server.
func (s *Server) Client() *s3sdk.Client {
	return s3sdk.New(s3sdk.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		// As the backend does: checksums only where asked for.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// Bucket creates a new, empty bucket for the test and returns its name.
// It is removed when the test ends.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "t" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3sdk.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("s3test: create bucket %s on %s: %v\nserver log: %s", name, s.Endpoint, err, s.log.String())
	}
	// Removing the bucket's folder is how posix mode drops a bucket and
	// its objects at once; nothing uses the bucket after its test.
	t.Cleanup(func() { os.RemoveAll(filepath.Join(s.Root, name)) })
	return name
}

// Log returns what the server printed so far.
func (s *Server) Log() string { return s.log.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
