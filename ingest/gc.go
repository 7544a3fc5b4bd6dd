package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// gcKey names one stored object: a content address on a backend, the key
// of its gc_objects row.
type gcKey struct{ addr, backend string }

// keepObjects takes, inside the commit transaction and under the ingest
// lock, the gc_objects row of every object an accepted ingest of the group
// references, FOR UPDATE, and makes it live. This is the dedup side of the
// reaper's protocol (see package reaper): the reaper deletes a file and
// its row in one transaction under the same locks, so a row that is
// missing or marked here means the bytes this ingest's put found (or
// wrote) may be gone since. Then the bytes are checked and, when missing,
// written again from the command's blob (inline bytes are in memory; a
// staged object stays in the staging bucket until after the commit)
// before the reference commits. So a reference never points at deleted
// bytes, and the reaper never has to stop ingests.
//
// It runs before the events are appended, so that the log head is not
// locked while bytes are rewritten.
func (c *committer) keepObjects(ctx context.Context, tx pgx.Tx, group []*job, ds []decided, dupOf []int) error {
	seen := map[gcKey]bool{}
	now := c.ing.cfg.Now().UTC()
	for i, j := range group {
		if j.kind != jobIngest || dupOf[i] != -1 || ds[i].rejected != nil {
			continue
		}
		res := j.stored
		k := gcKey{res.Address.String(), res.Receipt.BackendID}
		if seen[k] {
			continue
		}
		seen[k] = true
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM gc_objects WHERE content_address = $1 AND backend_id = $2 FOR UPDATE`, k.addr, k.backend).Scan(&state)
		switch {
		case err == nil && state == "live":
			continue
		case err == nil, errors.Is(err, pgx.ErrNoRows):
		default:
			return fmt.Errorf("lock the gc row of %s on %q: %w", k.addr, k.backend, err)
		}
		if err := c.ing.ensureBytes(ctx, j); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO gc_objects (content_address, backend_id, size_bytes, state, updated_at)
			VALUES ($1, $2, $3, 'live', $4)
			ON CONFLICT (content_address, backend_id) DO UPDATE SET state = 'live', marked_at = NULL, updated_at = excluded.updated_at`,
			k.addr, k.backend, res.Digests.Size, now); err != nil {
			return fmt.Errorf("keep %s on %q live: %w", k.addr, k.backend, err)
		}
	}
	return nil
}

// ensureBytes checks that the object j stored is still on its backend and,
// when the reaper deleted it after j's put, writes it again from j's blob.
func (ing *Ingester) ensureBytes(ctx context.Context, j *job) error {
	res := j.stored
	rc, err := ing.cfg.DataPlane.Serve(ctx, res.Receipt.BackendID, res.Address, nil)
	if err == nil {
		return rc.Close()
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("check the bytes of %s: %w", res.Address, err)
	}
	var r io.Reader
	if j.ingest.Inline != nil {
		r = bytes.NewReader(j.ingest.Inline)
	} else {
		info, err := ing.staging.GetInfo(ctx, j.ingest.Staged)
		if err != nil {
			return fmt.Errorf("the bytes of %s were deleted by the reaper during this ingest, and staged object %q cannot be read to write them again: %w", res.Address, j.ingest.Staged, err)
		}
		obj, err := openStaged(ctx, ing.cfg.JetStream, ing.cfg.Topology.StagingBucket, info)
		if err != nil {
			return fmt.Errorf("reopen staged object %q to write %s again: %w", j.ingest.Staged, res.Address, err)
		}
		defer obj.Close()
		r = obj
	}
	start := time.Now()
	again, err := ing.cfg.DataPlane.Ingest(ctx, r, dataplane.IngestHints{
		Primary: res.Address.Algorithm(), BackendID: res.Receipt.BackendID,
		Expect: []digest.Address{res.Address}, ExpectSize: res.Digests.Size,
	})
	if err != nil {
		return fmt.Errorf("write %s again after the reaper deleted it during this ingest: %w", res.Address, err)
	}
	ing.log.Info().Str("command_id", j.commandID).Str("address", again.Address.String()).Int64("size", again.Digests.Size).
		Dur("took", time.Since(start)).Msg("the reaper deleted the bytes this ingest deduplicated against; wrote them again")
	return nil
}
