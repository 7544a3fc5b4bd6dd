package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/mod/sumdb/note"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/checkpoint"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/relay"
)

// checkpointCmd groups the commands of signed checkpoints.
type checkpointCmd struct {
	Keygen checkpointKeygenCmd `cmd:"" help:"Create an Ed25519 key pair for signing checkpoints: PREFIX.key (private, mode 0600) and PREFIX.pub (public: keep a copy where the database's administrators cannot change it)."`
	Sign   checkpointSignCmd   `cmd:"" help:"Run the checkpoint signer: every --every events or --interval, check that the log extends the last checkpoint and sign its head onto the checkpoints stream and table (one active, others stand by)."`
	Verify checkpointVerifyCmd `cmd:"" help:"With only the public key: check checkpoint signatures (files, or the stream and table) and recompute the log's chain up to each checkpoint. Exits 3 when the log or a checkpoint was altered."`
}

type checkpointKeygenCmd struct {
	Name   string `help:"Key name, written in every signature line (no spaces or '+'); name the log, e.g. artifactstore-prod." default:"artifactstore"`
	Prefix string `arg:"" optional:"" help:"Write PREFIX.key and PREFIX.pub." default:"checkpoint" type:"path"`
}

func (c checkpointKeygenCmd) Run(s *ioStreams) error {
	pub, err := writeKeyPair(c.Prefix, c.Name)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(s.out, "private key: %s.key (pass it as --checkpoint-key to the signer; keep it off the database host)\npublic key:  %s.pub\n%s\n", c.Prefix, c.Prefix, pub)
	return err
}

