// Package reaper applies retention: it expires packages whose retain-until
// has passed, and deletes the bytes that no live package references any
// more. One instance is active at a time (cmd wires it under
// internal/leader with leader.KeyReaper); it is a periodic loop of bounded
// batches.
//
// # Liveness
//
// A package is live while it has not expired or while it is on legal hold.
// A package expires when its retain-until has passed, it has no legal hold
// and its class does not say never_expires (permanent-record has no
// retain-until at all). Content is shared: an object's bytes are needed
// while any live package has a file that names its address, so deletion
// is by reference, never by package, and the strongest retention among
// all references wins.
//
// # A pass
//
// Every decision reads the command-side state (ingest_packages,
// ingest_files, gc_objects) under the transaction-level advisory lock the
// ingesters and the retention handler take, so that it agrees with
// concurrent ingests and holds. A pass runs four phases, each in batches
// of at most Config.BatchSize rows until a batch comes back short:
//
//  1. Expire: packages that are due get a retention.expired event and
//     expired_at, in one transaction per batch.
//  2. Mark: gc_objects (one row per object on a backend) is walked in
//     key order, BatchSize rows per transaction; the live rows that no live
//     package references become marked at now.
//  3. Sweep: rows marked at least Config.Grace ago are taken one by one,
//     in one transaction each: the advisory lock, then the row FOR UPDATE;
//     the reference check again; the file deleted through the data plane;
//     object.deleted appended; the row deleted; commit. A row found live
//     again (an ingest or a hold got there first) is set live and kept.
//  4. Orphans (every Config.OrphanInterval): each store is walked; a file
//     with no row whose address is still referenced gets a row (adopted);
//     a file that no row and no reference knows, older than
//     Config.OrphanMinAge, is moved to the backend's quarantine folder and
//     reported, never deleted.
//
// # Racing ingests
//
// An ingest that finds existing content (a deduplicated put) takes the
// same gc_objects row FOR UPDATE in its commit transaction, sets it live,
// and, when the row was missing or marked, checks that the bytes exist and
// writes them again when they do not. Because the sweep deletes the file
// and the row in one transaction under the same locks, an ingest that
// commits after a sweep finds no row and rewrites the bytes; one that
// commits before makes the re-check see a live reference. Either way no
// live reference points at missing bytes, and nothing runs read-only.
//
// # Crashes
//
// Every phase is one transaction per batch or object, so a crash rolls
// back the unfinished one. A crash after the file delete and before the
// commit leaves the row marked; the next sweep deletes again (the data
// plane says the file no longer existed) and appends object.deleted then,
// under a command id derived from the address, the backend and the mark
// time, so the event is appended exactly once.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// DataPlane is what the reaper needs of the data plane: deleting bytes.
type DataPlane interface {
	Delete(ctx context.Context, backendID string, addr digest.Address) (existed bool, err error)
}

var _ DataPlane = (*dataplane.DataPlane)(nil)

// EventLog is what the reaper needs of the event log (*events.Log).
type EventLog interface {
	AppendTx(ctx context.Context, tx pgx.Tx, batches ...events.Batch) ([]events.Result, error)
}

var _ EventLog = (*events.Log)(nil)

// Quarantiner moves an object that no record knows out of the backend's
// objects, to a place where an operator can inspect it, and returns where
// it went (the backend's own notion of a place). The local and S3
// backends implement it.
type Quarantiner interface {
	Quarantine(ctx context.Context, addr digest.Address) (string, error)
}

// Store is one backend whose files the orphan scan walks.
type Store struct {
	// BackendID is the backend's id, as in gc_objects and the data plane.
	BackendID string
	// Lister enumerates the objects the backend holds.
	Lister storage.Lister
	// Quarantiner moves orphans away; nil reports orphans without moving
	// them.
	Quarantiner Quarantiner
	// CleanAbandoned, when set, removes what writers that crashed more
	// than olderThan ago left on the backend outside its objects (on S3:
	// incomplete multipart uploads and temp objects) and returns how many
	// it removed. It runs with the orphan scan, with OrphanMinAge as the
	// bound, and not in a dry run.
	CleanAbandoned func(ctx context.Context, olderThan time.Duration) (int, error)
}

