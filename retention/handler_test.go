package retention_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/retention"
)

type env struct {
	t     *testing.T
	pool  *pgxpool.Pool
	codec *events.Codec
	log   *events.Log
	h     *retention.Handler
	now   time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	codec := events.NewCodec()
	e := &env{t: t, pool: pool, codec: codec, log: events.NewLog(pool, codec), now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	h, err := retention.New(retention.Config{Pool: pool, Log: e.log, Codec: codec,
		Logger: zerolog.New(zerolog.NewTestWriter(t)), Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	return e
}

// createPackage records a package as the ingester would: its creation
// events and its command-side row, created at e.now.
func (e *env) createPackage(name, class string) *time.Time {
	e.t.Helper()
	ctx := context.Background()
	var until *time.Time
	var dur *time.Duration
	switch class {
	case "transient":
		d := 7 * 24 * time.Hour
		dur = &d
	case "release-evidence":
		d := 2557 * 24 * time.Hour
		dur = &d
	case "raw-evidence":
		d := 90 * 24 * time.Hour
		dur = &d
	}
	if dur != nil {
		u := e.now.Add(*dur)
		until = &u
	}
	res, err := e.log.Append(ctx, events.Batch{CommandID: "create-" + name, Events: []events.Draft{
		{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test", Payload: events.PackageCreatedV1{Name: name, RetentionClass: class}},
		{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test", Payload: events.RetentionAssignedV1{Package: name, Class: class, RetainUntil: until}},
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	seq := res[0].Events[0].Sequence
	// The log stamps events with the wall clock; the package's creation
	// time is what the handler computes class durations from.
	if _, err := e.pool.Exec(ctx, `INSERT INTO ingest_packages (name, retention_class, retain_until, created_seq) VALUES ($1, $2, $3, $4)`,
		name, class, until, seq); err != nil {
		e.t.Fatal(err)
	}
	return until
}

func (e *env) createdAt(name string) time.Time {
	e.t.Helper()
	var at time.Time
	if err := e.pool.QueryRow(context.Background(), `SELECT e.occurred_at FROM ingest_packages p JOIN events e ON e.sequence = p.created_seq WHERE p.name = $1`, name).Scan(&at); err != nil {
		e.t.Fatal(err)
	}
	return at
}

func (e *env) apply(c commands.Retention) commands.Reply {
	e.t.Helper()
	c.V = commands.Version
	if c.CommandID == "" {
		c.CommandID = uuid.NewString()
	}
	if c.Actor == "" {
		c.Actor = "alice"
	}
	r, err := e.h.Apply(context.Background(), c)
	if err != nil {
		e.t.Fatalf("apply %+v: %v", c, err)
	}
	return r
}

type pkgState struct {
	class       string
	retainUntil *time.Time
	hold        bool
	reason      *string
	expiredAt   *time.Time
}

func (e *env) state(name string) pkgState {
	e.t.Helper()
	var s pkgState
	if err := e.pool.QueryRow(context.Background(), `SELECT retention_class, retain_until, legal_hold, legal_hold_reason, expired_at FROM ingest_packages WHERE name = $1`, name).
		Scan(&s.class, &s.retainUntil, &s.hold, &s.reason, &s.expiredAt); err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) eventsOf(id string) []events.Event {
	e.t.Helper()
	evs, err := e.log.ByCommand(context.Background(), id)
	if errors.Is(err, events.ErrCommandNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func (e *env) head() int64 {
	e.t.Helper()
	h, err := e.log.Head(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func TestHoldAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("ci/run-1", "transient")

	r := e.apply(commands.Retention{CommandID: "hold-1", Action: commands.ActionHold, Package: "ci/run-1", Reason: "case 17", Actor: "alice"})
	if r.Status != commands.StatusApplied || !r.LegalHold || r.Sequence == 0 {
		t.Fatalf("hold reply = %+v; want applied with hold and a sequence", r)
	}
	st := e.state("ci/run-1")
	if !st.hold || st.reason == nil || *st.reason != "case 17" {
		t.Fatalf("state after hold = %+v", st)
	}
	evs := e.eventsOf("hold-1")
	if len(evs) != 1 || evs[0].Type != events.TypeLegalHoldSet || evs[0].Actor != "alice" || evs[0].SubjectID != "ci/run-1" {
		t.Fatalf("hold events = %+v; want one legal_hold.set by alice", evs)
	}

	// The same hold again changes nothing and appends nothing.
	before := e.head()
	r = e.apply(commands.Retention{Action: commands.ActionHold, Package: "ci/run-1", Reason: "case 17"})
	if r.Status != commands.StatusUnchanged || e.head() != before {
		t.Fatalf("repeated hold = %+v, head %d -> %d; want unchanged, nothing appended", r, before, e.head())
	}
	// Another reason is a change.
	r = e.apply(commands.Retention{Action: commands.ActionHold, Package: "ci/run-1", Reason: "case 18"})
	if r.Status != commands.StatusApplied || *e.state("ci/run-1").reason != "case 18" {
		t.Fatalf("hold with a new reason = %+v", r)
	}

	r = e.apply(commands.Retention{CommandID: "release-1", Action: commands.ActionRelease, Package: "ci/run-1", Actor: "bob"})
	if r.Status != commands.StatusApplied || r.LegalHold {
		t.Fatalf("release = %+v", r)
	}
	if st := e.state("ci/run-1"); st.hold || st.reason != nil {
		t.Fatalf("state after release = %+v", st)
	}
	if evs := e.eventsOf("release-1"); len(evs) != 1 || evs[0].Type != events.TypeLegalHoldReleased || evs[0].Actor != "bob" {
		t.Fatalf("release events = %+v", evs)
	}
	r = e.apply(commands.Retention{Action: commands.ActionRelease, Package: "ci/run-1"})
	if r.Status != commands.StatusUnchanged {
		t.Fatalf("release without hold = %+v; want unchanged", r)
	}
}

func TestRetainLengthenAndRefuseShorten(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("rel/1", "transient")

	// transient may be changed in any direction: to release-evidence.
	r := e.apply(commands.Retention{CommandID: "up", Action: commands.ActionRetain, Package: "rel/1", Class: "release-evidence", Reason: "released as v1"})
	want := e.createdAt("rel/1").AddDate(0, 0, 2557)
	if r.Status != commands.StatusApplied || r.Class != "release-evidence" || r.RetainUntil == nil || !r.RetainUntil.Equal(want) {
		t.Fatalf("retain to release-evidence = %+v; want applied until %s", r, want)
	}
	if st := e.state("rel/1"); st.class != "release-evidence" || !st.retainUntil.Equal(want) {
		t.Fatalf("state = %+v", st)
	}
	evs := e.eventsOf("up")
	if len(evs) != 1 || evs[0].Type != events.TypeRetentionChanged {
		t.Fatalf("events = %+v", evs)
	}
	p, err := e.codec.DecodeEvent(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	ch := p.(events.RetentionChangedV1)
	if ch.FromClass != "transient" || ch.Class != "release-evidence" || ch.PrevRetainTill == nil || !ch.RetainUntil.Equal(want) || ch.Reason != "released as v1" {
		t.Fatalf("retention.changed = %+v", ch)
	}

	// release-evidence may not be shortened: back to transient is refused,
	// with a clear reply and an event.
	r = e.apply(commands.Retention{CommandID: "down", Action: commands.ActionRetain, Package: "rel/1", Class: "transient"})
	if r.Status != commands.StatusRejected || r.Code != commands.CodeShortenRefused || r.Reason == "" || r.Sequence == 0 {
		t.Fatalf("shortening = %+v; want rejected %s", r, commands.CodeShortenRefused)
	}
	if err := r.Err(); !errors.Is(err, commands.ErrRejected) {
		t.Fatalf("Err() = %v", err)
	}
	t.Logf("refusal: %s", r.Reason)
	if evs := e.eventsOf("down"); len(evs) != 1 || evs[0].Type != events.TypeCommandRejected || evs[0].Actor != "alice" {
		t.Fatalf("refusal events = %+v; want one rejection event by the actor", evs)
	}
	if st := e.state("rel/1"); st.class != "release-evidence" || !st.retainUntil.Equal(want) {
		t.Fatalf("state changed by a refused command: %+v", st)
	}
	// An earlier date is refused; a later one is accepted.
	earlier := want.Add(-time.Hour)
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", RetainUntil: &earlier}); r.Code != commands.CodeShortenRefused {
		t.Fatalf("earlier retain_until = %+v; want refused", r)
	}
	later := want.AddDate(1, 0, 0)
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", RetainUntil: &later}); r.Status != commands.StatusApplied || !r.RetainUntil.Equal(later) {
		t.Fatalf("later retain_until = %+v; want applied", r)
	}
	// Same date again: unchanged.
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", RetainUntil: &later}); r.Status != commands.StatusUnchanged {
		t.Fatalf("same retain_until = %+v; want unchanged", r)
	}
	// To permanent-record: never expires, a lengthening.
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", Class: "permanent-record"}); r.Status != commands.StatusApplied || r.RetainUntil != nil {
		t.Fatalf("to permanent-record = %+v", r)
	}
	// Away from permanent-record: always a shortening.
	for _, c := range []string{"release-evidence", "transient"} {
		if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", Class: c}); r.Code != commands.CodeShortenRefused {
			t.Fatalf("permanent-record to %s = %+v; want refused", c, r)
		}
	}
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "rel/1", RetainUntil: &later}); r.Status != commands.StatusRejected {
		t.Fatalf("date on permanent-record = %+v; want rejected", r)
	}
	if st := e.state("rel/1"); st.class != "permanent-record" || st.retainUntil != nil {
		t.Fatalf("state = %+v; want permanent-record without date", st)
	}
}

func TestRetainMayShortenTransient(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	until := e.createPackage("tmp/1", "raw-evidence")
	r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "tmp/1", Class: "transient"})
	if r.Status != commands.StatusApplied || !r.RetainUntil.Before(*until) {
		t.Fatalf("raw-evidence to transient = %+v; want applied and earlier than %s", r, until)
	}
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "tmp/1", Class: "no-such-class"}); r.Code != commands.CodeUnknownClass {
		t.Fatalf("unknown class = %+v", r)
	}
	if r := e.apply(commands.Retention{Action: commands.ActionHold, Package: "no/such", Reason: "x"}); r.Code != commands.CodeUnknownPackage || r.Sequence == 0 {
		t.Fatalf("unknown package = %+v; want rejected with an event", r)
	}
}

func TestExpiredPackage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("old/1", "transient")
	if _, err := e.pool.Exec(context.Background(), `UPDATE ingest_packages SET expired_at = $2 WHERE name = $1`, "old/1", e.now); err != nil {
		t.Fatal(err)
	}
	if r := e.apply(commands.Retention{Action: commands.ActionRetain, Package: "old/1", Class: "permanent-record"}); r.Code != commands.CodePackageExpired {
		t.Fatalf("retain of expired = %+v; want %s", r, commands.CodePackageExpired)
	}
	r := e.apply(commands.Retention{Action: commands.ActionHold, Package: "old/1", Reason: "late discovery"})
	if r.Status != commands.StatusApplied || r.Note == "" {
		t.Fatalf("hold of expired = %+v; want applied with a note", r)
	}
}

