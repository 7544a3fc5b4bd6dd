// Package natstest runs a real nats-server with JetStream for tests: an
// embedded server in-process per test, or a shared external server named by
// ARTIFACTSTORE_TEST_NATS_URL.
//
// Tests must name every stream, consumer, bucket and subject they create
// with [Prefix], so that they can run in parallel against one shared server.
package natstest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EnvURL names the environment variable that points tests at an external
// NATS server instead of an embedded one. The server must have JetStream
// enabled and a max_payload of at least [MaxPayload] for the large-message
// tests.
const EnvURL = "ARTIFACTSTORE_TEST_NATS_URL"

// MaxPayload is the max_payload of the embedded test server: 8 MiB, the
// size of the largest command the commands stream accepts, plus headroom
// for headers.
const MaxPayload = 8<<20 + 64<<10

// startTimeout bounds how long a test waits for the embedded server. It
// only stops a hung start; a busy machine may need seconds.
const startTimeout = time.Minute

// Server is a running NATS server for one test.
type Server struct {
	url      string
	external bool

	mu       sync.Mutex
	srv      *server.Server
	storeDir string
	port     int
	tune     func(*server.Options)
	// users are the passwords of the users of a server started by
	// StartDenying, by name.
	users map[string]string
}

// Users of a server started by [StartDenying].
const (
	// UserAdmin may do anything; [Server.Connect] connects as it.
	UserAdmin = "admin"
	// UserDenied may do anything but publish on the denied subjects.
	UserDenied = "denied"
)

// StartDenying starts an embedded server (see [StartEmbedded]) with two
// users: [UserAdmin], allowed everything, and [UserDenied], allowed
// everything but publishing on the subjects in deny (patterns allowed).
// Connect connects as the admin, [Server.ConnectAs] as either.
func StartDenying(t testing.TB, deny ...string) *Server {
	t.Helper()
	users := map[string]string{UserAdmin: "admin-pw", UserDenied: "denied-pw"}
	s := &Server{storeDir: t.TempDir(), port: -1, users: users, tune: func(o *server.Options) {
		o.Users = []*server.User{
			{Username: UserAdmin, Password: users[UserAdmin]},
			{Username: UserDenied, Password: users[UserDenied], Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
			}},
		}
	}}
	s.start(t)
	t.Cleanup(func() { s.shutdown() })
	return s
}

// Start returns a NATS server with JetStream for the test. Without
// ARTIFACTSTORE_TEST_NATS_URL it starts an embedded server on a random
// loopback port with its store under t.TempDir(), and shuts it down (and
// waits for it) when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if url := os.Getenv(EnvURL); url != "" {
		s := &Server{url: url, external: true}
		nc, err := nats.Connect(url, nats.Name("natstest probe"), nats.Timeout(30*time.Second))
		if err != nil {
			t.Fatalf("natstest: %s=%s is unreachable: %v; start it with `nats-server -js -a 127.0.0.1 -p 4222 --max_payload 9MB` or unset %s to use an embedded server", EnvURL, url, err, EnvURL)
		}
		nc.Close()
		return s
	}
	s := &Server{storeDir: t.TempDir(), port: -1}
	s.start(t)
	t.Cleanup(func() { s.shutdown() })
	return s
}

// StartEmbedded is Start with an embedded server whose options tune
// adjusts (at every start, restarts included), e.g. a small stream ingest
// queue so that a fast publisher meets 429 too many requests. It ignores
// ARTIFACTSTORE_TEST_NATS_URL: the options need a server of the test's
// own.
func StartEmbedded(t testing.TB, tune func(*server.Options)) *Server {
	t.Helper()
	s := &Server{storeDir: t.TempDir(), port: -1, tune: tune}
	s.start(t)
	t.Cleanup(func() { s.shutdown() })
	return s
}

// Embedded reports whether the server runs in-process (and so can be
// restarted by [Server.Restart]).
func (s *Server) Embedded() bool { return !s.external }

// URL is the client URL of the server.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Connect opens a client connection that is closed when the test ends. It
// reconnects forever, so that it survives [Server.Restart].
func (s *Server) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	return s.ConnectAs(t, UserAdmin)
}

// ConnectAs is [Server.Connect] as user, on a server started by
// [StartDenying] (elsewhere it is Connect).
func (s *Server) ConnectAs(t testing.TB, user string) *nats.Conn {
	t.Helper()
	opts := []nats.Option{
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
	}
	if pw, ok := s.users[user]; ok {
		opts = append(opts, nats.UserInfo(user, pw))
	}
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connect to %s: %v", s.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Restart shuts the embedded server down, waits until it is gone, and
// starts it again on the same port and the same store directory, as after a
// crash of the NATS process. It fails the test on an external server.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.external {
		t.Fatalf("natstest: Restart needs the embedded server; unset %s to run this test", EnvURL)
	}
	s.shutdown()
	s.start(t)
}

// Stop shuts the embedded server down and waits until it is gone; a later
// [Server.Restart] brings it back. It fails the test on an external server.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.external {
		t.Fatalf("natstest: Stop needs the embedded server; unset %s to run this test", EnvURL)
	}
	s.shutdown()
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	opts := &server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       s.port,
		JetStream:  true,
		StoreDir:   s.storeDir,
		MaxPayload: MaxPayload,
		NoLog:      true,
		NoSigs:     true,
		// A restart must not be refused because JetStream's default
		// limits are computed from the machine's memory and disk.
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  4 << 30,
	}
	if s.tune != nil {
		s.tune(opts)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: configure embedded nats-server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(startTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		t.Fatalf("natstest: embedded nats-server (store %s, port %d) not ready after %s", s.storeDir, s.port, startTimeout)
	}
	s.srv = srv
	s.url = srv.ClientURL()
	if s.port == -1 {
		// Keep the port for restarts, so that clients reconnect to it.
		if addr, ok := srv.Addr().(*net.TCPAddr); ok {
			s.port = addr.Port
		}
	}
}

func (s *Server) shutdown() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Shutdown()
	srv.WaitForShutdown()
}

// Prefix returns a name prefix unique to this test run, made of a letter and
// hex digits so that it is valid both in stream, consumer and bucket names
// and as a subject token. Use it for every name a test creates.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("natstest: random prefix: %v", err)
	}
	return "t" + hex.EncodeToString(b[:])
}
