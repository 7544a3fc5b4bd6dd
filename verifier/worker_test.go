package verifier_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

func request(id string, addr digest.Address) commands.Verify {
	return commands.Verify{V: commands.Version, RequestID: id, Address: addr, BackendID: "local"}
}

// TestDetectsDamage damages stored files in each way and checks the event
// appended and the actual digests recorded.
func TestDetectsDamage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.worker("w")
	ctx := context.Background()
	cases := []struct {
		name   string
		damage func(data []byte, path string)
		want   events.Type
	}{
		{"intact", func([]byte, string) {}, events.TypeObjectVerified},
		{"flipped byte", func(d []byte, p string) {
			c := bytes.Clone(d)
			c[len(c)/2] ^= 0x01
			rewrite(t, p, c)
		}, events.TypeObjectCorrupt},
		{"truncated", func(d []byte, p string) { rewrite(t, p, d[:len(d)-1]) }, events.TypeObjectCorrupt},
		{"appended byte", func(d []byte, p string) { rewrite(t, p, append(bytes.Clone(d), 'x')) }, events.TypeObjectCorrupt},
		{"deleted", func(_ []byte, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, events.TypeObjectMissing},
	}
	for i, c := range cases {
		data := randomBytes(t, 100_000+i)
		addr := e.store(data)
		c.damage(data, e.path(addr))
		id := fmt.Sprintf("damage-%d", i)
		rep, err := w.Verify(ctx, request(id, addr))
		if err != nil {
			t.Fatalf("%s: Verify: %v", c.name, err)
		}
		evs, err := e.log.ByCommand(ctx, id)
		if err != nil {
			t.Fatalf("%s: events of %s: %v", c.name, id, err)
		}
		if len(evs) != 1 || evs[0].Type != c.want {
			t.Fatalf("%s: events %v, want one %s", c.name, types(evs), c.want)
		}
		if evs[0].SubjectID != addr.String() || evs[0].CommandID != id {
			t.Errorf("%s: event subject %q command %q", c.name, evs[0].SubjectID, evs[0].CommandID)
		}
		if c.want == events.TypeObjectCorrupt {
			f, err := os.ReadFile(e.path(addr))
			if err != nil {
				t.Fatal(err)
			}
			actual, _ := digest.Compute(bytes.NewReader(f), nil)
			p, err := e.codec.DecodeEvent(evs[0])
			if err != nil {
				t.Fatal(err)
			}
			cp := p.(events.ObjectCorruptV1)
			if !bytes.Equal(cp.ActualBLAKE3, actual.BLAKE3[:]) || !bytes.Equal(cp.ActualSHA256, actual.SHA256[:]) ||
				cp.ActualSize != actual.Size || cp.ExpectedSize != int64(len(data)) {
				t.Errorf("%s: corrupt payload %+v, want actual %x/%x size %d expected %d", c.name, cp, actual.BLAKE3, actual.SHA256, actual.Size, len(data))
			}
			if rep.Outcome != commands.OutcomeCorrupt || rep.Reason == "" {
				t.Errorf("%s: reply %+v", c.name, rep)
			}
		}
	}
}

// TestBothDigestsChecked records a wrong SHA-256 for intact bytes whose
// BLAKE3 (the address) matches: the object must be reported corrupt.
func TestBothDigestsChecked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	data := randomBytes(t, 5000)
	d, _ := digest.Compute(bytes.NewReader(data), nil)
	addr := d.Address(digest.BLAKE3)
	if _, err := e.dp.Ingest(ctx, bytes.NewReader(data), dataplaneHints()); err != nil {
		t.Fatal(err)
	}
	wrong := d
	wrong.SHA256[0] ^= 0xff
	e.insertLocation(addr, wrong, time.Now())
	rep, err := e.worker("w").Verify(ctx, request("both", addr))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != commands.OutcomeCorrupt {
		t.Fatalf("outcome %q (%s), want corrupt: only the primary digest was checked", rep.Outcome, rep.Reason)
	}
}

// TestRedeliveredRequestAppendsOnce handles one request id twice.
func TestRedeliveredRequestAppendsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	addr := e.store(randomBytes(t, 1000))
	w := e.worker("w")
	first, err := w.Verify(ctx, request("again", addr))
	if err != nil {
		t.Fatal(err)
	}
	// Damage it: a redelivery must still answer with the recorded outcome.
	rewrite(t, e.path(addr), []byte("other"))
	second, err := w.Verify(ctx, request("again", addr))
	if err != nil {
		t.Fatal(err)
	}
	if !second.Duplicate || second.Outcome != commands.OutcomeVerified || second.Sequence != first.Sequence {
		t.Fatalf("second reply %+v, want a duplicate of %+v", second, first)
	}
	head, _ := e.log.Head(ctx)
	if head != 1 {
		t.Fatalf("log holds %d events, want 1", head)
	}
}

