// Package pgtest gives each test its own PostgreSQL database: created with a
// unique name on the server named by ARTIFACTSTORE_TEST_DATABASE_URL, migrated
// (or left empty), and dropped when the test ends. Tests that use it can run
// in parallel.
//
// When the server does not answer, the test fails with the command that
// starts the local server; nothing is skipped and nothing else is tried.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/internal/dbmigrate"
)

// EnvURL names the environment variable with the URL of a database on the
// test server; the user must be allowed to create databases.
const EnvURL = "ARTIFACTSTORE_TEST_DATABASE_URL"

// DefaultURL is used when EnvURL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// startHint tells how to start the PostgreSQL of the development machine.
const startHint = "start PostgreSQL with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` " +
	"(or point " + EnvURL + " at a server where the user may create databases)"

// maxConns is the pool size of a test database: tests hold transactions open
// on purpose and must not starve the pool.
const maxConns = 24

// NewDB creates a fresh database with every migration applied and returns a
// pool on it and its URL. The pool is closed and the database dropped when
// the test ends.
func NewDB(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	pool, dbURL := NewEmptyDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := dbmigrate.Up(ctx, dbURL); err != nil {
		t.Fatalf("pgtest: migrate test database: %v", err)
	}
	return pool, dbURL
}

// NewEmptyDB creates a fresh database without any migration, for tests of
// the migrations themselves. Cleanup as for NewDB.
func NewEmptyDB(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	adminURL := os.Getenv(EnvURL)
	if adminURL == "" {
		adminURL = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("pgtest: PostgreSQL at %s does not answer: %v\n%s", redact(adminURL), err, startHint)
	}
	defer func() { _ = admin.Close(context.Background()) }()

	name := dbName(t.Name())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() { dropDB(t, adminURL, name) })

	dbURL, err := withDatabase(adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", redact(dbURL), err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool on %s: %v", redact(dbURL), err)
	}
	t.Cleanup(pool.Close)
	return pool, dbURL
}

func dropDB(t testing.TB, adminURL, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
		return
	}
	defer func() { _ = admin.Close(context.Background()) }()
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
	}
}

// dbName derives a database name from the test name, unique by a random
// suffix and within PostgreSQL's 63-byte identifier limit.
func dbName(testName string) string {
	var b strings.Builder
	b.WriteString("ast_")
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 44 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	b.WriteByte('_')
	b.WriteString(hex.EncodeToString(suffix[:]))
	return b.String()
}

func withDatabase(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<database URL>"
	}
	return u.Redacted()
}
