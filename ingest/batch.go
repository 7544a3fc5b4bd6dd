package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// handleBatch handles an ingest batch (commands.IngestBatch): several
// small inline files, each with its own command id.
//
// A batch that does not decode as a whole is rejected like any command.
// Otherwise each file goes the way of an ingest, side by side with the
// others: a file whose command id is in the log is answered from the log;
// the others are pre-checked together in one round trip, then stored
// concurrently (their fsyncs overlap, and the backend shares the fsync of
// a directory between the objects that land in it together), then
// committed together in one group. Each file gets its own events and its
// own reply line; a file refused (it does not validate, a wrong claim, a
// sealed package) gets its rejection event and reply, and the others are
// unaffected.
//
// The batch is answered once every file has a committed outcome, and then
// acknowledged (a batch with rejected files is not dead-lettered: every
// file is answered, and the rejections are in the log). A transient
// failure of any file commits the others first and then redelivers the
// batch, whose next delivery answers the committed files from the log;
// when the retries run out, answer replies with what the log holds of
// each file and "failed" for the rest.
func (ing *Ingester) handleBatch(ctx context.Context, d *delivery) error {
	id, files, err := ing.dec.DecodeIngestBatch(d.msg.Data, d.json)
	d.id = id
	var rej *commands.Error
	switch {
	case errors.As(err, &rej):
		if commands.ValidateCommandID(d.id) != nil || d.disagrees() {
			d.id = fallbackID(d.msg)
		}
		return ing.reject(ctx, d, rej)
	case err != nil:
		d.id = fallbackID(d.msg)
		return bus.Reject(err, commands.CodeMalformed)
	case d.disagrees():
		rej = commands.Rejectf(commands.CodeInvalidCommandID,
			"header Nats-Msg-Id %q differs from the batch's command_id %q; send the batch id in both or only in the body", d.msg.CommandID, d.id)
		d.id = fallbackID(d.msg)
		return ing.reject(ctx, d, rej)
	}

	n := len(files)
	ids := batchFileIDs(d.msg, files)
	outs := make([]outcome, n)
	jobs := make([]*job, n)
	rejectJob := func(i int, rej *commands.Error) {
		c := files[i].Ingest
		jobs[i] = &job{kind: jobReject, commandID: ids[i], actor: ing.cfg.Actor, reject: rej, pkg: c.Package, path: c.Path}
	}

	// One round trip for every file: which are in the log already, and
	// which the commit would refuse.
	var checkIDs []string
	var checkCmds []commands.Ingest
	var checkIdx []int
	for i, f := range files {
		if f.Err != nil {
			rejectJob(i, f.Err)
			continue
		}
		checkIDs, checkCmds, checkIdx = append(checkIDs, ids[i]), append(checkCmds, f.Ingest), append(checkIdx, i)
	}
	var toStore []int
	need := int64(0)
	if len(checkIdx) > 0 {
		known, rejs, err := ing.precheckMany(ctx, checkIDs, checkCmds)
		if err != nil {
			return ing.transient(ctx, postgresDependency(err), "pre-check", err)
		}
		for k, i := range checkIdx {
			switch {
			case known[ids[i]]:
				o, err := ing.recorded(ctx, ids[i])
				if err != nil {
					return err
				}
				outs[i] = o
			case rejs[k] != nil:
				rejectJob(i, rejs[k])
			default:
				toStore = append(toStore, i)
				need += int64(len(files[i].Ingest.Inline))
			}
		}
	}

	// Store every accepted file, concurrently.
	var failed error // the first transient failure, or a shortage of space
	if len(toStore) > 0 {
		if err := ing.checkSpace(ctx, ing.hints(files[toStore[0]].Ingest), need); err != nil {
			return err
		}
		cond, err := ing.batchConditions(ctx, files, toStore)
		if err != nil {
			return ing.transient(ctx, postgresDependency(err), "read the records of the batch's objects", err)
		}
		results := make([]storeResult, n)
		var wg sync.WaitGroup
		for _, i := range toStore {
			select {
			case ing.slots <- struct{}{}:
			case <-ctx.Done():
				wg.Wait()
				return ing.transient(ctx, "", "store batch", context.Cause(ctx))
			}
			wg.Go(func() {
				defer func() { <-ing.slots }()
				results[i] = ing.storeInline(ctx, files[i].Ingest, cond)
			})
		}
		wg.Wait()
		for _, i := range toStore {
			r := results[i]
			c := files[i].Ingest
			switch {
			case r.rej != nil:
				rejectJob(i, r.rej)
			case r.err != nil:
				if failed == nil {
					failed = r.err
				}
			default:
				jobs[i] = &job{kind: jobIngest, commandID: ids[i], actor: ing.actor(c.Producer),
					ingest: c, stored: r.res, pkg: c.Package, path: c.Path}
			}
		}
	}

	// Commit every decided file in one group.
	var submit []*job
	var at []int
	for i, j := range jobs {
		if j != nil {
			submit, at = append(submit, j), append(at, i)
		}
	}
	if len(submit) > 0 {
		for k, o := range ing.commit.submitAll(ctx, submit) {
			if o.err != nil {
				return ing.transient(ctx, postgresDependency(o.err), "commit", o.err)
			}
			outs[at[k]] = o
		}
	}
	if failed != nil {
		if errors.Is(failed, storage.ErrInsufficientStorage) {
			return ing.noSpace(failed)
		}
		return ing.transient(ctx, storeDependency(failed), "store blob", failed)
	}

	reply := commands.Reply{V: commands.Version, CommandID: d.id, Status: commands.StatusBatch, Files: make([]commands.Reply, n)}
	for i, o := range outs {
		ing.cfg.Metrics.outcome(o.reply)
		reply.Files[i] = o.reply
	}
	body, err := commands.Encode(ing.cfg.Codec, reply, d.json)
	if err != nil {
		return ing.transient(ctx, "", "encode reply", err)
	}
	if err := bus.Reply(ing.cfg.NATS, d.msg.ReplyTo, body, d.contentType()); err != nil {
		return ing.transient(ctx, bus.DependencyNATS, "reply", err)
	}
	return nil
}

