package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/ingest"
)

// schemaCmd manages the JSON Schemas that package metadata must satisfy.
type schemaCmd struct {
	Set  schemaSetCmd  `cmd:"" help:"Set the metadata schema of a retention class (or of every class), replacing the one it had."`
	List schemaListCmd `cmd:"" help:"List the metadata schemas."`
}

type schemaSetCmd struct {
	Class string `short:"c" help:"Retention class the schema applies to; leave it out for a schema every package must satisfy." placeholder:"CLASS"`
	File  string `arg:"" help:"JSON Schema file ('-' reads standard input). An empty object {} accepts everything." type:"path"`
}

func (c schemaSetCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	var (
		doc []byte
		err error
	)
	if c.File == "-" {
		doc, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		doc, err = os.ReadFile(c.File)
	}
	if err != nil {
		return err
	}
	if _, err := ingest.CompileSchema(0, doc); err != nil {
		return fmt.Errorf("%s is not a usable JSON Schema: %w", c.File, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, doc); err != nil {
		return fmt.Errorf("%s is not JSON: %w", c.File, err)
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	var class *string
	if c.Class != "" {
		class = &c.Class
		var exists bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM retention_classes WHERE name = $1)`, c.Class).Scan(&exists); err != nil {
			return fmt.Errorf("look up retention class %q: %w", c.Class, err)
		}
		if !exists {
			return fmt.Errorf("retention class %q does not exist; see the retention_classes table for the names", c.Class)
		}
	}
	var id int64
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM metadata_schemas WHERE retention_class IS NOT DISTINCT FROM $1`, class); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO metadata_schemas (retention_class, schema) VALUES ($1, $2::jsonb) RETURNING id`, class, compact.String()).Scan(&id)
	})
	if err != nil {
		return fmt.Errorf("store the schema: %w", err)
	}
	scope := "every package"
	if class != nil {
		scope = "packages of class " + *class
	}
	_, err = fmt.Fprintf(s.out, "schema #%d now applies to new %s (ingesters pick it up within seconds)\n", id, scope)
	return err
}

type schemaListCmd struct {
	JSON bool `name:"json" help:"Print one JSON object per schema."`
}

func (c schemaListCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, `SELECT id, retention_class, schema::text, created_at FROM metadata_schemas ORDER BY retention_class NULLS FIRST, id`)
	if err != nil {
		return fmt.Errorf("read metadata schemas (run 'artifactstore migrate up'?): %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			id      int64
			class   *string
			doc     string
			created time.Time
		)
		if err := rows.Scan(&id, &class, &doc, &created); err != nil {
			return err
		}
		n++
		scope := "(every class)"
		if class != nil {
			scope = *class
		}
		if c.JSON {
			b, _ := json.Marshal(map[string]any{"id": id, "retention_class": class, "schema": json.RawMessage(doc), "created_at": created})
			fmt.Fprintln(s.out, string(b))
			continue
		}
		fmt.Fprintf(s.out, "#%d  %s  %s  %s\n", id, scope, created.UTC().Format(time.RFC3339), doc)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 && !c.JSON {
		_, err := fmt.Fprintln(s.out, "no metadata schemas: package metadata is not constrained")
		return err
	}
	return nil
}
