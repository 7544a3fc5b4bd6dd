package pkgstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Package is what an ingest or a seal decides against: the state of one
// package. The decisions of a group change it as they go (a seal sets
// Sealed), so that later decisions of the same group see them.
type Package struct {
	Class    string
	Metadata map[string]string
	// Sealed is set once the package is sealed, by the event at
	// SealedSeq.
	Sealed    bool
	SealedSeq int64
	// Expired is true once the reaper expired the package: its bytes are
	// on their way out, so nothing may be added to it.
	Expired bool
}

// FileKey names a path of a package.
type FileKey struct{ Package, Path string }

// QueuePackages queues on b the read of the packages named; once the
// batch ran, into holds those that exist.
func QueuePackages(b *pgx.Batch, names []string, into map[string]*Package) {
	b.Queue(`SELECT name, retention_class, metadata, sealed_seq, expired_at IS NOT NULL FROM ingest_packages WHERE name = ANY($1)`, names).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				name      string
				md        []byte
				sealedSeq *int64
				p         Package
			)
			if err := rows.Scan(&name, &p.Class, &md, &sealedSeq, &p.Expired); err != nil {
				return fmt.Errorf("read package state: %w", err)
			}
			if err := json.Unmarshal(md, &p.Metadata); err != nil {
				return fmt.Errorf("read package %q metadata: %w", name, err)
			}
			if sealedSeq != nil {
				p.Sealed, p.SealedSeq = true, *sealedSeq
			}
			into[name] = &p
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read package state: %w", err)
		}
		return nil
	})
}

// QueueFiles queues on b the read of the files named; once the batch ran,
// into holds the content address of each that exists.
func QueueFiles(b *pgx.Batch, keys []FileKey, into map[FileKey]string) {
	pkgs, paths := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		pkgs[i], paths[i] = k.Package, k.Path
	}
	sql, args := byKeys(`SELECT package, path, content_address FROM ingest_files WHERE package = $1 AND path = $2`,
		`SELECT u.p, u.pa, f.content_address FROM unnest($1::text[], $2::text[]) AS u(p, pa)
		CROSS JOIN LATERAL (SELECT content_address FROM ingest_files WHERE package = u.p AND path = u.pa OFFSET 0) f`,
		pkgs, paths)
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var k FileKey
			var addr string
			if err := rows.Scan(&k.Package, &k.Path, &addr); err != nil {
				return fmt.Errorf("read file state: %w", err)
			}
			into[k] = addr
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read file state: %w", err)
		}
		return nil
	})
}

// NewPackage is a package an ingest creates.
type NewPackage struct {
	Name, Class string
	Metadata    map[string]string
	// RetainUntil is the class's RetainUntil from the creation; nil: never.
	RetainUntil *time.Time
	// Seq is the sequence of the creating command's first event.
	Seq int64
}

// QueueCreate queues on b the row of a new package.
func QueueCreate(b *pgx.Batch, p NewPackage) error {
	md := p.Metadata
	if md == nil {
		md = map[string]string{}
	}
	mdJSON, err := json.Marshal(md)
	if err != nil {
		return fmt.Errorf("encode the metadata of package %q: %w", p.Name, err)
	}
	b.Queue(`INSERT INTO ingest_packages (name, retention_class, metadata, retain_until, created_seq) VALUES ($1, $2, $3, $4, $5)`,
		p.Name, p.Class, mdJSON, p.RetainUntil, p.Seq)
	return nil
}

// QueueSetFile queues on b that path k names addr from the event at seq
// on (added, or replaced in an open package).
func QueueSetFile(b *pgx.Batch, k FileKey, addr string, seq int64) {
	b.Queue(`INSERT INTO ingest_files (package, path, content_address, added_seq) VALUES ($1, $2, $3, $4)
		ON CONFLICT (package, path) DO UPDATE SET content_address = excluded.content_address, added_seq = excluded.added_seq`,
		k.Package, k.Path, addr, seq)
}

// QueueSeal queues on b the seal of package name by the event at seq.
func QueueSeal(b *pgx.Batch, name string, at time.Time, seq int64) {
	b.Queue(`UPDATE ingest_packages SET sealed_at = $2, sealed_seq = $3 WHERE name = $1`, name, at, seq)
}

// Retention is the retention state of one package, as the retention
// commands decide against it.
type Retention struct {
	Class       string
	RetainUntil *time.Time // nil: never expires
	Hold        bool
	HoldReason  *string
	ExpiredAt   *time.Time
	// CreatedAt is when the package was created (its first event), from
	// which its class's retain-until counts.
	CreatedAt time.Time
}

// LockRetention reads the retention state of package name in tx and locks
// its row until tx ends; ErrNotFound when there is no such package.
func LockRetention(ctx context.Context, tx pgx.Tx, name string) (Retention, error) {
	var r Retention
	err := tx.QueryRow(ctx, `SELECT p.retention_class, p.retain_until, p.legal_hold, p.legal_hold_reason, p.expired_at, e.occurred_at
		FROM ingest_packages p JOIN events e ON e.sequence = p.created_seq
		WHERE p.name = $1 FOR UPDATE OF p`, name).
		Scan(&r.Class, &r.RetainUntil, &r.Hold, &r.HoldReason, &r.ExpiredAt, &r.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("package %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("read package state: %w", err)
	}
	return r, nil
}

// SetHold sets the legal hold of package name, for reason.
func SetHold(ctx context.Context, tx pgx.Tx, name, reason string) error {
	_, err := tx.Exec(ctx, `UPDATE ingest_packages SET legal_hold = true, legal_hold_reason = $2 WHERE name = $1`, name, reason)
	return err
}

// ReleaseHold releases the legal hold of package name.
func ReleaseHold(ctx context.Context, tx pgx.Tx, name string) error {
	_, err := tx.Exec(ctx, `UPDATE ingest_packages SET legal_hold = false, legal_hold_reason = NULL WHERE name = $1`, name)
	return err
}

// SetRetention moves package name to class, retained until until (nil:
// never expires).
func SetRetention(ctx context.Context, tx pgx.Tx, name, class string, until *time.Time) error {
	_, err := tx.Exec(ctx, `UPDATE ingest_packages SET retention_class = $2, retain_until = $3 WHERE name = $1`, name, class, until)
	return err
}