func TestDuplicateCommandID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("p/1", "release-evidence")
	first := e.apply(commands.Retention{CommandID: "same", Action: commands.ActionHold, Package: "p/1", Reason: "r"})
	// A release in between, then the hold command is redelivered: it must
	// not hold the package again.
	e.apply(commands.Retention{Action: commands.ActionRelease, Package: "p/1"})
	head := e.head()
	again := e.apply(commands.Retention{CommandID: "same", Action: commands.ActionHold, Package: "p/1", Reason: "r"})
	if !again.Duplicate || again.Status != first.Status || again.Sequence != first.Sequence || e.head() != head {
		t.Fatalf("redelivery = %+v (first %+v), head %d -> %d; want the first outcome, nothing appended", again, first, head, e.head())
	}
	if e.state("p/1").hold {
		t.Fatal("a redelivered hold was applied a second time")
	}
	rej := e.apply(commands.Retention{CommandID: "refused", Action: commands.ActionRetain, Package: "p/1", Class: "transient"})
	rej2 := e.apply(commands.Retention{CommandID: "refused", Action: commands.ActionRetain, Package: "p/1", Class: "transient"})
	if !rej2.Duplicate || rej2.Code != rej.Code || rej2.Reason != rej.Reason {
		t.Fatalf("redelivered refusal = %+v; want %+v", rej2, rej)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := commands.Retention{V: 1, CommandID: "c1", Action: commands.ActionHold, Package: "p", Actor: "a", Reason: "r"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid command: %v", err)
	}
	zero := time.Time{}
	for name, mod := range map[string]func(*commands.Retention){
		"version":        func(c *commands.Retention) { c.V = 2 },
		"no id":          func(c *commands.Retention) { c.CommandID = "" },
		"bad package":    func(c *commands.Retention) { c.Package = "../x" },
		"no actor":       func(c *commands.Retention) { c.Actor = "" },
		"hold no reason": func(c *commands.Retention) { c.Reason = "" },
		"hold class":     func(c *commands.Retention) { c.Class = "transient" },
		"action":         func(c *commands.Retention) { c.Action = "delete" },
		"retain nothing": func(c *commands.Retention) { c.Action = commands.ActionRetain },
		"zero until":     func(c *commands.Retention) { c.Action, c.RetainUntil = commands.ActionRetain, &zero },
		"release class":  func(c *commands.Retention) { c.Action, c.Class = commands.ActionRelease, "x" },
	} {
		c := ok
		mod(&c)
		err := c.Validate()
		var rej *commands.Error
		if !errors.As(err, &rej) || rej.Reason == "" {
			t.Errorf("%s: Validate() = %v; want a *commands.Error with a reason", name, err)
		}
	}
}

