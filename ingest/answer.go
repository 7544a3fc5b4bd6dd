package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// answer is the consume loop's Answer: the reply of a command the
// pipeline gives up on (retries exhausted, out of space, a worker lost on
// the last attempt). When the command turns out to be in the log after all
// (a worker died between its commit and its reply), the recorded outcome
// is the answer; otherwise a StatusFailed reply with code and reason, and
// the staged blob, if any, is deleted (a producer that sends the command
// again stages it again).
func (ing *Ingester) answer(ctx context.Context, m bus.Message, code, reason string) error {
	if m.Subject == ing.cfg.Topology.Subject(bus.CmdIngestBatch) {
		if done, err := ing.answerBatch(ctx, m, code, reason); done {
			return err
		}
	}
	d := ing.peek(m)
	rep := commands.Reply{V: commands.Version, CommandID: d.id, Status: commands.StatusFailed,
		Code: code, Reason: reason, Package: d.pkg, Path: d.path}
	if evs, err := ing.cfg.Log.ByCommand(ctx, d.id); err == nil {
		if recorded, _, err := replyFromEvents(ing.cfg.Codec, d.id, evs); err == nil {
			rep = recorded
		}
	} else if !errors.Is(err, events.ErrCommandNotFound) {
		ing.log.Debug().Err(err).Str("command_id", d.id).Msg("cannot look the command up before answering it as failed")
	}
	if rep.Status == commands.StatusFailed {
		ing.cfg.Metrics.failed(code)
		if d.staged != "" && ing.staging != nil {
			ing.deleteStaged(ctx, d.staged)
		}
	}
	ing.log.Warn().Str("command_id", d.id).Str("status", rep.Status).Str("code", code).Str("reason", reason).Msg("answering a command the pipeline gave up on")
	body, err := commands.Encode(ing.cfg.Codec, rep, d.json)
	if err != nil {
		return fmt.Errorf("ingest: encode the answer to %s: %w", d.id, err)
	}
	return bus.Reply(ing.cfg.NATS, m.ReplyTo, body, d.contentType())
}

// peek reads what it can of a command for its answer, through the
// prologue every command shares: the id (or the fallback id), package,
// path and staged object name. It never fails: an undecodable command is
// answered under its fallback id.
func (ing *Ingester) peek(m bus.Message) *delivery {
	d := newDelivery(m)
	switch m.Subject {
	case ing.cfg.Topology.Subject(bus.CmdSeal):
		_, _, _ = decode(d, ing.dec.DecodeSeal, sealNames)
	case ing.cfg.Topology.Subject(bus.CmdIngestBatch):
		id, _, _ := ing.dec.DecodeIngestBatch(m.Data, d.json)
		d.id = id
		if commands.ValidateCommandID(d.id) != nil || d.disagrees() {
			d.id = fallbackID(m)
		}
	default:
		_, _, _ = decode(d, ing.dec.DecodeIngest, ingestNames)
	}
	return d
}

// checkSpace refuses a blob of need bytes that does not fit in the
// backend's free space minus StorageReserve, before any byte is written;
// unless the backend already holds a claimed address of it (a deduplicated
// put writes nothing). A backend that does not report its capacity is not
// checked.
func (ing *Ingester) checkSpace(ctx context.Context, h dataplane.IngestHints, need int64) error {
	e := ing.spaceShortage(ctx, h, need)
	if e == nil {
		return nil
	}
	primary := h.Primary
	if primary == 0 {
		primary = digest.BLAKE3
	}
	for _, a := range h.Expect {
		if a.Algorithm() != primary {
			continue
		}
		if _, err := ing.cfg.DataPlane.Head(ctx, h.BackendID, a); err == nil {
			return nil
		}
	}
	return ing.noSpace(e)
}

// spaceShortage returns the shortage of the backend for need bytes, or nil
// when they fit (or the capacity is unknown).
func (ing *Ingester) spaceShortage(ctx context.Context, h dataplane.IngestHints, need int64) *storage.InsufficientStorageError {
	id := h.BackendID
	if id == "" {
		id = ing.cfg.DataPlane.DefaultBackend()
	}
	health, ok := ing.cfg.DataPlane.Health(ctx)[id]
	if !ok || (health.FreeBytes == 0 && health.UsedBytes == 0) {
		return nil
	}
	reserve := uint64(ing.cfg.StorageReserve)
	if need >= 0 && uint64(need)+reserve <= health.FreeBytes {
		return nil
	}
	return &storage.InsufficientStorageError{BackendID: id, Need: need, Free: health.FreeBytes, Reserve: reserve}
}

// noSpace is the handler's outcome for a blob the backend has no room for:
// the consume loop answers it insufficient_storage, dead-letters it as a
// failure and terminates it. Retrying would only fill the disk's last bytes
// or wait for an operator; the producer sends it again once space is free.
func (ing *Ingester) noSpace(err error) error {
	ing.log.Warn().Err(err).Msg("no room on the storage backend")
	return bus.Fail(err, commands.CodeInsufficientStorage)
}

// postgresDependency names PostgreSQL as the failed dependency of err
// unless err is a statement the server refused for a reason no retry
// fixes (a bug: "" makes the answer internal).
func postgresDependency(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return bus.DependencyPostgres // no answer: connection refused, reset, timeout
	}
	switch {
	case len(pgErr.Code) >= 2 && (pgErr.Code[:2] == "08" || pgErr.Code[:2] == "53" || pgErr.Code[:2] == "57" || pgErr.Code[:2] == "40"):
		// connection exception, insufficient resources, operator
		// intervention (shutdown), transaction rollback (serialization)
		return bus.DependencyPostgres
	}
	return ""
}
