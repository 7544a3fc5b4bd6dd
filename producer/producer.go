// Package producer is the client side of ingest: it sends ingest and seal
// commands over NATS JetStream, stages blobs too large to ride inline in
// the staging object store, and waits for the ingester's replies. One
// Client carries any number of outstanding commands.
//
// A put is done only when its reply says "stored" (or "repaired": stored,
// in place of a damaged copy): the reply is sent after the ingester
// fsynced the bytes and committed the events. JetStream's own
// acknowledgement of the publish is not durability.
package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/staging"
)

// Config configures a Client. NATS and JetStream are required.
type Config struct {
	// NATS is the connection replies arrive on.
	NATS *nats.Conn
	// JetStream publishes commands and stages blobs (on the same
	// connection).
	JetStream jetstream.JetStream
	// Topology names subjects and the staging bucket. Default
	// bus.DefaultTopology().
	Topology bus.Topology
	// Codec encodes CBOR commands. Default events.NewCodec().
	Codec *events.Codec
	// InlineMax is the largest blob sent inline. Default: the smallest of
	// commands.MaxInline and what the connection and topology allow.
	InlineMax int
	// Producer names the sender in the events (their actor).
	Producer string
	// JSON sends JSON commands instead of CBOR.
	JSON bool
	// BatchFiles caps the files PutBatch packs into one batch command.
	// Default 128; at most commands.MaxBatchFiles.
	BatchFiles int
	// OnRetry, when set, hears about every staging upload restarted after
	// a passing failure (429 too many requests, a timeout, a connection
	// reset), e.g. to tell the user why a put takes longer.
	OnRetry func(name string, attempt int, err error, wait time.Duration)
	// ReaskAfter and ReaskMax are the schedule of the re-asks of a command
	// whose reply does not come (see bus.ReaskAfter). Default
	// bus.DefaultReaskAfter and bus.DefaultReaskMax; a negative ReaskAfter
	// turns them off.
	ReaskAfter, ReaskMax time.Duration
}

// Client sends commands and waits for replies. Safe for concurrent use.
type Client struct {
	cfg   Config
	req   *bus.Requester
	stage *staging.Writer
}

// New returns a client; Close it when done.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.NATS == nil || cfg.JetStream == nil {
		return nil, errors.New("producer: Config needs NATS and JetStream")
	}
	if cfg.Topology.CommandsStream == "" {
		cfg.Topology = bus.DefaultTopology()
	}
	if cfg.Codec == nil {
		cfg.Codec = events.NewCodec()
	}
	if cfg.BatchFiles <= 0 || cfg.BatchFiles > commands.MaxBatchFiles {
		cfg.BatchFiles = min(128, commands.MaxBatchFiles)
	}
	limit := min(commands.MaxInline, bus.InlineLimit(cfg.Topology, cfg.NATS.MaxPayload()))
	if cfg.InlineMax <= 0 || cfg.InlineMax > limit {
		cfg.InlineMax = limit
	}
	st, err := staging.NewWriter(cfg.NATS, cfg.Topology.StagingBucket, cfg.OnRetry)
	if err != nil {
		return nil, err
	}
	if cfg.ReaskAfter == 0 {
		cfg.ReaskAfter = bus.DefaultReaskAfter
	}
	if cfg.ReaskMax <= 0 {
		cfg.ReaskMax = bus.DefaultReaskMax
	}
	req, err := bus.NewRequester(cfg.NATS, cfg.JetStream, bus.ReaskAfter(cfg.ReaskAfter, cfg.ReaskMax))
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, req: req, stage: st}, nil
}

// Close stops waiting for replies.
func (c *Client) Close() error { return c.req.Close() }

// InlineMax is the largest blob the client sends inline.
func (c *Client) InlineMax() int { return c.cfg.InlineMax }

// Put is one file to store.
type Put struct {
	// CommandID is the idempotency key; empty makes a fresh UUID. Re-send
	// a command with the same id to learn its outcome again.
	CommandID string
	Package   string
	Path      string
	// Class is the retention class of a new package ("" = the default).
	Class     string
	Metadata  map[string]string
	MediaType string
	// Body is the blob. Size is its length when known (< 0 unknown); a
	// known size is claimed in the command, so a short read is rejected,
	// and decides inline versus staged without buffering. A Body that is
	// also an io.Seeker (a file) lets a staging upload that failed for a
	// passing reason start again; any other body fails at the first such
	// failure.
	Body io.Reader
	Size int64
	// Progress, when set, hears how many bytes of a staged blob the
	// staging bucket acknowledged so far (0 again when the upload
	// restarts).
	Progress func(sent int64)
	// Expect holds addresses the producer claims for the blob.
	Expect []digest.Address
}

// Pending is a command whose reply has not been read yet.
type Pending struct {
	// CommandID is the command's id.
	CommandID string
	// Staged is true when the blob went through the staging bucket.
	Staged bool
	// Duplicate reports that JetStream had seen this command id inside its
	// duplicate window: the reply may have gone to an earlier sender.
	Duplicate bool

	c *Client
	p *bus.Pending
	// early is a reply that came while the blob was being staged.
	early *nats.Msg
	// batch is the shared reply of the batch this file went in (PutBatch),
	// index the file's place in it; nil for a command of its own.
	batch *batchWaiter
	index int
}

