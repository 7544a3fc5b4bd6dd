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
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/staging"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// objectKey names the object j stored: the key of its gc_objects row.
func objectKey(j *job) pkgstate.ObjectKey {
	return pkgstate.ObjectKey{Address: j.stored.Address.String(), Backend: j.stored.Receipt.BackendID}
}

// queueLockObjects queues on b, after the package-state lock, the read of
// the gc_objects row of every object an ingest of the group stored, FOR
// UPDATE; once the batch ran, the map holds each row's state (no entry:
// no row). Rows of ingests that the decision then refuses are locked too,
// which costs nothing: the reaper waits for the lock anyway.
func queueLockObjects(b *pgx.Batch, group []*job) map[pkgstate.ObjectKey]pkgstate.ObjectState {
	states := map[pkgstate.ObjectKey]pkgstate.ObjectState{}
	var keys []pkgstate.ObjectKey
	seen := map[pkgstate.ObjectKey]bool{}
	for _, j := range group {
		if j.kind != jobIngest {
			continue
		}
		k := objectKey(j)
		if seen[k] {
			continue
		}
		seen[k] = true
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return states
	}
	pkgstate.QueueLockObjects(b, keys, states)
	return states
}

// keepObjects is the dedup side of the reaper's protocol (see package
// reaper). Inside the commit transaction and under the ingest lock, the
// gc_objects row of every object an accepted ingest of the group
// references was taken FOR UPDATE (queueLockObjects); the reaper deletes a
// file and its row in one transaction under the same locks, so a row that
// is missing or marked means the bytes this ingest's put found (or wrote)
// may be gone since. For those, the bytes are checked and, when missing,
// written again from the command's blob (inline bytes are in memory; a
// staged object stays in the staging bucket until after the commit) before
// the reference commits; the returned rows are then set live by
// writeState, in the same transaction. So a reference never points at
// deleted bytes, and the reaper never has to stop ingests.
//
// It runs before the events are appended, so that the log head is not
// locked while bytes are rewritten.
func (c *committer) keepObjects(ctx context.Context, group []*job, g *groupPlan, states map[pkgstate.ObjectKey]pkgstate.ObjectState) ([]pkgstate.Sized, error) {
	var keep []pkgstate.Sized
	seen := map[pkgstate.ObjectKey]bool{}
	for i, j := range group {
		if j.kind != jobIngest || g.dupOf[i] != -1 || g.ds[i].rejected != nil {
			continue
		}
		k := objectKey(j)
		if seen[k] {
			continue
		}
		seen[k] = true
		if states[k] == pkgstate.ObjectLive {
			continue
		}
		if err := c.ing.ensureBytes(ctx, j); err != nil {
			return nil, err
		}
		keep = append(keep, pkgstate.Sized{Key: k, Size: j.stored.Digests.Size})
	}
	return keep, nil
}

// ensureBytes checks that the object j stored is still on its backend and,
// when the reaper deleted it after j's put, writes it again from j's blob.
func (ing *Ingester) ensureBytes(ctx context.Context, j *job) error {
	res := j.stored
	_, err := ing.cfg.DataPlane.Head(ctx, res.Receipt.BackendID, res.Address)
	if err == nil {
		return nil
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
		obj, err := staging.Open(ctx, ing.cfg.JetStream, ing.cfg.Topology.StagingBucket, info)
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
