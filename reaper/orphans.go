package reaper

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/storage"
)

// Orphan is a file on a backend that no gc_objects row, no file of a
// package and no stored location knows.
type Orphan struct {
	Object
	// StoredAt is the backend's store time of the file.
	StoredAt time.Time
	// QuarantinedAs is where the file was moved (relative to the backend's
	// root); empty in a dry run or when the store has no Quarantiner.
	QuarantinedAs string
}

// orphans walks every store. Files are classified in batches of BatchSize:
// known (a row exists), adopted (no row but referenced: a live row is
// inserted), orphan (neither, and older than OrphanMinAge: quarantined),
// or too young to judge. In a dry run nothing is written and visit
// receives each orphan.
func (r *Reaper) orphans(ctx context.Context, rep *Report, dryRun bool, visit func(Orphan)) error {
	for _, s := range r.cfg.Stores {
		if s.CleanAbandoned != nil && !dryRun {
			n, err := s.CleanAbandoned(ctx, r.cfg.OrphanMinAge)
			rep.Abandoned += n
			if err != nil {
				return fmt.Errorf("backend %q: clean what interrupted writes left: %w", s.BackendID, err)
			}
		}
		batch := make([]storage.ObjectInfo, 0, r.cfg.BatchSize)
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := r.classify(ctx, s, batch, rep, dryRun, visit)
			batch = batch[:0]
			return err
		}
		err := s.Lister.Walk(ctx, func(oi storage.ObjectInfo) error {
			batch = append(batch, oi)
			if len(batch) < r.cfg.BatchSize {
				return nil
			}
			return flush()
		})
		if err == nil {
			err = flush()
		}
		if err != nil {
			return fmt.Errorf("backend %q: %w", s.BackendID, err)
		}
	}
	return nil
}

func (r *Reaper) classify(ctx context.Context, s Store, batch []storage.ObjectInfo, rep *Report, dryRun bool, visit func(Orphan)) error {
	addrs := make([]string, len(batch))
	for i, oi := range batch {
		addrs[i] = oi.Address.String()
	}
	work := func(tx pgx.Tx) error {
		known, err := pkgstate.Known(ctx, tx, s.BackendID, addrs)
		if err != nil {
			return err
		}
		referenced, err := pkgstate.Referenced(ctx, tx, addrs)
		if err != nil {
			return err
		}
		live, err := liveIn(tx).LiveAddresses(ctx, s.BackendID, addrs)
		if err != nil {
			return err
		}
		maps.Copy(referenced, live)
		now := r.cfg.Now().UTC()
		for _, oi := range batch {
			a := oi.Address.String()
			switch {
			case known[a]:
			case referenced[a]:
				if dryRun {
					continue
				}
				adopted, err := pkgstate.Adopt(ctx, tx, pkgstate.Sized{Key: pkgstate.ObjectKey{Address: a, Backend: s.BackendID}, Size: oi.Size}, now)
				if err != nil {
					return err
				}
				if adopted {
					rep.Adopted++
					r.log.Info().Str("address", a).Str("backend", s.BackendID).Msg("referenced object had no gc row; adopted")
				}
			case now.Sub(oi.StoredAt) >= r.cfg.OrphanMinAge:
				o := Orphan{Object: Object{Address: oi.Address, BackendID: s.BackendID, Size: oi.Size}, StoredAt: oi.StoredAt}
				rep.Orphans++
				if !dryRun && s.Quarantiner != nil {
					dest, err := s.Quarantiner.Quarantine(ctx, oi.Address)
					if err != nil {
						return fmt.Errorf("quarantine orphan %s: %w", a, err)
					}
					o.QuarantinedAs = dest
					rep.Quarantined++
					r.cfg.Hook(ctx, PointAfterQuarantine, &o.Object)
				}
				r.log.Warn().Str("address", a).Str("backend", s.BackendID).Int64("size", oi.Size).Time("stored_at", oi.StoredAt).
					Str("quarantined_as", o.QuarantinedAs).Bool("dry_run", dryRun).
					Msg("orphan: a stored file that no row knows; moved to quarantine for an operator to inspect (never deleted by the reaper)")
				if visit != nil {
					visit(o)
				}
			}
		}
		return nil
	}
	if dryRun {
		return pgx.BeginTxFunc(ctx, r.cfg.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, work)
	}
	return r.lockedTx(ctx, work)
}

// liveLocations is what the orphan check reads of the projections: which
// addresses have a location on a backend that is not deleted.
type liveLocations interface {
	LiveAddresses(ctx context.Context, backendID string, addrs []string) (map[string]bool, error)
}

var _ liveLocations = (*catalog.Catalog)(nil)

// liveIn reads the catalog in the transaction tx, so that the check sees
// what the transaction sees.
func liveIn(tx pgx.Tx) liveLocations { return catalog.New(tx) }