// Put sends one file: inline when it is at most InlineMax bytes, else
// staged (streaming, memory bounded), with the command sent as the upload
// starts so that the ingester works while the bytes arrive. It returns
// once the command is in JetStream and the blob staged; Wait for the
// reply.
func (c *Client) Put(ctx context.Context, p Put) (*Pending, error) {
	id := p.CommandID
	if id == "" {
		id = uuid.NewString()
	}
	if err := commands.ValidateCommandID(id); err != nil {
		return nil, err
	}
	cmd := commands.Ingest{
		V: commands.Version, CommandID: id, Package: p.Package, Path: p.Path,
		RetentionClass: p.Class, Metadata: p.Metadata, MediaType: p.MediaType,
		Expect: p.Expect, Producer: c.cfg.Producer,
	}
	if p.Size >= 0 {
		size := p.Size
		cmd.ExpectSize = &size
	}
	// Validate before anything is staged: a refusal costs no upload.
	probe := cmd
	probe.Inline = []byte{}
	if err := probe.Validate(); err != nil {
		return nil, err
	}

	inline, body, err := c.readInline(p)
	if err != nil {
		return nil, err
	}
	if inline {
		cmd.Inline = body
		if cmd.Inline == nil {
			cmd.Inline = []byte{}
		}
		return c.send(ctx, bus.CmdIngest, id, cmd, false)
	}
	return c.putStaged(ctx, cmd, p, body)
}

// putStaged sends the command of a staged blob as its upload starts, then
// uploads it: the ingester reads the chunks while they arrive, so that the
// reply follows the upload's end by little more than an fsync and a
// commit. A reply that comes before the upload ends (a refusal: the
// package is sealed, the blob too large, …) stops the upload.
func (c *Client) putStaged(ctx context.Context, cmd commands.Ingest, p Put, prefix []byte) (*Pending, error) {
	cmd.Staged, cmd.Upload = cmd.CommandID, staging.NewUpload()
	pend, err := c.send(ctx, bus.CmdIngest, cmd.CommandID, cmd, true)
	if err != nil {
		return nil, err
	}
	uctx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if m, err := pend.p.Wait(uctx); err == nil {
			pend.early = m
			cancel(staging.ErrReaderDone)
		}
	}()
	// While the staging bucket acknowledges chunks, the ingester is
	// reading them and no reply is due: no re-ask.
	progress := func(sent int64) {
		pend.p.Progressing()
		if p.Progress != nil {
			p.Progress(sent)
		}
	}
	_, err = c.stage.StageUpload(uctx, cmd.Staged, p.Package+":"+p.Path, cmd.Upload, prefix, p.Body, progress)
	cancel(nil)
	<-watched
	if pend.early != nil {
		return pend, nil
	}
	if err != nil {
		pend.Cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
			return nil, fmt.Errorf("%w (does the staging bucket %s exist? `artifactstore topology apply` creates it)", err, c.cfg.Topology.StagingBucket)
		}
		if denied := (*bus.PublishDeniedError)(nil); errors.As(err, &denied) {
			return nil, fmt.Errorf("producer: %s: %w; `put` connects as the %s role, whose grants include it", p.Path, err, bus.RoleProducer)
		}
		return nil, fmt.Errorf("%s: %w", p.Path, err)
	}
	return pend, nil
}

// readInline reads the body when it fits inline. It returns inline=false
// and the bytes read so far when the body is larger.
func (c *Client) readInline(p Put) (bool, []byte, error) {
	if p.Size > int64(c.cfg.InlineMax) {
		return false, nil, nil
	}
	buf, err := io.ReadAll(io.LimitReader(p.Body, int64(c.cfg.InlineMax)+1))
	if err != nil {
		return false, nil, fmt.Errorf("producer: read %s: %w", p.Path, err)
	}
	return len(buf) <= c.cfg.InlineMax, buf, nil
}

// Seal sends a seal command for pkg.
func (c *Client) Seal(ctx context.Context, pkg string) (*Pending, error) {
	id := uuid.NewString()
	cmd := commands.Seal{V: commands.Version, CommandID: id, Package: pkg, Producer: c.cfg.Producer}
	if err := cmd.Validate(); err != nil {
		return nil, err
	}
	return c.send(ctx, bus.CmdSeal, id, cmd, false)
}

func (c *Client) send(ctx context.Context, cmdSubject, id string, cmd any, staged bool) (*Pending, error) {
	body, err := commands.Encode(c.cfg.Codec, cmd, c.cfg.JSON)
	if err != nil {
		return nil, fmt.Errorf("producer: encode command: %w", err)
	}
	ct := ""
	if c.cfg.JSON {
		ct = commands.ContentTypeJSON
	}
	bp, err := c.req.Send(ctx, c.cfg.Topology.Subject(cmdSubject), id, body, ct)
	if err != nil {
		if denied := (*bus.PublishDeniedError)(nil); errors.As(err, &denied) {
			return nil, fmt.Errorf("producer: %w; `put` and `seal` connect as the %s role, whose grants include it", err, bus.RoleProducer)
		}
		return nil, err
	}
	return &Pending{CommandID: id, Staged: staged, Duplicate: bp.PubAck != nil && bp.PubAck.Duplicate, c: c, p: bp}, nil
}

// Wait waits for the reply until ctx is done. A rejection is a reply (see
// Reply.Err), not an error; an error means no reply could be read.
func (p *Pending) Wait(ctx context.Context) (commands.Reply, error) {
	if p.batch != nil {
		return p.batch.file(ctx, p.index, p.CommandID)
	}
	m := p.early
	if m == nil {
		var err error
		if m, err = p.p.Wait(ctx); err != nil {
			return commands.Reply{}, err
		}
	}
	p.p.Cancel()
	return commands.DecodeReply(p.c.cfg.Codec, m.Data, commands.IsJSON(m.Header.Get(commands.HeaderContentType)))
}

// Cancel stops waiting for the reply.
func (p *Pending) Cancel() { p.p.Cancel() }