// batchFileIDs returns the command id of each file of a batch: its own,
// or, when it has no usable one, "nats-<stream>-<seq>-<index>".
func batchFileIDs(m bus.Message, files []commands.BatchFile) []string {
	ids := make([]string, len(files))
	for i, f := range files {
		ids[i] = f.Ingest.CommandID
		if commands.ValidateCommandID(ids[i]) != nil {
			ids[i] = fmt.Sprintf("nats-%s-%d-%d", m.Stream, m.StreamSequence, i)
		}
	}
	return ids
}

// storeResult is the outcome of storing one file of a batch: the durable
// object, or a rejection, or a failure that is not the file's fault.
type storeResult struct {
	res dataplane.IngestResult
	rej *commands.Error
	err error
}

// batchConditions reads what the records say of the objects of the files
// at idx (see condition) in two round trips for the whole batch, rather
// than two per file: the blobs are inline and small, so their addresses
// are computed first (hashing them once more is cheaper than a round
// trip).
func (ing *Ingester) batchConditions(ctx context.Context, files []commands.BatchFile, idx []int) (func(context.Context, string, digest.Address) (storage.Condition, error), error) {
	backend := ing.cfg.BackendID
	if backend == "" {
		backend = ing.cfg.DataPlane.DefaultBackend()
	}
	addrs := make([]digest.Address, 0, len(idx))
	buf := make([]byte, 32<<10)
	for _, i := range idx {
		d, err := digest.Compute(bytes.NewReader(files[i].Ingest.Inline), buf)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, d.Address(ing.cfg.Primary))
	}
	return ing.conditions(ctx, backend, addrs)
}

// storeInline stores the inline blob of c, with cond as the condition
// hint; it returns when the object and its directory are fsynced.
func (ing *Ingester) storeInline(ctx context.Context, c commands.Ingest, cond func(context.Context, string, digest.Address) (storage.Condition, error)) storeResult {
	hints := ing.hints(c)
	hints.Condition = cond
	res, err := ing.cfg.DataPlane.Ingest(ctx, bytes.NewReader(c.Inline), hints)
	if err == nil {
		return storeResult{res: res}
	}
	if errors.Is(err, storage.ErrInsufficientStorage) {
		return storeResult{err: fmt.Errorf("ingest: store blob of %s (%d bytes): %w", c.Path, len(c.Inline), err)}
	}
	if rej := ing.classifyStoreError(err, c, digest.Address{}, hints.MaxSize); rej != nil {
		return storeResult{rej: rej}
	}
	return storeResult{err: err}
}

// recorded is the outcome recorded in the log for command id.
func (ing *Ingester) recorded(ctx context.Context, id string) (outcome, error) {
	evs, err := ing.cfg.Log.ByCommand(ctx, id)
	if err != nil {
		return outcome{}, ing.transient(ctx, postgresDependency(err), "look up command", err)
	}
	rep, rej, err := replyFromEvents(ing.cfg.Codec, id, evs)
	if err != nil {
		return outcome{}, ing.transient(ctx, "", "rebuild reply", err)
	}
	return outcome{reply: rep, rejected: rej}, nil
}

// answerBatch is answer for a batch: each file's outcome as the log
// records it, else a failed reply with code and reason. It reports false
// for a batch refused whole, which is answered like any command.
func (ing *Ingester) answerBatch(ctx context.Context, m bus.Message, code, reason string) (bool, error) {
	d := newDelivery(m)
	id, files, err := ing.dec.DecodeIngestBatch(m.Data, d.json)
	if err != nil || d.disagrees() {
		return false, nil
	}
	ids := batchFileIDs(m, files)
	rep := commands.Reply{V: commands.Version, CommandID: id, Status: commands.StatusBatch, Files: make([]commands.Reply, len(files))}
	for i, f := range files {
		r := commands.Reply{V: commands.Version, CommandID: ids[i], Status: commands.StatusFailed,
			Code: code, Reason: reason, Package: f.Ingest.Package, Path: f.Ingest.Path}
		if evs, err := ing.cfg.Log.ByCommand(ctx, ids[i]); err == nil {
			if recorded, _, err := replyFromEvents(ing.cfg.Codec, ids[i], evs); err == nil {
				r = recorded
			}
		} else if !errors.Is(err, events.ErrCommandNotFound) {
			ing.log.Debug().Err(err).Str("command_id", ids[i]).Msg("cannot look the command up before answering it as failed")
		}
		if r.Status == commands.StatusFailed {
			ing.cfg.Metrics.failed(code)
		}
		rep.Files[i] = r
	}
	ing.log.Warn().Str("command_id", id).Int("files", len(files)).Str("code", code).Str("reason", reason).Msg("answering a batch the pipeline gave up on")
	body, err := commands.Encode(ing.cfg.Codec, rep, d.json)
	if err != nil {
		return true, fmt.Errorf("ingest: encode the answer to batch %s: %w", id, err)
	}
	return true, bus.Reply(ing.cfg.NATS, m.ReplyTo, body, d.contentType())
}
