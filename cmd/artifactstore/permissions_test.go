package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/staging"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// usage records, from the server's trace, every subject each user
// published or subscribed to, and every permission violation.
type usage struct {
	mu         sync.Mutex
	pub, sub   map[string]map[string]bool // user -> subjects
	violations []string
}

// traceOp matches a client operation in a trace line after the client
// authenticated: `... - "$G/user:<user>" - <<- [PUB <subject> ...]`.
var traceOp = regexp.MustCompile(`"[^"/]*/(?:user:)?([^"]+)" - <<- \[(H?PUB|SUB) ([^ \]]+)`)

func (u *usage) record(line string) {
	m := traceOp.FindStringSubmatch(line)
	if m == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	set := u.pub
	if m[2] == "SUB" {
		set = u.sub
	}
	if set[m[1]] == nil {
		set[m[1]] = map[string]bool{}
	}
	set[m[1]][m[3]] = true
}

func (u *usage) violation(line string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.violations = append(u.violations, line)
}

// takeViolations returns the violations seen so far and forgets them.
func (u *usage) takeViolations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.violations
	u.violations = nil
	return v
}

// serverLog feeds the server's log lines to a usage.
type serverLog struct {
	u *usage
	t *testing.T
}

func (l serverLog) Noticef(string, ...any) {}
func (l serverLog) Debugf(string, ...any)  {}
func (l serverLog) Warnf(format string, v ...any) {
	if line := fmt.Sprintf(format, v...); strings.Contains(line, "Violation") {
		l.u.violation(line)
	}
}
func (l serverLog) Errorf(format string, v ...any) { l.Warnf(format, v...) }
func (l serverLog) Fatalf(format string, v ...any) { l.Warnf(format, v...) }
func (l serverLog) Tracef(format string, v ...any) { l.u.record(fmt.Sprintf(format, v...)) }

// startSecuredNATS starts a nats-server with JetStream whose only users are
// the roles of bus.Topology.Roles, configured from the very nats-server
// authorization block 'artifactstore topology permissions --format
// nats-server' prints, with a random password each. The server traces
// every client operation into the returned usage.
func startSecuredNATS(t *testing.T) (url string, passwords map[string]string, u *usage) {
	t.Helper()
	return startSecuredNATSRoles(t, bus.DefaultTopology().Roles())
}

// startSecuredNATSRoles is startSecuredNATS with the users of roles.
func startSecuredNATSRoles(t *testing.T, roles []bus.Role) (url string, passwords map[string]string, u *usage) {
	t.Helper()
	passwords = map[string]string{}
	for _, r := range roles {
		var b [12]byte
		_, _ = rand.Read(b[:])
		passwords[r.Name] = hex.EncodeToString(b[:])
	}
	var conf bytes.Buffer
	fmt.Fprintf(&conf, "max_payload: %d\njetstream {\n  store_dir: %q\n  max_memory_store: 268435456\n  max_file_store: 4294967296\n}\n",
		9<<20, t.TempDir())
	if err := writeNATSAuthorization(&conf, roles, func(role string) string { return fmt.Sprintf("%q", passwords[role]) }); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the generated nats-server configuration does not load: %v\n%s", err, conf.String())
	}
	if len(opts.Users) != len(roles) {
		t.Fatalf("the generated configuration has %d users, want %d (one per role)", len(opts.Users), len(roles))
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.NoSigs = true
	opts.Trace, opts.TraceHeaders = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	u = &usage{pub: map[string]map[string]bool{}, sub: map[string]map[string]bool{}}
	srv.SetLoggerV2(serverLog{u: u, t: t}, false, true, false)
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server not ready after 30 s")
	}
	return srv.ClientURL(), passwords, u
}

// roleProc is one artifactstore command running in this process.
type roleProc struct {
	args        []string
	out, errOut syncBuffer
	cancel      context.CancelFunc
	done        chan int
}

// startCLI runs `artifactstore args...` in a goroutine until stop.
func startCLI(t *testing.T, args ...string) *roleProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &roleProc{args: args, cancel: cancel, done: make(chan int, 1)}
	go func() { p.done <- run(ctx, args, &p.out, &p.errOut) }()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	return p
}

