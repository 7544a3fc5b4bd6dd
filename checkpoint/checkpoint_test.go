package checkpoint_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/mod/sumdb/note"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/checkpoint"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type keys struct {
	private, public string
	signer          note.Signer
	verifier        note.Verifier
}

func newKeys(t *testing.T, name string) keys {
	t.Helper()
	priv, pub, err := checkpoint.GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	return keys{private: priv, public: pub, signer: s, verifier: v}
}

func TestSignAndOpen(t *testing.T) {
	t.Parallel()
	k := newKeys(t, "prod-log")
	var chain [32]byte
	chain[0], chain[31] = 0xab, 0x01
	at := time.Date(2026, 12, 1, 2, 15, 0, 999, time.FixedZone("x", 3600))
	c, err := checkpoint.Sign(k.signer, 1234, chain, at)
	if err != nil {
		t.Fatal(err)
	}
	wantText := "artifactstore event log checkpoint v1\nsequence 1234\nchain ab" + strings.Repeat("00", 30) + "01\ntime 2026-12-01T01:15:00Z\n\n— prod-log "
	if !strings.HasPrefix(string(c.Note), wantText) {
		t.Fatalf("note =\n%s\nwant it to start with\n%s", c.Note, wantText)
	}
	got, err := checkpoint.Open(c.Note, k.verifier)
	if err != nil {
		t.Fatal(err)
	}
	if got.Sequence != 1234 || got.Chain != chain || !got.Time.Equal(at.Truncate(time.Second)) || got.Signer != checkpoint.KeyID(k.verifier) {
		t.Fatalf("Open = %+v", got)
	}

	// The public key derived from the private one is the generated one.
	if _, pub, err := checkpoint.Verifier(k.private); err != nil || pub != k.public {
		t.Fatalf("Verifier(private) = %q, %v; want %q", pub, err, k.public)
	}

	// One changed digit of the text: the signature fails.
	forged := bytes.Replace(c.Note, []byte("sequence 1234"), []byte("sequence 1235"), 1)
	if _, err := checkpoint.Open(forged, k.verifier); !errors.Is(err, checkpoint.ErrBadSignature) {
		t.Fatalf("Open(altered) = %v, want ErrBadSignature", err)
	}
	// Another key's checkpoint is not this key's.
	other := newKeys(t, "prod-log")
	if _, err := checkpoint.Open(c.Note, other.verifier); !errors.Is(err, checkpoint.ErrOtherKey) {
		t.Fatalf("Open with another key = %v, want ErrOtherKey", err)
	}
	// A validly signed text that is not a checkpoint.
	msg, err := note.Sign(&note.Note{Text: "artifactstore event log checkpoint v1\nsequence 01\nchain 00\ntime x\n"}, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Open(msg, k.verifier); !errors.Is(err, checkpoint.ErrMalformed) {
		t.Fatalf("Open(signed non-checkpoint) = %v, want ErrMalformed", err)
	}
	if _, err := checkpoint.Sign(k.signer, 0, chain, at); err == nil {
		t.Fatal("Sign of sequence 0 succeeded")
	}
}

type env struct {
	pool   *pgxpool.Pool
	log    *events.Log
	js     jetstream.JetStream
	stream *checkpoint.Stream
	table  *checkpoint.Table
	keys   keys
	now    time.Time
	rounds int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if err := bus.EnsureTopology(testCtx(t), js, top); err != nil {
		t.Fatal(err)
	}
	return &env{
		pool: pool, log: events.NewLog(pool, events.NewCodec()), js: js,
		stream: checkpoint.NewStream(js, top.CheckpointsStream, top.CheckpointsSubject()),
		table:  checkpoint.NewTable(pool), keys: newKeys(t, "test-log"),
		now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
	}
}

func (e *env) signer(t *testing.T, m *checkpoint.Metrics) *checkpoint.Signer {
	t.Helper()
	return checkpoint.NewSigner(e.log, e.keys.signer, e.keys.verifier,
		[]checkpoint.Store{e.stream, e.table},
		[]checkpoint.LatestSource{e.stream.Latest, e.table.LatestOf(checkpoint.KeyID(e.keys.signer))},
		checkpoint.SignerConfig{Every: 10, Interval: time.Hour, Logger: zerolog.New(zerolog.NewTestWriter(t)),
			Metrics: m, Now: func() time.Time { return e.now }})
}

func (e *env) append(t *testing.T, n int) {
	t.Helper()
	var drafts []events.Draft
	for i := range n {
		name := fmt.Sprintf("p%d-%d", e.rounds, i)
		drafts = append(drafts, events.Draft{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test",
			Payload: events.PackageCreatedV1{Name: name, RetentionClass: "transient"}})
	}
	e.rounds++
	if _, err := e.log.Append(testCtx(t), events.Batch{Events: drafts}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) collect(t *testing.T) checkpoint.Collected {
	t.Helper()
	got, err := checkpoint.Collect(testCtx(t), e.keys.verifier,
		checkpoint.NoteSource{Name: "stream", Notes: e.stream.Notes},
		checkpoint.NoteSource{Name: "table", Notes: e.table.Notes})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func round(t *testing.T, s *checkpoint.Signer) *checkpoint.Checkpoint {
	t.Helper()
	c, err := s.Round(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSignerSignsEveryNEventsOrInterval(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.signer(t, nil)
	if c := round(t, s); c != nil {
		t.Fatalf("Round on an empty log signed %v", c)
	}
	e.append(t, 25)
	if c := round(t, s); c == nil || c.Sequence != 25 {
		t.Fatalf("first Round = %v, want a checkpoint at 25", c)
	}
	e.append(t, 5)
	if c := round(t, s); c != nil {
		t.Fatalf("Round 5 events and no time later = %v, want none", c)
	}
	e.append(t, 5)
	if c := round(t, s); c == nil || c.Sequence != 35 {
		t.Fatalf("Round 10 events later = %v, want a checkpoint at 35", c)
	}
	e.append(t, 1)
	e.now = e.now.Add(time.Hour)
	if c := round(t, s); c == nil || c.Sequence != 36 {
		t.Fatalf("Round an interval later = %v, want a checkpoint at 36", c)
	}
	got := e.collect(t)
	if len(got.Valid) != 3 || got.Valid[0].Sequence != 25 || got.Valid[2].Sequence != 36 || len(got.Forged)+got.OtherKeys+got.Unreadable != 0 {
		t.Fatalf("Collect = %+v, want 3 valid checkpoints 25, 35, 36", got)
	}
	var inTable int
	if err := e.pool.QueryRow(testCtx(t), `SELECT count(*) FROM event_checkpoints`).Scan(&inTable); err != nil || inTable != 3 {
		t.Fatalf("table holds %d checkpoints (%v), want 3", inTable, err)
	}
	// A new signer (a restart, a standby) resumes after the newest one.
	e.append(t, 3)
	s2 := e.signer(t, nil)
	if c := round(t, s2); c != nil {
		t.Fatalf("Round of a restarted signer = %v, want none (3 events since 36)", c)
	}
	if c, err := s2.SignNow(testCtx(t)); err != nil || c == nil || c.Sequence != 39 {
		t.Fatalf("SignNow = %v, %v; want a checkpoint at 39", c, err)
	}
}

// rewriteTail rewrites the actor of events from on, recomputing every chain
// digest and the head, with the triggers off: a careful forger.
func rewriteTail(t *testing.T, e *env, from int64) {
	t.Helper()
	ctx := testCtx(t)
	evs, err := e.log.Read(ctx, from-2, events.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`SET session_replication_role = replica`)
	defer exec(`RESET session_replication_role`)
	prev := evs[0].ChainDigest
	for _, ev := range evs[1:] {
		ev.Actor = "mallory"
		ev.ChainDigest = events.ChainDigestV2(prev, ev)
		prev = ev.ChainDigest
		exec(`UPDATE events SET actor = $2, chain_digest = $3 WHERE sequence = $1`, ev.Sequence, ev.Actor, ev.ChainDigest[:])
	}
	exec(`UPDATE event_log_head SET last_chain_digest = $1`, prev[:])
	// The forger also removes the checkpoints the database holds.
	exec(`DELETE FROM event_checkpoints`)
}

func anchors(cs []checkpoint.Checkpoint) []events.Anchor {
	var as []events.Anchor
	for _, c := range cs {
		as = append(as, c.Anchor())
	}
	return as
}

// TestConsistentRewriteCaughtByStreamCheckpoints: the forger rewrites the
// newest events, recomputes the chain and the head, and deletes the
// checkpoints table; the audit alone passes, the audit against the
// checkpoints of the stream fails, and the signer refuses to go on.
func TestConsistentRewriteCaughtByStreamCheckpoints(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	s := e.signer(t, checkpoint.NewMetrics(reg))
	e.append(t, 20)
	round(t, s)
	e.append(t, 20)
	round(t, s)

	rewriteTail(t, e, 30)
	e.append(t, 15)
	if rep, err := e.log.Audit(ctx, events.AuditOptions{}); err != nil || !rep.OK() {
		t.Fatalf("Audit without checkpoints = %+v, %v; want it to pass (nothing in the database tells)", rep, err)
	}
	got := e.collect(t)
	if len(got.Valid) != 2 {
		t.Fatalf("Collect after the table was emptied = %+v, want the 2 checkpoints of the stream", got)
	}
	rep, err := e.log.Audit(ctx, events.AuditOptions{Anchors: anchors(got.Valid)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.FirstBad != 40 || !strings.Contains(rep.Reason, "after sequence 20") {
		t.Fatalf("Audit with checkpoints = %+v, want first bad 40, rewritten after 20", rep)
	}

	// The signer checks before it signs: it refuses and raises the alarm.
	if _, err := s.SignNow(ctx); !errors.Is(err, checkpoint.ErrLogNotExtended) || !strings.Contains(err.Error(), "sequence 40") {
		t.Fatalf("SignNow over a rewritten log = %v, want ErrLogNotExtended at 40", err)
	}
	if v := gauge(t, reg, "artifactstore_checkpoint_log_broken"); v != 1 {
		t.Fatalf("artifactstore_checkpoint_log_broken = %v, want 1", v)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestForgedCheckpointInTheTable(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	e := newEnv(t)
	s := e.signer(t, nil)
	e.append(t, 12)
	c := round(t, s)
	forged := *c
	forged.Sequence = 11
	forged.Note = bytes.Replace(c.Note, []byte("sequence 12"), []byte("sequence 11"), 1)
	if err := e.table.Put(ctx, forged); err != nil {
		t.Fatal(err)
	}
	// Another key's checkpoints and junk on the subject are ignored.
	other := newKeys(t, "other-log")
	oc, err := checkpoint.Sign(other.signer, 5, [32]byte{}, e.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stream.Put(ctx, oc); err != nil {
		t.Fatal(err)
	}
	got := e.collect(t)
	if len(got.Forged) != 1 || !strings.Contains(got.Forged[0], "table") || got.OtherKeys != 1 || len(got.Valid) != 1 {
		t.Fatalf("Collect = %+v, want 1 forged (table), 1 of another key, 1 valid", got)
	}
	// A forged note published last on the subject does not stop a
	// (re)starting signer.
	junk := *c
	junk.Sequence = 13
	junk.Note = bytes.Replace(c.Note, []byte("sequence 12"), []byte("sequence 13"), 1)
	if err := e.stream.Put(ctx, junk); err != nil {
		t.Fatal(err)
	}
	e.append(t, 12)
	if c, err := e.signer(t, nil).SignNow(ctx); err != nil || c == nil || c.Sequence != 24 {
		t.Fatalf("SignNow after a forged note on the stream = %v, %v; want a checkpoint at 24", c, err)
	}
}

func TestSignerRefusesALogRolledBack(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	e := newEnv(t)
	s := e.signer(t, nil)
	e.append(t, 20)
	round(t, s)
	var chain10 []byte
	if err := e.pool.QueryRow(ctx, `SELECT chain_digest FROM events WHERE sequence = 10`).Scan(&chain10); err != nil {
		t.Fatal(err)
	}
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, stmt := range []string{`SET session_replication_role = replica`, `DELETE FROM events WHERE sequence > 10`} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE event_log_head SET last_sequence = 10, last_chain_digest = $1`, chain10); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `RESET session_replication_role`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Round(ctx); !errors.Is(err, checkpoint.ErrLogNotExtended) || !strings.Contains(err.Error(), "behind the last checkpoint") {
		t.Fatalf("Round after a rollback = %v, want ErrLogNotExtended", err)
	}
}

// TestWalkChecksACopyOfTheLog checks events as a subscriber of the events
// stream has them (rebuilt from their columns) against the checkpoints.
func TestWalkChecksACopyOfTheLog(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	e := newEnv(t)
	s := e.signer(t, nil)
	e.append(t, 12)
	round(t, s)
	e.append(t, 12)
	round(t, s)
	e.append(t, 3)
	evs, err := e.log.Read(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	valid := e.collect(t).Valid
	walk := func(from int, alter func(*events.Event)) (checkpoint.WalkReport, error) {
		w := checkpoint.NewWalk(valid)
		for i, ev := range evs[from:] {
			if alter != nil && i == 5 {
				alter(&ev)
			}
			if err := w.Add(ev); err != nil {
				return w.Report, err
			}
		}
		return w.Report, nil
	}
	if r, err := walk(0, nil); err != nil || r.First != 1 || r.Last != 27 || r.Matched != 2 || r.Newest != 24 {
		t.Fatalf("walk of the whole log = %+v, %v; want 1..27, 2 checkpoints, newest 24", r, err)
	}
	// A copy that starts late (the stream's max age) is checked after its first event.
	if r, err := walk(4, nil); err != nil || r.First != 6 || r.Matched != 2 {
		t.Fatalf("walk from event 5 = %+v, %v; want checked from 6", r, err)
	}
	// One column of one event changed in the copy: caught at that event.
	if _, err := walk(0, func(ev *events.Event) { ev.Actor = "mallory" }); !errors.Is(err, events.ErrChainBroken) || !strings.Contains(err.Error(), "sequence 6") {
		t.Fatalf("walk of an altered copy = %v, want ErrChainBroken at 6", err)
	}
	// A copy rewritten consistently: caught at the checkpoint.
	rewritten := append([]events.Event(nil), evs...)
	prev := rewritten[14].ChainDigest
	for i := 15; i < len(rewritten); i++ {
		rewritten[i].Actor = "mallory"
		rewritten[i].ChainDigest = events.ChainDigestV2(prev, rewritten[i])
		prev = rewritten[i].ChainDigest
	}
	w := checkpoint.NewWalk(valid)
	for _, ev := range rewritten {
		if err = w.Add(ev); err != nil {
			break
		}
	}
	if !errors.Is(err, events.ErrChainBroken) || !strings.Contains(err.Error(), "sequence 24") || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("walk of a consistently rewritten copy = %v, want a mismatch with the checkpoint at 24", err)
	}
}

// TestOutsiderVerifiesWithTheStandardLibrary follows only the package
// documentation, with crypto/ed25519 and crypto/sha256, to check a
// checkpoint: the format is enough to re-implement the check.
func TestOutsiderVerifiesWithTheStandardLibrary(t *testing.T) {
	t.Parallel()
	k := newKeys(t, "prod-log")
	var chain [32]byte
	chain[5] = 9
	c, err := checkpoint.Sign(k.signer, 77, chain, time.Date(2026, 12, 1, 2, 15, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	// The public key file: <name>+<8 hex key hash>+<base64(0x01 ‖ key)>.
	// The name holds no '+', the base64 key may: split at the first two.
	parts := strings.SplitN(k.public, "+", 3)
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 1 {
		t.Fatalf("public key %q", k.public)
	}
	pub := ed25519.PublicKey(raw[1:])
	sum := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	if hex.EncodeToString(sum[:4]) != parts[1] {
		t.Fatalf("key hash %x, file says %s", sum[:4], parts[1])
	}
	// The note: four text lines, an empty line, "— <name> <base64(hash ‖ sig)>".
	text, sigLine, ok := strings.Cut(string(c.Note), "\n\n")
	if !ok || !strings.HasPrefix(sigLine, "— prod-log ") {
		t.Fatalf("note:\n%s", c.Note)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(sigLine, "— prod-log "), "\n"))
	if err != nil || len(sig) != 4+ed25519.SignatureSize || !bytes.Equal(sig[:4], sum[:4]) {
		t.Fatalf("signature line %q", sigLine)
	}
	if !ed25519.Verify(pub, []byte(text+"\n"), sig[4:]) {
		t.Fatal("the signature does not verify over the four lines")
	}
	want := "artifactstore event log checkpoint v1\nsequence 77\nchain " + hex.EncodeToString(chain[:]) + "\ntime 2026-12-01T02:15:00Z"
	if text != want {
		t.Fatalf("text = %q, want %q", text, want)
	}
}