// TestOverNATS runs the handler on its durable consumer: a CLI-style
// request gets its reply, a malformed JSON command is refused with a reply
// and an event, and the projector maps the hold into retention_state.
func TestOverNATS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("n/1", "transient")
	srv := natstest.Start(t)
	nc := srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	// Bounds the whole test: it only stops a hung test.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := bus.EnsureTopology(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	h, err := retention.New(retention.Config{Pool: e.pool, Log: e.log, Codec: e.codec, NATS: nc,
		JetStream: js, Topology: topo,
		Logger: zerolog.New(zerolog.NewTestWriter(t)),
		// Short pulls only make the stop at cleanup quick (a soft stop
		// waits for the pull in flight); an expired pull is issued again.
		Consumer: bus.ConsumerOptions{FetchWait: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), time.Minute)
		defer c()
		if err := h.Stop(sctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	req, err := bus.NewRequester(nc, js)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	subject := topo.Subject(bus.CmdRetention)

	r, err := retention.Request(ctx, req, e.codec, subject, commands.Retention{V: 1, CommandID: uuid.NewString(),
		Action: commands.ActionHold, Package: "n/1", Actor: "carol", Reason: "audit"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != commands.StatusApplied {
		t.Fatalf("reply = %+v", r)
	}

	p := projector.New(e.pool, e.log, e.codec, projector.Config{})
	if _, err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := projector.WaitFor(ctx, e.pool, r.Sequence); err != nil {
		t.Fatal(err)
	}
	var hold bool
	var reason *string
	if err := e.pool.QueryRow(ctx, `SELECT legal_hold, legal_hold_reason FROM retention_state WHERE package = 'n/1'`).Scan(&hold, &reason); err != nil {
		t.Fatal(err)
	}
	if !hold || reason == nil || *reason != "audit" {
		t.Fatalf("retention_state hold = %v %v; want true audit", hold, reason)
	}

	// A JSON command with an unknown field: refused with a reply and an
	// event under its command id.
	body, _ := json.Marshal(map[string]any{"v": 1, "command_id": "bad-1", "action": "hold", "package": "n/1", "actor": "x", "reason": "r", "extra": 1})
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(bus.HeaderContentType, commands.ContentTypeJSON)
	msg.Header.Set(bus.HeaderReplyTo, inbox)
	msg.Header.Set(bus.HeaderMsgID, "bad-1")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(time.Minute)
	if err != nil {
		t.Fatalf("no reply to the malformed command: %v", err)
	}
	rep, err := commands.DecodeReply(e.codec, m.Data, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != commands.StatusRejected || rep.Code != commands.CodeMalformed {
		t.Fatalf("malformed reply = %+v", rep)
	}
	if evs := e.eventsOf("bad-1"); len(evs) != 1 || evs[0].Type != events.TypeCommandRejected {
		t.Fatalf("malformed events = %+v", evs)
	}
}

// TestTextThatTheDatabaseCannotHold sends commands whose text fields hold
// NUL bytes or control characters: each is refused with a rejection code
// and a command.rejected event, never a database error (which would be
// retried until the command is dead-lettered without a reply).
func TestTextThatTheDatabaseCannotHold(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createPackage("t/1", "transient")
	ctx := context.Background()
	for name, tc := range map[string]struct {
		cmd  map[string]any
		code string
	}{
		"nul actor":   {map[string]any{"action": "hold", "package": "t/1", "actor": "mallory\x00", "reason": "r"}, commands.CodeMalformed},
		"nul reason":  {map[string]any{"action": "hold", "package": "t/1", "actor": "a", "reason": "case\x0017"}, commands.CodeMalformed},
		"bell reason": {map[string]any{"action": "hold", "package": "t/1", "actor": "a", "reason": "case\a17"}, commands.CodeMalformed},
		"nul class":   {map[string]any{"action": "retain", "package": "t/1", "actor": "a", "class": "transient\x00"}, commands.CodeMalformed},
		"nul package": {map[string]any{"action": "hold", "package": "t\x00/1", "actor": "a", "reason": "r"}, commands.CodeInvalidPackage},
		"nul action":  {map[string]any{"action": "hold\x00", "package": "t/1", "actor": "a\x00", "reason": "r"}, commands.CodeMalformed},
	} {
		id := "text-" + strings.ReplaceAll(name, " ", "-")
		tc.cmd["v"], tc.cmd["command_id"] = 1, id
		body, err := json.Marshal(tc.cmd)
		if err != nil {
			t.Fatal(err)
		}
		err = e.h.Handle(ctx, bus.Message{Data: body, ContentType: commands.ContentTypeJSON, CommandID: id})
		var rej *bus.RejectError
		if !errors.As(err, &rej) || rej.Code != tc.code {
			t.Errorf("%s: Handle = %v; want a rejection with code %s", name, err, tc.code)
			continue
		}
		evs := e.eventsOf(id)
		if len(evs) != 1 || evs[0].Type != events.TypeCommandRejected {
			t.Errorf("%s: events %+v; want one command.rejected", name, evs)
		}
	}
	if st := e.state("t/1"); st.hold || st.class != "transient" {
		t.Fatalf("a refused command changed the package: %+v", st)
	}
}