// wait waits for the command to exit by itself and returns its status.
func (p *roleProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-p.done:
		p.done <- code
		return code
	case <-time.After(2 * time.Minute):
		t.Fatalf("artifactstore %v still running after 2 min\nstdout:\n%s\nstderr:\n%s", p.args, p.out.String(), p.errOut.String())
		return -1
	}
}

// stop interrupts the command as SIGTERM would and returns its status.
func (p *roleProc) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	return p.wait(t)
}

// cliOK runs a command to its end and fails the test unless it exits 0.
func cliOK(t *testing.T, args ...string) string {
	t.Helper()
	p := startCLI(t, args...)
	if code := p.wait(t); code != 0 {
		t.Fatalf("artifactstore %v exited %d\nstdout:\n%s\nstderr:\n%s", args, code, p.out.String(), p.errOut.String())
	}
	return p.out.String()
}

// eventuallyTrue polls cond until it holds; the bound only stops a hung
// test.
func eventuallyTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after 2 min", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// opsAddr finds the address a role logged for its /metrics.
func opsAddr(t *testing.T, p *roleProc) string {
	t.Helper()
	re := regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`)
	var addr string
	eventuallyTrue(t, fmt.Sprintf("%v logs its ops address", p.args), func() bool {
		if m := re.FindStringSubmatch(p.errOut.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})
	return addr
}

// failingReader returns n bytes, then an error, as a file that cannot be
// read to its end.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errors.New("disk read error")
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

// TestLeastPrivilegeRoles runs the whole pipeline against a NATS server
// whose users hold exactly the grants of bus.Topology.Roles: the admin
// applies the topology, every worker role and client runs as its own user,
// and every command ends as it should. The server's trace shows that no
// request was refused and that every grant of the table was used, so that
// the table is both sufficient and least privilege.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewDB(t)
	url, pw, u := startSecuredNATS(t)
	dataDir := t.TempDir()
	ctx := t.Context()
	as := func(role string, args ...string) []string {
		return append([]string{"--nats-url", url, "--nats-user", role, "--nats-password", pw[role],
			"--database-url", dbURL, "--data-dir", dataDir, "--log-format", "json"}, args...)
	}

	// A role refuses to start before the topology exists, and says how to
	// create it.
	early := startCLI(t, as(bus.RoleIngester, "ingest", "--no-ops")...)
	if code := early.wait(t); code == 0 || !strings.Contains(early.errOut.String(), "artifactstore topology apply") ||
		!strings.Contains(early.errOut.String(), "consumer ingest on stream ARTIFACTS_COMMANDS") {
		t.Fatalf("ingest before the topology exists: exit %d, stderr:\n%s", code, early.errOut.String())
	}
	// Nobody but the admin may create it; the server's refusal is seen.
	if p := startCLI(t, as(bus.RoleIngester, "ingest", "--no-ops", "--apply-topology")...); p.wait(t) == 0 {
		t.Fatal("ingest --apply-topology with the ingester's grants succeeded")
	}
	if v := u.takeViolations(); len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), "user:ingester") {
		t.Fatalf("the server's refusals of the ingester's topology change were not seen: %q", v)
	}

	out := cliOK(t, as(bus.RoleAdmin, "topology", "apply")...)
	if n := strings.Count(out, ": created"); n != len(bus.DefaultTopology().Items()) {
		t.Fatalf("topology apply created %d items:\n%s", n, out)
	}
	if out := cliOK(t, as(bus.RoleAdmin, "topology", "apply")...); strings.Count(out, ": unchanged") != len(bus.DefaultTopology().Items()) {
		t.Fatalf("second topology apply:\n%s", out)
	}
	cliOK(t, as(bus.RoleAdmin, "topology", "check")...)

	// The event subscriber: a live core subscription and a JetStream replay.
	snc, err := nats.Connect(url, nats.UserInfo(bus.RoleSubscriber, pw[bus.RoleSubscriber]))
	if err != nil {
		t.Fatal(err)
	}
	defer snc.Close()
	live := make(chan *nats.Msg, 1024)
	if _, err := snc.ChanSubscribe("artifacts.events.>", live); err != nil {
		t.Fatal(err)
	}
	sjs, err := jetstream.New(snc)
	if err != nil {
		t.Fatal(err)
	}
	replay, err := sjs.OrderedConsumer(ctx, "ARTIFACTS_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"artifacts.events.>"}})
	if err != nil {
		t.Fatalf("subscriber's ordered consumer: %v", err)
	}
	replayed := make(chan string, 1024)
	cc, err := replay.Consume(func(m jetstream.Msg) { replayed <- m.Subject() })
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	ingester := startCLI(t, as(bus.RoleIngester, "ingest", "--http-addr", "127.0.0.1:0")...)
	reaperP := startCLI(t, as(bus.RoleReaper, "reap", "--no-ops")...)
	relayP := startCLI(t, as(bus.RoleRelay, "relay", "--no-ops", "--poll-interval", "50ms")...)
	projectP := startCLI(t, "--database-url", dbURL, "--log-format", "json", "project", "--no-ops")
	// The replicator copies every raw-evidence object to a second backend.
	// Every role that reads or verifies copies is given both backends.
	storageFlags := []string{"--storage", "file://" + filepath.Join(dataDir, "objects"), "--storage", "file://" + t.TempDir() + "?id=mirror"}
	replicatorP := startCLI(t, as(bus.RoleReplicator, append(append([]string{"replicate", "--no-ops"}, storageFlags...), "--replicas", "raw-evidence=1")...)...)

	// put: one file inline, one staged through the object store.
	src := filepath.Join(t.TempDir(), "reports")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "small.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "large.bin"), bytes.Repeat([]byte("0123456789abcdef"), 3<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	out = cliOK(t, as(bus.RoleProducer, "put", "--package", "perm/run-1", "--class", "raw-evidence", src)...)
	if !strings.Contains(out, "reports/small.txt  blake3:") || !strings.Contains(out, "reports/large.bin  blake3:") {
		t.Fatalf("put output:\n%s", out)
	}
	var staged int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'object.stored'`).Scan(&staged); err != nil || staged != 2 {
		t.Fatalf("object.stored events: %d, %v", staged, err)
	}

	// The checkpointer signs the head once (on an empty checkpoints
	// stream), then runs its leader loop, signing at every new event.
	keyPrefix := filepath.Join(t.TempDir(), "checkpoint")
	cliOK(t, "checkpoint", "keygen", keyPrefix)
	if out := cliOK(t, as(bus.RoleCheckpointer, "checkpoint", "sign", "--once", "--no-ops", "--checkpoint-key", keyPrefix+".key")...); !strings.Contains(out, "\nsequence ") {
		t.Fatalf("checkpoint sign --once printed:\n%s", out)
	}
	signerP := startCLI(t, as(bus.RoleCheckpointer, "checkpoint", "sign", "--http-addr", "127.0.0.1:0", "--checkpoint-key", keyPrefix+".key", "--checkpoint-every", "1")...)

	// A staged upload whose file fails half-way is cleaned up by the
	// producer; its command, sent as the upload started, is answered
	// staged_upload_abandoned (the producer's abort marker) and
	// dead-lettered like the poison commands below.
	pnc, err := nats.Connect(url, nats.UserInfo(bus.RoleProducer, pw[bus.RoleProducer]))
	if err != nil {
		t.Fatal(err)
	}
	defer pnc.Close()
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	client, err := producer.New(ctx, producer.Config{NATS: pnc, JetStream: pjs, Producer: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Put(ctx, producer.Put{Package: "perm/run-1", Path: "broken.bin", Body: &failingReader{n: 3 << 20}, Size: 4 << 20}); err == nil ||
		!strings.Contains(err.Error(), "disk read error") {
		t.Fatalf("put of a failing file: %v", err)
	}
	// A blob staged whole before its command (the object store's own
	// format, as `nats obj put` leaves it) is read after the fact: the
	// ingester reads the object's info and marks it deleted, which the
	// status report then reads.
	sw, err := staging.NewWriter(pnc, "ARTIFACTS_STAGING", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Stage(ctx, "whole-1", "perm/run-1:whole.bin", nil, bytes.NewReader(bytes.Repeat([]byte("w"), 200<<10)), nil); err != nil {
		t.Fatalf("stage a whole object as the producer: %v", err)
	}
	whole := `{"v":1,"command_id":"whole-1","package":"perm/run-1","path":"whole.bin","staged":"whole-1"}`
	if _, err := bus.PublishCommand(ctx, pjs, "artifacts.cmd.ingest.file", "whole-1", []byte(whole), "application/json", ""); err != nil {
		t.Fatal(err)
	}
	eventuallyTrue(t, "the object staged whole is stored", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'object.stored' AND command_id = 'whole-1'`).Scan(&n)
		return err == nil && n == 1
	})
	// Poison commands are dead-lettered by every worker.
	if _, err := bus.PublishCommand(ctx, pjs, "artifacts.cmd.ingest.file", "poison-1", []byte("{not json"), "application/json", ""); err != nil {
		t.Fatal(err)
	}
	onc, err := nats.Connect(url, nats.UserInfo(bus.RoleOperator, pw[bus.RoleOperator]))
	if err != nil {
		t.Fatal(err)
	}
	defer onc.Close()
	ojs, err := jetstream.New(onc)
	if err != nil {
		t.Fatal(err)
	}
	for i, subject := range []string{"artifacts.cmd.retention", "artifacts.cmd.verify"} {
		if _, err := bus.PublishCommand(ctx, ojs, subject, fmt.Sprintf("poison-%d", i+2), []byte("{not json"), "application/json", ""); err != nil {
			t.Fatal(err)
		}
	}

	// The README's `nats` CLI example, sent as the producer: the reply
	// arrives on the subject of its Artifactstore-Reply-To header.
	ex := readmeNATSExample(t)
	replies, err := pnc.SubscribeSync(ex.sub)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(ex.subject)
	msg.Header, msg.Data = ex.headers, ex.body
	if _, err := pjs.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish the README's command: %v", err)
	}
	reply, err := replies.NextMsg(2 * time.Minute)
	if err != nil {
		t.Fatalf("no reply to the README's command on %s: %v", ex.sub, err)
	}
	if !strings.Contains(string(reply.Data), `"status":"stored"`) || !strings.Contains(string(reply.Data), `"command_id":"demo-1"`) {
		t.Fatalf("reply to the README's command: %s", reply.Data)
	}

	eventuallyTrue(t, "the replicator copies the three objects", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'object.replicated'`).Scan(&n)
		return err == nil && n >= 3
	})
	cliOK(t, as(bus.RoleProducer, "seal", "--package", "perm/run-1")...)
	eventuallyTrue(t, "the projector sees the sealed package", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM artifact_packages WHERE name = 'perm/run-1' AND state = 'sealed'`).Scan(&n)
		return err == nil && n == 1
	})

	// The verifier starts now, so that its scrub scheduler's first pass
	// finds the three objects never verified and queues them.
	verifierP := startCLI(t, as(bus.RoleVerifier, append([]string{"verify", "--http-addr", "127.0.0.1:0"}, storageFlags...)...)...)
	eventuallyTrue(t, "the scrub scheduler's verifications", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'object.verified'`).Scan(&n)
		return err == nil && n >= 6 // three objects, both copies
	})

	// The operator's verbs.
	if out := cliOK(t, as(bus.RoleOperator, "hold", "--package", "perm/run-1", "--reason", "incident 7")...); !strings.Contains(out, "on legal hold") {
		t.Fatalf("hold: %s", out)
	}
	cliOK(t, as(bus.RoleOperator, "release", "--package", "perm/run-1")...)
	if out := cliOK(t, as(bus.RoleOperator, "retain", "--package", "perm/run-1", "--class", "release-evidence")...); !strings.Contains(out, "class release-evidence") {
		t.Fatalf("retain: %s", out)
	}
	if out := cliOK(t, as(bus.RoleOperator, "verify", "--package", "perm/run-1")...); !strings.Contains(out, "6 verified, 0 corrupt, 0 missing, 0 errors") {
		t.Fatalf("verify --package: %s", out)
	}

	// status reads every consumer and the dead letters.
	eventuallyTrue(t, "the poison commands and the abandoned upload are dead-lettered", func() bool {
		p := startCLI(t, as(bus.RoleStatus, "status", "--json")...)
		p.wait(t)
		var r struct {
			DeadLetters uint64 `json:"dead_letters"`
			NATSError   string `json:"nats_error"`
			Consumers   []struct {
				Name   string `json:"name"`
				Absent bool   `json:"absent"`
				Error  string `json:"error"`
			} `json:"consumers"`
		}
		if err := json.Unmarshal([]byte(p.out.String()), &r); err != nil {
			t.Fatalf("status --json: %v\n%s\n%s", err, p.out.String(), p.errOut.String())
		}
		// The three commands consumers and the replicator's.
		if r.NATSError != "" || len(r.Consumers) != 4 {
			t.Fatalf("status: %s", p.out.String())
		}
		for _, c := range r.Consumers {
			if c.Error != "" || c.Absent {
				t.Fatalf("status of consumer %s: %s", c.Name, c.Error)
			}
		}
		return r.DeadLetters == 4
	})

	// The relay publishes every committed event; the subscriber sees them
	// live and in the stream.
	var last int64
	if err := pool.QueryRow(ctx, `SELECT max(sequence) FROM events`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for got := int64(0); got < last; got++ {
		select {
		case s := <-replayed:
			seen[s]++
		case <-time.After(2 * time.Minute):
			t.Fatalf("the subscriber replayed %d of %d events: %v", got, last, seen)
		}
	}
	for _, want := range []string{"artifacts.events.package.sealed", "artifacts.events.legal_hold.set", "artifacts.events.object.verified"} {
		if seen[want] == 0 {
			t.Errorf("the subscriber never saw %s: %v", want, seen)
		}
	}
	if len(live) == 0 {
		t.Error("the live subscription received no event")
	}

	// Each worker's /metrics reads its own consumer's backlog with its own grants.
	for _, w := range []struct {
		p        *roleProc
		consumer string
	}{{ingester, "ingest"}, {verifierP, "verify"}} {
		resp, err := http.Get("http://" + opsAddr(t, w.p) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `artifactstore_consumer_pending_commands{consumer="`+w.consumer+`"}`) ||
			!strings.Contains(string(body), "artifactstore_dead_letters ") {
			t.Errorf("/metrics of the %s role lacks its consumer's backlog or the dead letters:\n%s", w.consumer, body)
		}
	}

	stop := func(procs ...*roleProc) {
		t.Helper()
		for _, p := range procs {
			if code := p.stop(t); code != 0 {
				t.Errorf("artifactstore %v exited %d after stop:\n%s", p.args, code, p.errOut.String())
			}
			if log := p.errOut.String(); strings.Contains(strings.ToLower(log), "permissions violation") {
				t.Errorf("artifactstore %v met a permissions violation:\n%s", p.args, log)
			}
		}
	}
	// The roles that append events stop; the relay and the checkpointer
	// catch up with the head they leave.
	stop(ingester, verifierP, reaperP, projectP, replicatorP)
	var head int64
	if err := pool.QueryRow(ctx, `SELECT max(sequence) FROM events`).Scan(&head); err != nil {
		t.Fatal(err)
	}
	for got := last; got < head; got++ {
		select {
		case <-replayed:
		case <-time.After(2 * time.Minute):
			t.Fatalf("the subscriber replayed %d of %d events", got, head)
		}
	}
	eventuallyTrue(t, "the checkpointer's leader loop signs the head", func() bool {
		var signed int64
		err := pool.QueryRow(ctx, `SELECT coalesce(max(sequence), 0) FROM event_checkpoints`).Scan(&signed)
		return err == nil && signed == head
	})
	resp, err := http.Get("http://" + opsAddr(t, signerP) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("artifactstore_checkpoint_last_sequence %d\n", head); !strings.Contains(string(body), want) {
		t.Errorf("/metrics of the checkpointer lacks %q:\n%s", want, body)
	}
	stop(relayP, signerP)

	// The auditor checks the log, and the events stream, against the
	// checkpoints outside the database.
	auditor := func(want string, args ...string) {
		t.Helper()
		p := startCLI(t, as(bus.RoleAuditor, args...)...)
		if code := p.wait(t); code != 0 || !strings.Contains(p.out.String(), want) || strings.Contains(p.errOut.String(), "NATS unreachable") {
			t.Errorf("artifactstore %v: exit %d, want 0 and %q\nstdout:\n%s\nstderr:\n%s", args, code, want, p.out.String(), p.errOut.String())
		}
	}
	auditor("the log agrees with all", "audit", "--checkpoints", "--checkpoint-public-key", keyPrefix+".pub")
	auditor(fmt.Sprintf("the newest covers events 1..%d", head), "checkpoint", "verify", "--checkpoint-public-key", keyPrefix+".pub")
	auditor(fmt.Sprintf("events stream intact: events 1..%d agree", head), "checkpoint", "verify", "--events-stream", "--checkpoint-public-key", keyPrefix+".pub")
	cc.Stop()
	client.Close()
	pnc.Close()
	onc.Close()
	snc.Close()

	for _, v := range u.takeViolations() {
		t.Errorf("the server refused: %s", v)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	// Least privilege: every grant of the table was used by its role.
	for _, r := range bus.DefaultTopology().Roles() {
		for _, g := range r.Publish {
			if slices.Contains(r.Rare, g.Subject) {
				continue // a failure path this run does not provoke
			}
			if !anyMatch(g.Subject, u.pub[r.Name]) {
				t.Errorf("role %s never published on %s (%s); remove the grant or exercise it. It published: %v", r.Name, g.Subject, g.Why, keys(u.pub[r.Name]))
			}
		}
		for _, g := range r.Subscribe {
			if !anyMatch(g.Subject, u.sub[r.Name]) {
				t.Errorf("role %s never subscribed to %s (%s); it subscribed to: %v", r.Name, g.Subject, g.Why, keys(u.sub[r.Name]))
			}
		}
	}
}

// natsExample is the README's `nats` CLI example.
type natsExample struct {
	sub, subject string
	headers      nats.Header
	body         []byte
}

// readmeNATSExample parses the README's `nats sub` and `nats pub` lines and
// checks that they point at the server 'run' starts by default.
func readmeNATSExample(t *testing.T) natsExample {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.ReplaceAll(string(b), "\\\n", " ")
	var rc runCmd
	if err := kong.ApplyDefaults(&rc); err != nil {
		t.Fatal(err)
	}
	server := fmt.Sprintf("nats -s nats://127.0.0.1:%d ", rc.EmbeddedNATSPort)
	sub := regexp.MustCompile(regexp.QuoteMeta(server) + `sub (\S+) &`).FindStringSubmatch(readme)
	pub := regexp.MustCompile(regexp.QuoteMeta(server) + `pub (\S+)((?:\s+-H \S+)+)\s+'([^']+)'`).FindStringSubmatch(readme)
	if sub == nil || pub == nil {
		t.Fatalf("the README lacks the %q sub and pub example", server)
	}
	ex := natsExample{sub: sub[1], subject: pub[1], headers: nats.Header{}, body: []byte(pub[3])}
	for _, h := range strings.Fields(pub[2]) {
		if k, v, ok := strings.Cut(h, ":"); ok {
			ex.headers.Set(k, v)
		}
	}
	if ex.headers.Get(bus.HeaderReplyTo) != ex.sub {
		t.Fatalf("the README's example subscribes to %s but asks for replies on %q", ex.sub, ex.headers.Get(bus.HeaderReplyTo))
	}
	return ex
}

func anyMatch(pattern string, subjects map[string]bool) bool {
	for s := range subjects {
		if bus.SubjectMatches(pattern, s) {
			return true
		}
	}
	return false
}

func keys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// TestApplyTopologyFlag: on a server without permissions, a role started
// with --apply-topology creates the topology (the zero-setup path), and
// --nats-replicas reaches the server.
func TestApplyTopologyFlag(t *testing.T) {
	t.Parallel()
	_, dbURL := pgtest.NewDB(t)
	// A server of its own, as 'run' starts it: the test applies the
	// default (unprefixed) topology.
	emb, err := bus.StartEmbedded(t.Context(), t.TempDir(), "127.0.0.1", -1, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	global := []string{"--nats-url", emb.ClientURL(), "--database-url", dbURL, "--data-dir", t.TempDir(), "--log-format", "json"}

	// One replica per item is all a single server can hold: the flag's
	// value reaches the server, which refuses three.
	p := startCLI(t, append(global, "topology", "apply", "--nats-replicas", "3")...)
	if code := p.wait(t); code != 1 || !strings.Contains(p.errOut.String(), "replicas") {
		t.Fatalf("topology apply --nats-replicas 3 on a single server: exit %d\n%s", code, p.errOut.String())
	}

	relayP := startCLI(t, append(global, "relay", "--no-ops", "--apply-topology")...)
	eventuallyTrue(t, "relay --apply-topology creates the topology", func() bool {
		p := startCLI(t, append(global, "topology", "check")...)
		return p.wait(t) == 0
	})
	if code := relayP.stop(t); code != 0 {
		t.Fatalf("relay exited %d:\n%s", code, relayP.errOut.String())
	}
}
