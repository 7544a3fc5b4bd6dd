package main

import (
	"context"
	"fmt"

	"github.com/artifactstore/artifactstore/internal/dbmigrate"
)

type migrateCmd struct {
	Up      migrateUpCmd      `cmd:"" help:"Apply every migration not yet applied (creates the database when missing). Running it twice is a no-op."`
	Down    migrateDownCmd    `cmd:"" help:"Roll back every migration: drops all artifactstore tables and their data."`
	Version migrateVersionCmd `cmd:"" help:"Print the schema version and whether a failed migration left it dirty."`
}

type migrateUpCmd struct{}

func (migrateUpCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if err := ensureDatabase(ctx, g.DatabaseURL); err != nil {
		return err
	}
	if err := dbmigrate.Up(ctx, g.DatabaseURL); err != nil {
		return err
	}
	return printVersion(ctx, g, s)
}

type migrateDownCmd struct {
	Yes bool `help:"Confirm that every table and all its data is to be dropped."`
}

func (c migrateDownCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if !c.Yes {
		return fmt.Errorf("'migrate down' drops every artifactstore table and its data; add --yes to confirm")
	}
	if err := dbmigrate.Down(ctx, g.DatabaseURL); err != nil {
		return err
	}
	_, err := fmt.Fprintln(s.out, "schema rolled back: no artifactstore tables remain")
	return err
}

type migrateVersionCmd struct{}

func (migrateVersionCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	return printVersion(ctx, g, s)
}

func printVersion(ctx context.Context, g *Globals, s *ioStreams) error {
	v, dirty, err := dbmigrate.Version(ctx, g.DatabaseURL)
	if err != nil {
		return err
	}
	if v == 0 && !dirty {
		// Migrations are numbered from 1: version 0 is golang-migrate's
		// "nil version", an empty schema, not a schema at version 0.
		_, err = fmt.Fprintln(s.out, "no migration applied (run 'artifactstore migrate up')")
		return err
	}
	state := "clean"
	if dirty {
		state = "dirty: a migration failed half-way; fix the schema by hand, then force the version with the migrate CLI"
	}
	_, err = fmt.Fprintf(s.out, "schema version %d (%s)\n", v, state)
	return err
}