// writeKeyPair creates prefix.key and prefix.pub, refusing to overwrite
// either, and returns the public key.
func writeKeyPair(prefix, name string) (string, error) {
	private, public, err := checkpoint.GenerateKey(name)
	if err != nil {
		return "", err
	}
	for _, p := range []string{prefix + ".key", prefix + ".pub"} {
		if _, err := os.Stat(p); err == nil {
			return "", fmt.Errorf("%s exists; remove it or pass another prefix (a new key does not verify old checkpoints)", p)
		}
	}
	if dir := filepath.Dir(prefix); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return "", fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if err := os.WriteFile(prefix+".key", []byte(private+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write the private key: %w", err)
	}
	if err := os.WriteFile(prefix+".pub", []byte(public+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write the public key: %w", err)
	}
	return public, nil
}

// signerFlags configure a checkpoint signer (in 'checkpoint sign' and 'run').
type signerFlags struct {
	CheckpointKey      string        `name:"checkpoint-key" help:"Private key file that signs checkpoints (from 'artifactstore checkpoint keygen'). In 'run', empty means <data-dir>/checkpoint.key, created on first start." type:"path" placeholder:"FILE"`
	CheckpointEvery    int64         `name:"checkpoint-every" help:"Sign a checkpoint once the log grew by this many events since the last one." default:"1000" placeholder:"N"`
	CheckpointInterval time.Duration `name:"checkpoint-interval" help:"Sign a checkpoint at least this often while events are appended." default:"10m"`
}

// newSigner builds the signer over the stream and the table.
func (f signerFlags) newSigner(lg zerolog.Logger, log *events.Log, js jetstream.JetStream, top bus.Topology, table *checkpoint.Table, m *checkpoint.Metrics) (*checkpoint.Signer, error) {
	if f.CheckpointEvery < 1 {
		return nil, fmt.Errorf("--checkpoint-every %d must be at least 1", f.CheckpointEvery)
	}
	if f.CheckpointInterval <= 0 {
		return nil, fmt.Errorf("--checkpoint-interval %s must be positive, e.g. 10m", f.CheckpointInterval)
	}
	key, err := checkpoint.LoadSigner(f.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("--checkpoint-key: %w", err)
	}
	b, err := os.ReadFile(f.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("--checkpoint-key: %w", err)
	}
	ver, _, err := checkpoint.Verifier(string(b))
	if err != nil {
		return nil, fmt.Errorf("--checkpoint-key: %w", err)
	}
	stream := checkpoint.NewStream(js, top.CheckpointsStream, top.CheckpointsSubject())
	return checkpoint.NewSigner(log, key, ver,
		[]checkpoint.Store{stream, table},
		[]checkpoint.LatestSource{stream.Latest, table.LatestOf(checkpoint.KeyID(key))},
		checkpoint.SignerConfig{Every: f.CheckpointEvery, Interval: f.CheckpointInterval, Logger: lg, Metrics: m}), nil
}

type checkpointSignCmd struct {
	signerFlags   `embed:""`
	Once          bool `help:"Sign the head now if it moved since the last checkpoint, print the checkpoint and exit (no leader election)."`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

func (c checkpointSignCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.CheckpointKey == "" {
		return errors.New("--checkpoint-key FILE is required (create a key pair with 'artifactstore checkpoint keygen')")
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	cn, err := g.connect(ctx, bus.RoleCheckpointer, c.topologyFlags, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	srv, opsSvc := g.opsServer(c.opsFlags, lg, cn.pool, cn.nc, cn.js, nil, bus.RoleCheckpointer)
	sg, err := c.newSigner(lg, events.NewLog(cn.pool, events.NewCodec()), cn.js, cn.top, checkpoint.NewTable(cn.pool), checkpoint.NewMetrics(srv.Registry))
	if err != nil {
		return err
	}
	if c.Once {
		cp, err := sg.SignNow(ctx)
		if errors.Is(err, checkpoint.ErrLogNotExtended) {
			return &exitError{code: 3, err: err}
		}
		if err != nil {
			return err
		}
		if cp == nil {
			_, err = fmt.Fprintln(s.out, "the head has not moved since the last checkpoint; nothing signed")
			return err
		}
		_, err = s.out.Write(cp.Note)
		return err
	}
	return runServices(ctx, lg, 30*time.Second, service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "checkpoint signer", Service: leader.Singleton(cn.pool, leader.Config{Key: leader.KeyCheckpointer, Name: "checkpoint-signer", Logger: &lg}, sg.Run)},
	))
}

type checkpointVerifyCmd struct {
	PublicKey string   `name:"checkpoint-public-key" help:"Public key file of the signer (the .pub of 'checkpoint keygen'), or the key itself in a file." type:"path" placeholder:"FILE" required:""`
	Files     []string `arg:"" optional:"" help:"Signed checkpoint files (each the body of a message of the checkpoints stream, or a note of the event_checkpoints table). Without any, every checkpoint of the stream and the table is read." type:"path"`
	NoLog     bool     `name:"no-log" help:"Check the signatures only; do not read the event log."`
	Events    bool     `name:"events-stream" help:"Check the copy of the log in the JetStream events stream (artifacts.events.>) instead of PostgreSQL: needs only NATS and the public key. Without files, checkpoints come from the checkpoints stream only."`
}

func (c checkpointVerifyCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	ver, err := checkpoint.LoadVerifier(c.PublicKey)
	if err != nil {
		return fmt.Errorf("--checkpoint-public-key: %w", err)
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	var sources []checkpoint.NoteSource
	for _, f := range c.Files {
		sources = append(sources, fileSource(f))
	}
	if c.Events {
		return c.verifyEventsStream(ctx, g, s, lg, ver, sources)
	}
	var closeAll func()
	if len(sources) == 0 {
		sources, closeAll, err = g.checkpointSources(ctx, lg, s)
		if err != nil {
			return err
		}
		defer closeAll()
	}
	got, err := checkpoint.Collect(ctx, ver, sources...)
	if err != nil {
		return err
	}
	if err := reportCheckpoints(s, ver, got); err != nil {
		return err
	}
	for _, cp := range got.Valid {
		fmt.Fprintf(s.out, "  valid: %s\n", cp)
	}
	if c.NoLog {
		return nil
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return auditLog(ctx, s, events.NewLog(pool, events.NewCodec()), got)
}

// fileSource reads one checkpoint file.
func fileSource(path string) checkpoint.NoteSource {
	return checkpoint.NoteSource{Name: path, Notes: func(_ context.Context, f func([]byte) error) error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return f(b)
	}}
}

// checkpointSources opens the checkpoints stream (when NATS answers) and
// the table. NATS being unreachable is reported, not fatal: the table is
// still read.
func (g *Globals) checkpointSources(ctx context.Context, lg zerolog.Logger, s *ioStreams) ([]checkpoint.NoteSource, func(), error) {
	pool, err := g.pool(ctx)
	if err != nil {
		return nil, nil, err
	}
	closers := []func(){pool.Close}
	sources := []checkpoint.NoteSource{{Name: "table event_checkpoints", Notes: checkpoint.NewTable(pool).Notes}}
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, js, err := g.natsConn(nctx, "audit", lg.Level(zerolog.WarnLevel))
	if err != nil {
		fmt.Fprintf(s.err, "warning: NATS unreachable (%v): only the checkpoints in the database are read, and a database superuser can delete those\n", err)
	} else {
		closers = append(closers, nc.Close)
		top := bus.DefaultTopology()
		sources = append([]checkpoint.NoteSource{{Name: "stream " + top.CheckpointsStream,
			Notes: checkpoint.NewStream(js, top.CheckpointsStream, top.CheckpointsSubject()).Notes}}, sources...)
	}
	return sources, func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}, nil
}

// reportCheckpoints prints what Collect found and fails (exit 3) on forged
// or conflicting checkpoints, or when none is valid.
func reportCheckpoints(s *ioStreams, ver note.Verifier, got checkpoint.Collected) error {
	id := checkpoint.KeyID(ver)
	fmt.Fprintf(s.out, "checkpoints: %d signed by %s", len(got.Valid), id)
	if got.OtherKeys > 0 || got.Unreadable > 0 {
		fmt.Fprintf(s.out, " (ignored: %d of other keys, %d unreadable)", got.OtherKeys, got.Unreadable)
	}
	fmt.Fprintln(s.out)
	var bad []string
	for _, f := range got.Forged {
		bad = append(bad, "FORGED checkpoint: "+f)
	}
	for _, c := range got.Conflicts {
		bad = append(bad, "CONFLICTING checkpoints (the key signed two histories; is it stolen?): "+c)
	}
	if len(bad) > 0 {
		fmt.Fprintln(s.out, strings.Join(bad, "\n"))
		return &exitError{code: 3, err: fmt.Errorf("%d forged or conflicting checkpoints", len(bad))}
	}
	if len(got.Valid) == 0 {
		return fmt.Errorf("no checkpoint signed by %s was found: nothing outside the database vouches for the log (is the signer running with the matching key?)", id)
	}
	return nil
}

// auditLog audits the log against the valid checkpoints and prints the
// verdict.
func auditLog(ctx context.Context, s *ioStreams, log *events.Log, got checkpoint.Collected) error {
	var anchors []events.Anchor
	for _, c := range got.Valid {
		anchors = append(anchors, c.Anchor())
	}
	rep, err := log.Audit(ctx, events.AuditOptions{Anchors: anchors})
	if err != nil {
		return err
	}
	if err := printAudit(s, rep); err != nil {
		return err
	}
	if len(got.Valid) > 0 {
		newest := got.Valid[len(got.Valid)-1]
		fmt.Fprintf(s.out, "the log agrees with all %d checkpoints; the newest covers events 1..%d (signed %s)\n",
			rep.AnchorsMatched, newest.Sequence, newest.Time.Format(time.RFC3339))
	}
	return nil
}

// printAudit prints an audit report; it returns an exit-3 error when the
// log failed.
func printAudit(s *ioStreams, rep events.AuditReport) error {
	if !rep.OK() {
		if rep.FirstBad > 0 {
			fmt.Fprintf(s.out, "log ALTERED: %d events read; first bad event at sequence %d: %s\n", rep.Events, rep.FirstBad, rep.Reason)
			return &exitError{code: 3, err: fmt.Errorf("the event log does not match its digests from sequence %d on", rep.FirstBad)}
		}
		fmt.Fprintf(s.out, "log ALTERED: %s\n", rep.Reason)
		return &exitError{code: 3, err: errors.New("the events table cannot be audited as it is")}
	}
	fmt.Fprintf(s.out, "log intact: %d events (head %d), every column of every event matches the hash chain\n", rep.Events, rep.Head)
	if rep.V1Events > 0 {
		fmt.Fprintf(s.out, "note: events 1..%d predate chain v2; for them the chain covers only the sequence, type and payload\n", rep.V1Events)
	}
	return nil
}

// ensureKeyPair returns the private key file of 'run': --checkpoint-key,
// or <data-dir>/checkpoint.key, created with its .pub on first start.
func ensureKeyPair(lg zerolog.Logger, flag, dataDir string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	prefix := filepath.Join(dataDir, "checkpoint")
	if _, err := os.Stat(prefix + ".key"); err == nil {
		return prefix + ".key", nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("checkpoint key: %w", err)
	}
	pub, err := writeKeyPair(prefix, "artifactstore")
	if err != nil {
		return "", err
	}
	lg.Warn().Str("private_key", prefix+".key").Str("public_key", pub).
		Msg("created a checkpoint signing key; copy the public key somewhere the database's administrators cannot change it, and pass --checkpoint-key in production")
	return prefix + ".key", nil
}

// verifyEventsStream checks the events stream against the checkpoints,
// without PostgreSQL.
func (c checkpointVerifyCmd) verifyEventsStream(ctx context.Context, g *Globals, s *ioStreams, lg zerolog.Logger, ver note.Verifier, sources []checkpoint.NoteSource) error {
	nc, js, err := g.natsConn(ctx, "checkpoint-verify", lg.Level(zerolog.WarnLevel))
	if err != nil {
		return err
	}
	defer nc.Close()
	top := bus.DefaultTopology()
	if len(sources) == 0 {
		sources = []checkpoint.NoteSource{{Name: "stream " + top.CheckpointsStream,
			Notes: checkpoint.NewStream(js, top.CheckpointsStream, top.CheckpointsSubject()).Notes}}
	}
	got, err := checkpoint.Collect(ctx, ver, sources...)
	if err != nil {
		return err
	}
	if err := reportCheckpoints(s, ver, got); err != nil {
		return err
	}
	w := checkpoint.NewWalk(got.Valid)
	err = readEventsStream(ctx, js, top, func(m relay.Message) error {
		e, err := m.Event()
		if err != nil {
			return err
		}
		return w.Add(e)
	})
	if errors.Is(err, events.ErrChainBroken) {
		fmt.Fprintf(s.out, "events stream ALTERED: %v\n", err)
		return &exitError{code: 3, err: errors.New("the events stream does not match the checkpoints")}
	}
	if err != nil {
		return err
	}
	r := w.Report
	switch {
	case r.Last == 0:
		return fmt.Errorf("the events stream %s is empty: nothing to check", top.EventsStream)
	case r.Matched == 0:
		return fmt.Errorf("events %d..%d of the stream link correctly, but no checkpoint falls among them: nothing vouches for them yet", r.First, r.Last)
	}
	_, err = fmt.Fprintf(s.out, "events stream intact: events %d..%d agree with %d checkpoints (the newest covers up to %d); events %d..%d link correctly, not yet signed\n",
		r.First, r.Newest, r.Matched, r.Newest, r.Newest+1, r.Last)
	return err
}

// readEventsStream calls f with every event of the events stream, in
// order.
func readEventsStream(ctx context.Context, js jetstream.JetStream, top bus.Topology, f func(relay.Message) error) error {
	return bus.ReadStream(ctx, js, top.EventsStream, top.EventsSubject(">"), func(msg jetstream.Msg) error {
		var m relay.Message
		if err := json.Unmarshal(msg.Data(), &m); err != nil {
			return fmt.Errorf("events stream %s: message %s is not an event: %w", top.EventsStream, msg.Subject(), err)
		}
		return f(m)
	})
}
