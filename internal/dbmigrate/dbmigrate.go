// Package dbmigrate applies the embedded schema migrations (package
// migrations) to a PostgreSQL database with golang-migrate. It is what
// `artifactstore migrate up|down|version` runs.
//
// Concurrent runs against one database are safe: golang-migrate takes a
// PostgreSQL advisory lock for the duration of a run.
package dbmigrate

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // registers the pgx5:// driver
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/migrations"
)

// ErrBadURL means the database URL cannot be used.
var ErrBadURL = errors.New("invalid database URL")

// ErrUnreachable means PostgreSQL did not answer at the database URL.
var ErrUnreachable = errors.New("database unreachable")

// ErrDirty means a previous migration failed half-way and the schema
// version is marked dirty; nothing runs until someone repairs the schema
// and calls Force.
var ErrDirty = errors.New("database schema is dirty")

// Up applies every migration not yet applied. Applying when the schema is
// already current is a no-op.
func Up(ctx context.Context, databaseURL string) error {
	return run(ctx, databaseURL, "up", (*migrate.Migrate).Up)
}

// Down reverts every applied migration: it drops every table of the schema,
// the event log included. Reverting an empty schema is a no-op.
func Down(ctx context.Context, databaseURL string) error {
	return run(ctx, databaseURL, "down", (*migrate.Migrate).Down)
}

// Force marks the schema as being at version (clean) without running any
// migration; version -1 means no migration applied. It is the way out of a
// dirty state after the schema was repaired by hand.
func Force(ctx context.Context, databaseURL string, version int) error {
	return run(ctx, databaseURL, "force", func(m *migrate.Migrate) error { return m.Force(version) })
}

// Version reports the applied schema version (0 when none) and whether a
// migration failed half-way (dirty).
func Version(ctx context.Context, databaseURL string) (version uint, dirty bool, err error) {
	err = run(ctx, databaseURL, "version", func(m *migrate.Migrate) error {
		v, d, err := m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			return nil
		}
		version, dirty = v, d
		return err
	})
	return version, dirty, err
}

// run opens a migrator on databaseURL, runs op and translates its errors.
// golang-migrate takes no context: a cancelled ctx asks it to stop after the
// migration in flight (its GracefulStop), and run waits for that.
func run(ctx context.Context, databaseURL, name string, op func(*migrate.Migrate) error) error {
	pgURL, driverURL, err := driverURL(databaseURL)
	if err != nil {
		return err
	}
	if err := ping(ctx, pgURL); err != nil {
		return err
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return fmt.Errorf("migrate %s: read embedded migrations: %w", name, err)
	}
	m, err := migrate.NewWithSourceInstance("iofs", src, driverURL)
	if err != nil {
		return fmt.Errorf("migrate %s: open %s: %w", name, redact(pgURL), err)
	}
	done := make(chan error, 1)
	go func() { done <- op(m) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		m.GracefulStop <- true
		err = <-done
		if err == nil {
			err = ctx.Err()
		}
	}
	srcErr, dbErr := m.Close()
	if err == nil {
		err = errors.Join(srcErr, dbErr)
	}
	return translate(name, redact(pgURL), err)
}

func translate(name, where string, err error) error {
	var dirty migrate.ErrDirty
	switch {
	case err == nil, errors.Is(err, migrate.ErrNoChange):
		return nil
	case errors.As(err, &dirty):
		return fmt.Errorf("migrate %s on %s: %w at version %d: a migration failed half-way; "+
			"repair the schema by hand, then mark the version clean with "+
			"`artifactstore migrate force <version>` (or `migrate -database <url> force <version>`)",
			name, where, ErrDirty, dirty.Version)
	case errors.Is(err, migrate.ErrLockTimeout), errors.Is(err, migrate.ErrLocked):
		return fmt.Errorf("migrate %s on %s: %w: another migration holds the schema lock; wait for it to finish and retry", name, where, err)
	default:
		return fmt.Errorf("migrate %s on %s: %w", name, where, err)
	}
}

// ping checks that PostgreSQL answers, so that an unreachable server gives
// a clear error instead of golang-migrate's generic one.
func ping(ctx context.Context, pgURL string) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %s: %v; check that PostgreSQL is running and that the database URL "+
			"(--database-url / ARTIFACTSTORE_DATABASE_URL) names the right host, port, user and database",
			ErrUnreachable, redact(pgURL), err)
	}
	return conn.Close(ctx)
}

// driverURL accepts a postgres:// or postgresql:// URL (the form users and
// libpq know) and returns it with the pgx5:// scheme that golang-migrate's
// pgx/v5 driver is registered under.
func driverURL(databaseURL string) (pgURL, migrateURL string, err error) {
	u, err := url.Parse(databaseURL)
	if err != nil || u.Host == "" && u.Scheme == "" {
		return "", "", fmt.Errorf("%w: want postgres://user@host:port/database, got a string that is not a URL", ErrBadURL)
	}
	switch strings.ToLower(u.Scheme) {
	case "postgres", "postgresql", "pgx5":
	default:
		return "", "", fmt.Errorf("%w: scheme %q; want postgres://user@host:port/database", ErrBadURL, u.Scheme)
	}
	u.Scheme = "postgres"
	pgURL = u.String()
	u.Scheme = "pgx5"
	return pgURL, u.String(), nil
}

// redact hides a password in a URL meant for an error message.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<database URL>"
	}
	return u.Redacted()
}
