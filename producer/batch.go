package producer

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/google/uuid"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
)

// batchEnvelope is what a batch command takes beside its files' encodings
// (its fields, the array header), with room to spare.
const batchEnvelope = 512

// BatchLimit is the largest encoded batch command the client sends: under
// commands.MaxBatchBytes and what the connection and the commands stream
// take.
func (c *Client) BatchLimit() int {
	return min(commands.MaxBatchBytes, bus.CommandLimit(c.cfg.Topology, c.cfg.NATS.MaxPayload()))
}

// PutBatch sends small files packed into batch commands
// (commands.IngestBatch): as many files per command as fit under
// BatchLimit, at most Config.BatchFiles. Each file keeps its own command id
// (Put.CommandID, or a fresh UUID), its own reply and its own rejection;
// the ingester stores a batch with one grouped commit, so a directory of
// many small files costs one message and one commit per batch instead of
// one of each per file.
//
// Every body must fit inline (at most InlineMax bytes); put a larger one
// with Put. It returns one Pending per put, in order, once every batch is
// in JetStream; a put the client refuses before sending (an invalid path,
// a body too large) fails the call, and nothing is sent.
func (c *Client) PutBatch(ctx context.Context, puts []Put) ([]*Pending, error) {
	type entry struct {
		cmd  commands.Ingest
		size int
	}
	entries := make([]entry, len(puts))
	for i, p := range puts {
		id := p.CommandID
		if id == "" {
			id = uuid.NewString()
		}
		cmd := commands.Ingest{
			V: commands.Version, CommandID: id, Package: p.Package, Path: p.Path,
			RetentionClass: p.Class, Metadata: p.Metadata, MediaType: p.MediaType,
			Expect: p.Expect, Producer: c.cfg.Producer,
		}
		body, err := io.ReadAll(io.LimitReader(p.Body, int64(c.cfg.InlineMax)+1))
		if err != nil {
			return nil, fmt.Errorf("producer: read %s: %w", p.Path, err)
		}
		if len(body) > c.cfg.InlineMax {
			return nil, fmt.Errorf("producer: %s is larger than %d bytes, too large for a batch; send it with Put", p.Path, c.cfg.InlineMax)
		}
		if p.Size >= 0 {
			size := p.Size
			cmd.ExpectSize = &size
		}
		cmd.Inline = body
		if cmd.Inline == nil {
			cmd.Inline = []byte{}
		}
		if err := cmd.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", p.Path, err)
		}
		enc, err := commands.Encode(c.cfg.Codec, cmd, c.cfg.JSON)
		if err != nil {
			return nil, fmt.Errorf("producer: encode command: %w", err)
		}
		entries[i] = entry{cmd: cmd, size: len(enc) + 1}
	}

	limit := c.BatchLimit() - batchEnvelope
	out := make([]*Pending, len(puts))
	for start := 0; start < len(entries); {
		end, size := start, 0
		for end < len(entries) && end-start < c.cfg.BatchFiles && (end == start || size+entries[end].size <= limit) {
			size += entries[end].size
			end++
		}
		b := commands.IngestBatch{V: commands.Version, CommandID: uuid.NewString(), Files: make([]commands.Ingest, end-start)}
		for k := range b.Files {
			b.Files[k] = entries[start+k].cmd
		}
		bp, err := c.sendBatch(ctx, b)
		if err != nil {
			return nil, err
		}
		shared := &batchWaiter{p: bp}
		for k, f := range b.Files {
			out[start+k] = &Pending{CommandID: f.CommandID, Duplicate: bp.Duplicate, c: c, p: bp.p, batch: shared, index: k}
		}
		start = end
	}
	return out, nil
}

func (c *Client) sendBatch(ctx context.Context, b commands.IngestBatch) (*Pending, error) {
	return c.send(ctx, bus.CmdIngestBatch, b.CommandID, b, false)
}

// batchWaiter is the reply of one batch, read once for all its files.
type batchWaiter struct {
	p *Pending

	mu   sync.Mutex
	read bool
	rep  commands.Reply
}

// file returns the reply of the file at index of the batch (id is its
// command id). A batch refused or failed whole gives every file the
// batch's status, code and reason.
func (b *batchWaiter) file(ctx context.Context, index int, id string) (commands.Reply, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.read {
		rep, err := b.p.Wait(ctx)
		if err != nil {
			return commands.Reply{}, err
		}
		b.rep, b.read = rep, true
	}
	if b.rep.Status != commands.StatusBatch {
		r := b.rep
		r.CommandID, r.Files = id, nil
		return r, nil
	}
	if index >= len(b.rep.Files) {
		return commands.Reply{}, fmt.Errorf("producer: the reply to batch %s has %d files, not the %d sent", b.p.CommandID, len(b.rep.Files), index+1)
	}
	return b.rep.Files[index], nil
}