func TestUnknownAndDeletedLocations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	w := e.worker("w")
	unknown := digest.New(digest.BLAKE3, [32]byte{1})
	if _, err := w.Verify(ctx, request("u", unknown)); !errors.Is(err, verifier.ErrUnknownLocation) {
		t.Fatalf("unknown object: %v, want ErrUnknownLocation", err)
	}
	addr := e.store([]byte("gone"))
	if _, err := e.pool.Exec(ctx, `UPDATE storage_locations SET state = 'deleted'`); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Verify(ctx, request("d", addr)); !errors.Is(err, verifier.ErrDeleted) {
		t.Fatalf("deleted object: %v, want ErrDeleted", err)
	}
	if head, _ := e.log.Head(ctx); head != 0 {
		t.Fatalf("%d events appended for objects that cannot be verified", head)
	}
}

// TestTwoWorkersShareConsumer runs two workers on one durable consumer and
// checks every request gets exactly one event and one reply, also when a
// request is published twice.
func TestTwoWorkersShareConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t).withNATS()
	ctx, cancel := context.WithTimeout(context.Background(), 2*hang)
	defer cancel()

	workers := []*verifier.Worker{e.worker("a"), e.worker("b")}
	for _, w := range workers {
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, w := range workers {
			if err := w.Stop(context.Background()); err != nil {
				t.Errorf("stop: %v", err)
			}
		}
	}()

	const n = 24
	var targets []verifier.Target
	for i := range n {
		targets = append(targets, verifier.Target{Address: e.store(randomBytes(t, 20_000+i)), BackendID: "local"})
	}
	req, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	results := verifier.RequestAll(ctx, req, e.codec, e.topo.Subject(bus.CmdVerify), targets, 8)
	for i, r := range results {
		if r.Err != nil || r.Reply.Outcome != commands.OutcomeVerified {
			t.Fatalf("target %d: %+v", i, r)
		}
	}
	// Publish one request id twice, under two Nats-Msg-Ids so that
	// JetStream's duplicate detection lets both through, as a republish
	// after its window would.
	body, _ := commands.EncodeVerify(e.codec, request("twice", targets[0].Address), false)
	dups := 0
	for _, msgID := range []string{"twice-a", "twice-b"} {
		msg, err := req.Request(ctx, e.topo.Subject(bus.CmdVerify), msgID, body, "")
		if err != nil {
			t.Fatal(err)
		}
		rep, err := commands.DecodeVerifyReply(e.codec, msg.Data, false)
		if err != nil || rep.Outcome != commands.OutcomeVerified {
			t.Fatalf("reply to twice: %+v %v", rep, err)
		}
		if rep.Duplicate {
			dups++
		}
	}
	if dups != 1 {
		t.Fatalf("%d of the two replies to one request id say duplicate, want 1", dups)
	}
	var events, commands int
	if err := e.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT command_id) FROM events`).Scan(&events, &commands); err != nil {
		t.Fatal(err)
	}
	if events != n+1 || commands != n+1 {
		t.Fatalf("%d events for %d command ids, want %d each", events, commands, n+1)
	}
}

// TestRejectedRequestReplies sends a request for an unknown object and a
// malformed one: each gets an error reply and lands in the dead letters.
func TestRejectedRequestReplies(t *testing.T) {
	t.Parallel()
	e := newEnv(t).withNATS()
	ctx, cancel := context.WithTimeout(context.Background(), 2*hang)
	defer cancel()
	w := e.worker("w")
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop(context.Background()) }()
	req, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	unknown, _ := commands.EncodeVerify(e.codec, request("unknown-1", digest.New(digest.SHA256, [32]byte{9})), false)
	for id, body := range map[string][]byte{"unknown-1": unknown, "garbage-1": []byte("not cbor")} {
		msg, err := req.Request(ctx, e.topo.Subject(bus.CmdVerify), id, body, "")
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		rep, err := commands.DecodeVerifyReply(e.codec, msg.Data, false)
		if err != nil || rep.Outcome != commands.OutcomeError || rep.Reason == "" {
			t.Fatalf("%s: reply %+v %v, want an error with a reason", id, rep, err)
		}
	}
	stream, err := e.js.Stream(ctx, e.topo.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	// The reply goes out before the dead letter: poll until it is there.
	deadline := time.Now().Add(hang)
	poll := time.NewTicker(20 * time.Millisecond) // only costs time
	defer poll.Stop()
	for {
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters after %s, want 2", info.State.Msgs, hang)
		}
		<-poll.C
	}
}

func dataplaneHints() dataplane.IngestHints {
	return dataplane.IngestHints{ExpectSize: storage.NoSizeClaim}
}

func types(evs []events.Event) []events.Type {
	var out []events.Type
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// TestOnDemandPackage selects a package's files, damages one, and checks
// the results of RequestAll through a running worker.
func TestOnDemandPackage(t *testing.T) {
	t.Parallel()
	e := newEnv(t).withNATS()
	ctx, cancel := context.WithTimeout(context.Background(), 2*hang)
	defer cancel()
	good, bad := e.store([]byte("good bytes")), e.store([]byte("bad bytes"))
	for path, a := range map[string]digest.Address{"a/good.txt": good, "b/bad.txt": bad} {
		var b3, s256 []byte
		if err := e.pool.QueryRow(ctx, `SELECT digest_blake3, digest_sha256 FROM storage_locations WHERE content_address = $1`, a.String()).Scan(&b3, &s256); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pool.Exec(ctx, `INSERT INTO artifact_files (package, path, content_address, digest_algorithm, digest_primary, digest_blake3, digest_sha256, size_bytes, added_at)
			VALUES ('ci/run-1', $1, $2, 'blake3', $3, $3, $4, 9, now())`, path, a.String(), b3, s256); err != nil {
			t.Fatal(err)
		}
	}
	rewrite(t, e.path(bad), []byte("BAD bytes"))
	if _, err := verifier.FindTargets(ctx, e.pool, verifier.Selector{Package: "nope"}); !errors.Is(err, verifier.ErrNothingSelected) {
		t.Fatalf("unknown package: %v, want ErrNothingSelected", err)
	}
	targets, err := verifier.FindTargets(ctx, e.pool, verifier.Selector{Package: "ci/run-1"})
	if err != nil || len(targets) != 2 || targets[0].Path != "a/good.txt" {
		t.Fatalf("targets %+v, %v", targets, err)
	}
	w := e.worker("w")
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop(context.Background()) }()
	req, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	res := verifier.RequestAll(ctx, req, e.codec, e.topo.Subject(bus.CmdVerify), targets, 4)
	if res[0].Failed() || res[0].Reply.Outcome != commands.OutcomeVerified {
		t.Errorf("good file: %+v", res[0])
	}
	if !res[1].Failed() || res[1].Reply.Outcome != commands.OutcomeCorrupt || res[1].Reply.ActualSHA256 == "" {
		t.Errorf("bad file: %+v", res[1])
	}
}

// TestMetricsCountOutcomes checks the Prometheus counters: one verified,
// one corrupt, one missing, the bytes re-read, and nothing for a duplicate.
func TestMetricsCountOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	m := verifier.NewMetrics(reg)
	w := verifier.NewWorker(e.dp, e.log, e.pool, e.codec, e.nc, verifier.WorkerConfig{Metrics: m})
	ctx := context.Background()
	good, bad, gone := randomBytes(t, 1000), randomBytes(t, 2000), randomBytes(t, 3000)
	ga, ba, na := e.store(good), e.store(bad), e.store(gone)
	rewrite(t, e.path(ba), append(bytes.Clone(bad), 'x'))
	if err := os.Remove(e.path(na)); err != nil {
		t.Fatal(err)
	}
	for i, a := range []digest.Address{ga, ba, na, ga} {
		id := fmt.Sprintf("metrics-%d", i%3) // the last one repeats request 0
		if _, err := w.Verify(ctx, request(id, a)); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP artifactstore_verify_outcomes_total Verifications by outcome: verified, corrupt (found damaged) or missing (found gone).
# TYPE artifactstore_verify_outcomes_total counter
artifactstore_verify_outcomes_total{outcome="corrupt"} 1
artifactstore_verify_outcomes_total{outcome="missing"} 1
artifactstore_verify_outcomes_total{outcome="verified"} 1
# HELP artifactstore_verify_bytes_total Bytes re-read and re-digested by verifications.
# TYPE artifactstore_verify_bytes_total counter
artifactstore_verify_bytes_total 3001
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
