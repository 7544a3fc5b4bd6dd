package reaper

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// PlannedPackage is a package a pass would expire now.
type PlannedPackage struct {
	Name        string
	Class       string
	RetainUntil time.Time
}

// PlannedObject is an object whose bytes would be freed: nothing live
// references it once the planned packages expired.
type PlannedObject struct {
	Object
	// Marked is true when the object is already marked (MarkedAt is set).
	Marked bool
	// DeletableAt is when the sweep may delete it: the mark time (now for
	// an object not marked yet) plus the grace period.
	DeletableAt time.Time
}

// Plan is what a pass would do at Now, as `artifactstore reap --dry-run`
// prints it. Its lists hold everything that would be reaped, so its size
// grows with that.
type Plan struct {
	Now      time.Time
	Packages []PlannedPackage
	Objects  []PlannedObject
	// Orphans are the files the orphan scan would quarantine (only when
	// Plan was asked to scan).
	Orphans []Orphan
	// BytesFreed sums the sizes of Objects.
	BytesFreed int64
}

// Plan reports what a pass would expire and which bytes it would free,
// reading one consistent snapshot and writing nothing. With scanOrphans
// it also walks the stores and lists the orphans it would quarantine.
func (r *Reaper) Plan(ctx context.Context, scanOrphans bool) (Plan, error) {
	p := Plan{Now: r.cfg.Now().UTC()}
	err := pgx.BeginTxFunc(ctx, r.cfg.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		due, err := pkgstate.DueAt(ctx, tx, p.Now)
		if err != nil {
			return err
		}
		for _, d := range due {
			p.Packages = append(p.Packages, PlannedPackage{Name: d.Name, Class: d.Class, RetainUntil: d.RetainUntil})
		}
		objs, err := pkgstate.UnreferencedAfterDue(ctx, tx, p.Now)
		if err != nil {
			return err
		}
		for _, u := range objs {
			po := PlannedObject{Object: Object{BackendID: u.Key.Backend, Size: u.Size}}
			if po.Address, err = digest.Parse(u.Key.Address); err != nil {
				return fmt.Errorf("the package state holds an invalid address %q: %w", u.Key.Address, err)
			}
			from := p.Now
			if u.MarkedAt != nil {
				po.Marked, po.MarkedAt, from = true, u.MarkedAt.UTC(), u.MarkedAt.UTC()
			}
			po.DeletableAt = from.Add(r.cfg.Grace)
			p.Objects = append(p.Objects, po)
			p.BytesFreed += po.Size
		}
		return nil
	})
	if err != nil {
		return p, fmt.Errorf("reaper: plan: %w", err)
	}
	if scanOrphans {
		var rep Report
		if err := r.orphans(ctx, &rep, true, func(o Orphan) { p.Orphans = append(p.Orphans, o) }); err != nil {
			return p, fmt.Errorf("reaper: plan: orphan scan: %w", err)
		}
	}
	return p, nil
}
