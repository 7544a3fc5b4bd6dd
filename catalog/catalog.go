// Package catalog is the read model: it owns the vocabulary of the
// projection tables (location states, package states, retrieval tiers) and
// every query that reads them — artifact_packages, artifact_files,
// storage_locations, retention_state and projector_checkpoints.
//
// The projector (package projector) is the only writer of those tables; it
// folds the event log into them in batches and keeps its own read-for-write
// queries inside its transactions. Everybody else reads through a
// [Catalog]: the read API, explain, status, the verifier (worker, on-demand
// client, scrub scheduler) and the reaper's orphan check. Each of them
// declares the small interface it needs; *Catalog implements them all.
//
// A read that finds no row fails with an error matching [ErrNotFound],
// never with pgx's: the translation happens here, once. The queries read
// the live tables by name, which stay valid across the projector's
// rebuild-and-swap (the rebuilt tables take the live names).
package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
)

// ErrNotFound means that the row asked for does not exist (or is not
// projected yet).
var ErrNotFound = errors.New("catalog: not found")

// DB is what a Catalog reads through: a *pgxpool.Pool, a *pgxpool.Conn, a
// *pgx.Conn or a pgx.Tx (to read in a caller's transaction).
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Catalog reads the projection tables of one database. It holds no state
// of its own and is safe for concurrent use when its DB is (a pool is; a
// transaction is not).
type Catalog struct {
	db DB
}

// New returns a Catalog reading through db.
func New(db DB) *Catalog { return &Catalog{db: db} }

// noRow translates a single-row read's error: pgx.ErrNoRows becomes
// ErrNotFound (what says what was missing), anything else is wrapped with
// what was being read.
func noRow(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	}
	return fmt.Errorf("catalog: read %s: %w", what, err)
}

// parseAddress parses a content address read from a table. The projector
// writes only parsed addresses, so a bad one means the table was edited
// by hand.
func parseAddress(s, where string) (digest.Address, error) {
	a, err := digest.Parse(s)
	if err != nil {
		return digest.Address{}, fmt.Errorf("catalog: %s holds a bad address: %w", where, err)
	}
	return a, nil
}

// digest32 copies a 32-byte digest column into d.
func digest32(d *[32]byte, b []byte, what string) error {
	if len(b) != len(d) {
		return fmt.Errorf("catalog: %s holds a digest of %d bytes, not %d", what, len(b), len(d))
	}
	copy(d[:], b)
	return nil
}
