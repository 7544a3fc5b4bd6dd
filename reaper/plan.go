package reaper

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
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
		rows, err := tx.Query(ctx, dueSQL+` ORDER BY p.retain_until, p.name`, p.Now)
		if err != nil {
			return err
		}
		for rows.Next() {
			var pp PlannedPackage
			if err := rows.Scan(&pp.Name, &pp.Class, &pp.RetainUntil); err != nil {
				rows.Close()
				return err
			}
			p.Packages = append(p.Packages, pp)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		// Live after the due packages expired: not expired and not due, or
		// held.
		rows, err = tx.Query(ctx, `WITH due AS (`+dueSQL+`)
			SELECT g.content_address, g.backend_id, g.size_bytes, g.marked_at FROM gc_objects g
			WHERE NOT EXISTS (SELECT 1 FROM ingest_files f JOIN ingest_packages p ON p.name = f.package
				WHERE f.content_address = g.content_address
				  AND (p.legal_hold OR (p.expired_at IS NULL AND p.name NOT IN (SELECT name FROM due))))
			ORDER BY g.content_address, g.backend_id`, p.Now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				po       PlannedObject
				addr     string
				markedAt *time.Time
			)
			if err := rows.Scan(&addr, &po.BackendID, &po.Size, &markedAt); err != nil {
				return err
			}
			if po.Address, err = digest.Parse(addr); err != nil {
				return fmt.Errorf("gc_objects holds an invalid address %q: %w", addr, err)
			}
			from := p.Now
			if markedAt != nil {
				po.Marked, po.MarkedAt, from = true, markedAt.UTC(), markedAt.UTC()
			}
			po.DeletableAt = from.Add(r.cfg.Grace)
			p.Objects = append(p.Objects, po)
			p.BytesFreed += po.Size
		}
		return rows.Err()
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