// Point names a moment of a pass at which Config.Hook is called.
type Point string

// Hook points, in pass order.
const (
	// PointExpireBeforeCommit: a batch of expiries is appended and
	// written, not committed.
	PointExpireBeforeCommit Point = "expire-before-commit"
	// PointExpired: the expire phase is done.
	PointExpired Point = "expired"
	// PointMarkBeforeCommit: a batch of rows is marked, not committed.
	PointMarkBeforeCommit Point = "mark-before-commit"
	// PointMarked: the mark phase is done.
	PointMarked Point = "marked"
	// PointBeforeRecheck: the sweep is about to re-check a marked, due
	// object. No lock is held yet: an ingest may still commit a new
	// reference to it, which the re-check must then see.
	PointBeforeRecheck Point = "before-recheck"
	// PointBeforeDelete: the sweep decided to delete an object (locks
	// held); the file is still there.
	PointBeforeDelete Point = "before-delete"
	// PointAfterDelete: the file is deleted; the event and the row
	// deletion are not committed.
	PointAfterDelete Point = "after-delete"
	// PointDeleted: the deletion of one object is committed.
	PointDeleted Point = "deleted"
	// PointSwept: the sweep phase is done.
	PointSwept Point = "swept"
	// PointAfterQuarantine: an orphan was moved; the batch's transaction
	// is not committed.
	PointAfterQuarantine Point = "after-quarantine"
	// PointOrphansDone: the orphan scan is done.
	PointOrphansDone Point = "orphans-done"
)

// Object is one stored object the reaper acts on.
type Object struct {
	Address   digest.Address
	BackendID string
	Size      int64
	// MarkedAt is when the object was marked; zero when it is not.
	MarkedAt time.Time
}

// Config configures a [Reaper]. Pool, Log and DataPlane are required;
// every other field has a default, filled in by withDefaults (the one
// place where defaults live).
type Config struct {
	// Pool is the PostgreSQL pool of the log and the command-side state.
	Pool *pgxpool.Pool
	// Log is the event log.
	Log EventLog
	// DataPlane deletes bytes.
	DataPlane DataPlane
	// Stores are the backends the orphan scan walks; none: no orphan scan.
	Stores []Store

	// Interval is the pause between two passes of Run. Default 5 minutes.
	Interval time.Duration
	// IntervalJitter is the largest random time added to each Interval.
	// Default Interval/10.
	IntervalJitter time.Duration
	// BatchSize is the most packages or objects one transaction of the
	// expire, mark and orphan phases handles, and the most objects one
	// sweep batch selects. Default 500.
	BatchSize int
	// BatchJitter is the largest random pause between two batches of a
	// phase, which spreads the reaper's load (it holds the ingest lock
	// during each batch). Default 20 ms; negative: no pause.
	BatchJitter time.Duration
	// Grace is how long an object stays marked before the sweep may
	// delete it. Default 1 hour; negative: no grace (tests).
	Grace time.Duration
	// OrphanInterval is how often a pass also scans the stores for
	// orphans. Default 24 hours; negative: never.
	OrphanInterval time.Duration
	// OrphanMinAge is how old a file with no row must be before it counts
	// as an orphan (a younger one may be an ingest between its put and its
	// commit). Default 24 hours.
	OrphanMinAge time.Duration
	// Actor is the actor of the reaper's events. Default "reaper".
	Actor string
	// Logger receives the reaper's log lines. The zero value logs nothing.
	Logger zerolog.Logger
	// Now is the clock of every retention decision. Default time.Now;
	// tests move it forward instead of sleeping.
	Now func() time.Time
	// Metrics counts expired packages, deleted objects and freed bytes;
	// nil counts nothing.
	Metrics *Metrics
	// Hook, when set, is called at each Point of a pass (obj is set at
	// the per-object points), synchronously: tests pause or stop the
	// reaper there. It must not take the ingest lock. At
	// PointBeforeRecheck the reaper holds no lock, so the hook may wait
	// for an ingest to commit; at the other points inside a transaction
	// it must not wait for one.
	Hook func(ctx context.Context, p Point, obj *Object)
}

func (c Config) withDefaults() (Config, error) {
	if c.Pool == nil || c.Log == nil || c.DataPlane == nil {
		return c, errors.New("reaper: Config needs Pool, Log and DataPlane")
	}
	for _, s := range c.Stores {
		if s.BackendID == "" || s.Lister == nil {
			return c, errors.New("reaper: every Store needs a BackendID and a Lister")
		}
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Minute
	}
	if c.IntervalJitter <= 0 {
		c.IntervalJitter = c.Interval / 10
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchJitter == 0 {
		c.BatchJitter = 20 * time.Millisecond
	}
	if c.Grace == 0 {
		c.Grace = time.Hour
	}
	if c.Grace < 0 {
		c.Grace = 0
	}
	if c.OrphanInterval == 0 {
		c.OrphanInterval = 24 * time.Hour
	}
	if c.OrphanMinAge <= 0 {
		c.OrphanMinAge = 24 * time.Hour
	}
	if c.Actor == "" {
		c.Actor = "reaper"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Hook == nil {
		c.Hook = func(context.Context, Point, *Object) {}
	}
	return c, nil
}

// Report counts what one pass did.
type Report struct {
	// Expired counts packages that expired.
	Expired int
	// Marked counts objects marked for deletion.
	Marked int
	// Unmarked counts marked objects the sweep found referenced again.
	Unmarked int
	// Deleted counts objects deleted (object.deleted appended);
	// BytesFreed sums their sizes.
	Deleted    int
	BytesFreed int64
	// Adopted counts files without a row whose content is referenced; they
	// got a live row.
	Adopted int
	// Orphans counts files no row or reference knows; Quarantined those
	// moved to quarantine.
	Orphans     int
	Quarantined int
	// Abandoned counts leftovers of crashed writes removed
	// (Store.CleanAbandoned).
	Abandoned int
	// OrphanScan is true when the pass scanned the stores.
	OrphanScan bool
}

// Reaper is the retention worker. RunOnce runs one pass; Run loops. A
// Reaper must be the only active one (see the package documentation).
type Reaper struct {
	cfg      Config
	log      zerolog.Logger
	lastScan time.Time
}

// New returns a reaper; nothing runs until Run or RunOnce.
func New(cfg Config) (*Reaper, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Reaper{cfg: cfg, log: cfg.Logger.With().Str("service", "reaper").Logger()}, nil
}

// Run runs a pass every Interval (plus jitter) until ctx is done, then
// returns nil. A failed pass is logged and retried at the next interval:
// every phase is idempotent and resumes where the last one stopped.
func (r *Reaper) Run(ctx context.Context) error {
	r.log.Info().Dur("interval", r.cfg.Interval).Dur("grace", r.cfg.Grace).Int("batch_size", r.cfg.BatchSize).Msg("reaper running")
	for {
		if _, err := r.RunOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Error().Err(err).Msg("reaper pass failed; retrying at the next interval")
		}
		wait := r.cfg.Interval + rand.N(r.cfg.IntervalJitter+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// RunOnce runs one pass: expire, mark, sweep, and the orphan scan when it
// is due (always on the first pass of a Reaper with stores).
func (r *Reaper) RunOnce(ctx context.Context) (Report, error) {
	var rep Report
	defer func() { r.cfg.Metrics.pass(rep) }()
	start := time.Now()
	if err := r.expire(ctx, &rep); err != nil {
		return rep, fmt.Errorf("reaper: expire: %w", err)
	}
	r.cfg.Hook(ctx, PointExpired, nil)
	if err := r.mark(ctx, &rep); err != nil {
		return rep, fmt.Errorf("reaper: mark: %w", err)
	}
	r.cfg.Hook(ctx, PointMarked, nil)
	if err := r.sweep(ctx, &rep); err != nil {
		return rep, fmt.Errorf("reaper: sweep: %w", err)
	}
	r.cfg.Hook(ctx, PointSwept, nil)
	now := r.cfg.Now()
	if len(r.cfg.Stores) > 0 && r.cfg.OrphanInterval > 0 && (r.lastScan.IsZero() || now.Sub(r.lastScan) >= r.cfg.OrphanInterval) {
		rep.OrphanScan = true
		if err := r.orphans(ctx, &rep, false, nil); err != nil {
			return rep, fmt.Errorf("reaper: orphan scan: %w", err)
		}
		r.lastScan = now
		r.cfg.Hook(ctx, PointOrphansDone, nil)
	}
	ev := r.log.Info()
	if rep == (Report{}) {
		ev = r.log.Debug()
	}
	ev.Int("expired", rep.Expired).Int("marked", rep.Marked).Int("unmarked", rep.Unmarked).
		Int("deleted", rep.Deleted).Int64("bytes_freed", rep.BytesFreed).Int("adopted", rep.Adopted).
		Int("orphans", rep.Orphans).Int("quarantined", rep.Quarantined).Int("abandoned", rep.Abandoned).
		Dur("took", time.Since(start)).Msg("reaper pass done")
	return rep, nil
}

// pause waits up to BatchJitter between two batches.
func (r *Reaper) pause(ctx context.Context) error {
	if r.cfg.BatchJitter <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(rand.N(r.cfg.BatchJitter + 1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// lockedTx runs fn in a transaction that holds the package-state lock.
func (r *Reaper) lockedTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pkgstate.InTx(ctx, r.cfg.Pool, fn)
}

func (r *Reaper) expire(ctx context.Context, rep *Report) error {
	for {
		now := r.cfg.Now().UTC()
		n := 0
		err := r.lockedTx(ctx, func(tx pgx.Tx) error {
			ds, err := pkgstate.LockDue(ctx, tx, now, r.cfg.BatchSize)
			if err != nil {
				return err
			}
			n = len(ds)
			if n == 0 {
				return nil
			}
			batches := make([]events.Batch, len(ds))
			names := make([]string, len(ds))
			for i, d := range ds {
				names[i] = d.Name
				batches[i] = events.Batch{CommandID: "reaper-expire:" + d.Name, Events: []events.Draft{{
					SubjectKind: events.SubjectPackage, SubjectID: d.Name, Actor: r.cfg.Actor,
					Payload: events.RetentionExpiredV1{Package: d.Name, Class: d.Class, RetainUntil: d.RetainUntil},
				}}}
			}
			if _, err := r.cfg.Log.AppendTx(ctx, tx, batches...); err != nil {
				return err
			}
			if err := pkgstate.Expire(ctx, tx, names, now); err != nil {
				return err
			}
			r.cfg.Hook(ctx, PointExpireBeforeCommit, nil)
			for _, d := range ds {
				r.log.Info().Str("package", d.Name).Str("class", d.Class).Time("retain_until", d.RetainUntil).Msg("package expired")
			}
			return nil
		})
		if err != nil {
			return err
		}
		rep.Expired += n
		if n < r.cfg.BatchSize {
			return nil
		}
		if err := r.pause(ctx); err != nil {
			return err
		}
	}
}

// mark walks gc_objects in key order, BatchSize rows per transaction
// (so the ingest lock is held for a bounded amount of work), and marks the
// live rows of each chunk that no live package references.
func (r *Reaper) mark(ctx context.Context, rep *Report) error {
	var after pkgstate.ObjectKey
	for {
		now := r.cfg.Now().UTC()
		var chunk, marked int
		err := r.lockedTx(ctx, func(tx pgx.Tx) error {
			keys, err := pkgstate.ObjectsAfter(ctx, tx, after, r.cfg.BatchSize)
			if err != nil {
				return err
			}
			chunk = len(keys)
			if chunk == 0 {
				return nil
			}
			after = keys[chunk-1]
			ms, err := pkgstate.MarkUnreferenced(ctx, tx, keys, now)
			if err != nil {
				return err
			}
			marked = len(ms)
			for _, m := range ms {
				r.log.Debug().Str("address", m.Key.Address).Str("backend", m.Key.Backend).Int64("size", m.Size).Msg("object marked")
			}
			r.cfg.Hook(ctx, PointMarkBeforeCommit, nil)
			return nil
		})
		if err != nil {
			return err
		}
		rep.Marked += marked
		if chunk < r.cfg.BatchSize {
			return nil
		}
		if err := r.pause(ctx); err != nil {
			return err
		}
	}
}

func (r *Reaper) sweep(ctx context.Context, rep *Report) error {
	// Rows that stay marked after their re-check cannot exist (a failed
	// delete returns an error), so the loop ends; after stays a guard.
	var after pkgstate.Marked
	for {
		cutoff := r.cfg.Now().UTC().Add(-r.cfg.Grace)
		ms, err := pkgstate.MarkedBefore(ctx, r.cfg.Pool, cutoff, after, r.cfg.BatchSize)
		if err != nil {
			return err
		}
		objs := make([]Object, len(ms))
		for i, m := range ms {
			a, err := digest.Parse(m.Key.Address)
			if err != nil {
				return fmt.Errorf("the package state holds an invalid address %q: %w", m.Key.Address, err)
			}
			objs[i] = Object{Address: a, BackendID: m.Key.Backend, Size: m.Size, MarkedAt: m.MarkedAt}
		}
		for i := range objs {
			if err := r.sweepOne(ctx, &objs[i], rep); err != nil {
				return fmt.Errorf("%s on %q: %w", objs[i].Address, objs[i].BackendID, err)
			}
		}
		if len(objs) < r.cfg.BatchSize {
			return nil
		}
		after = ms[len(ms)-1]
		if err := r.pause(ctx); err != nil {
			return err
		}
	}
}

// deleteCommandID names the deletion of one marking of an object: a sweep
// redone after a crash appends its event once; a later marking (the
// content came back and expired again) is another deletion.
func deleteCommandID(o Object) string {
	return fmt.Sprintf("reaper-delete:%s@%s:%d", o.Address, o.BackendID, o.MarkedAt.UnixMicro())
}

func (r *Reaper) sweepOne(ctx context.Context, o *Object, rep *Report) error {
	var deleted, unmarked bool
	r.cfg.Hook(ctx, PointBeforeRecheck, o)
	err := r.lockedTx(ctx, func(tx pgx.Tx) error {
		key := pkgstate.ObjectKey{Address: o.Address.String(), Backend: o.BackendID}
		rc, err := pkgstate.LockObject(ctx, tx, key)
		if errors.Is(err, pkgstate.ErrNotFound) {
			return nil // deleted meanwhile (by an earlier pass)
		}
		if err != nil {
			return err
		}
		if rc.State != pkgstate.ObjectMarked || rc.MarkedAt == nil || !rc.MarkedAt.Equal(o.MarkedAt) {
			return nil // an ingest took the row (and maybe it was marked again)
		}
		if rc.Referenced {
			unmarked = true
			return pkgstate.Unmark(ctx, tx, key, r.cfg.Now().UTC())
		}
		size := rc.Size
		o.Size = size
		r.cfg.Hook(ctx, PointBeforeDelete, o)
		existed, err := r.cfg.DataPlane.Delete(ctx, o.BackendID, o.Address)
		if err != nil {
			return err
		}
		r.cfg.Hook(ctx, PointAfterDelete, o)
		reason := "no live package references the content (every referencing package expired, or none references it)"
		if !existed {
			reason += "; the bytes were already gone"
		}
		if _, err := r.cfg.Log.AppendTx(ctx, tx, events.Batch{CommandID: deleteCommandID(*o), Events: []events.Draft{{
			SubjectKind: events.SubjectObject, SubjectID: o.Address.String(), Actor: r.cfg.Actor,
			Payload: events.ObjectDeletedV1{Address: o.Address, BackendID: o.BackendID, Size: size, Reason: reason},
		}}}); err != nil {
			return err
		}
		if err := pkgstate.Forget(ctx, tx, key); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case deleted:
		rep.Deleted++
		rep.BytesFreed += o.Size
		r.log.Info().Str("address", o.Address.String()).Str("backend", o.BackendID).Int64("size", o.Size).Msg("object deleted")
		r.cfg.Hook(ctx, PointDeleted, o)
	case unmarked:
		rep.Unmarked++
		r.log.Info().Str("address", o.Address.String()).Str("backend", o.BackendID).Msg("marked object is referenced again; kept")
	}
	return nil
}
