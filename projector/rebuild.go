package projector

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

const rebuildSuffix = "_rebuild"

// Rebuild builds fresh projection tables from sequence 0 beside the live
// ones (the *_rebuild tables, with their own checkpoint "<name>:rebuild"),
// then swaps them in with one transaction: readers see either the old
// tables or the complete new ones, never a half-built state. The live
// projector may keep running: the swap locks its checkpoint row, applies
// the last events to the new tables in the same transaction, and hands the
// new tables over at the same sequence.
//
// A rebuild that fails or is interrupted leaves the live tables untouched;
// the next one starts over. Only one rebuild of a name runs at a time
// (ErrRebuildRunning). The swap drops the old tables without CASCADE: a
// foreign key or view that points at a projection table makes it fail, on
// purpose. Grants on the projection tables are not copied.
func (p *Projector) Rebuild(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("rebuild: connect: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var ok bool
	// One lock for every name: all names share the *_rebuild tables.
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended('artifactstore.projector.rebuild', 0))`).Scan(&ok); err != nil {
		return fmt.Errorf("rebuild: take the rebuild lock: %w", err)
	}
	if !ok {
		return fmt.Errorf("rebuild: %w; wait for it to finish", ErrRebuildRunning)
	}
	rt := liveTables.suffixed(rebuildSuffix)
	cp := p.cfg.Name + ":rebuild"
	if err := p.prepareRebuild(ctx, rt, cp); err != nil {
		return err
	}
	p.lg.Info().Msg("rebuild: projecting from sequence 0 into the *_rebuild tables")
	n, err := p.catchUp(ctx, rt, cp)
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	p.lg.Info().Int("events", n).Msg("rebuild: built; swapping")
	if err := p.swap(ctx, rt, cp); err != nil {
		return fmt.Errorf("rebuild: swap: %w", err)
	}
	p.lg.Info().Msg("rebuild: swapped in")
	return nil
}

// prepareRebuild creates empty twins of the live tables (structure,
// defaults, constraints, indexes and storage parameters) and resets their
// checkpoint.
func (p *Projector) prepareRebuild(ctx context.Context, rt tables, cp string) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		for i, live := range liveTables.all() {
			r := pgx.Identifier{rt.all()[i]}.Sanitize()
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+r); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE `+r+` (LIKE `+pgx.Identifier{live}.Sanitize()+` INCLUDING ALL)`); err != nil {
				return err
			}
			// LIKE does not copy storage parameters (fillfactor).
			var opts []string
			if err := tx.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = $1::regclass`, live).Scan(&opts); err != nil {
				return err
			}
			if len(opts) > 0 {
				if _, err := tx.Exec(ctx, `ALTER TABLE `+r+` SET (`+strings.Join(opts, ", ")+`)`); err != nil {
					return err
				}
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM projector_checkpoints WHERE projector = $1`, cp)
		return err
	})
	if err != nil {
		return fmt.Errorf("rebuild: create the *_rebuild tables: %w", err)
	}
	return nil
}

// swap catches the rebuilt tables up to the head and renames them into
// place, all in one transaction that holds the live checkpoint row.
func (p *Projector) swap(ctx context.Context, rt tables, cp string) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO projector_checkpoints (projector) VALUES ($1) ON CONFLICT DO NOTHING`, p.cfg.Name); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM projector_checkpoints WHERE projector = $1 FOR UPDATE`, p.cfg.Name); err != nil {
			return err
		}
		for {
			n, _, _, err := p.applyInTx(ctx, tx, rt, cp, p.cfg.BatchSize, nil, nil, false)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
		}
		for i, live := range liveTables.all() {
			l, r := pgx.Identifier{live}.Sanitize(), pgx.Identifier{rt.all()[i]}.Sanitize()
			old := pgx.Identifier{live + "_old"}.Sanitize()
			for _, q := range []string{
				`ALTER TABLE ` + l + ` RENAME TO ` + old,
				`ALTER TABLE ` + r + ` RENAME TO ` + l,
				`DROP TABLE ` + old,
			} {
				if _, err := tx.Exec(ctx, q); err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
			}
			if err := renameIndexes(ctx, tx, live, rt.all()[i]); err != nil {
				return err
			}
		}
		var seq int64
		if err := tx.QueryRow(ctx, `DELETE FROM projector_checkpoints WHERE projector = $1 RETURNING sequence`, cp).Scan(&seq); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE projector_checkpoints SET sequence = $2, updated_at = now() WHERE projector = $1`, p.cfg.Name, seq); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, NotifyChannel, p.cfg.Name+":"+strconv.FormatInt(seq, 10)); err != nil {
			return err
		}
		return p.at(batchPoint{stageSwapped, p.cfg.Name, seq, seq})
	})
}

// renameIndexes gives the indexes of a swapped-in table the names the
// migrations gave the original's (LIKE named them after the *_rebuild
// table), so that a later migration can refer to them.
func renameIndexes(ctx context.Context, tx pgx.Tx, table, rebuilt string) error {
	rows, err := tx.Query(ctx, `SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1`, table)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, n := range names {
		if !strings.HasPrefix(n, rebuilt) {
			continue
		}
		want := table + strings.TrimPrefix(n, rebuilt)
		if _, err := tx.Exec(ctx, `ALTER INDEX `+pgx.Identifier{n}.Sanitize()+` RENAME TO `+pgx.Identifier{want}.Sanitize()); err != nil {
			return fmt.Errorf("rename index %s to %s: %w", n, want, err)
		}
	}
	return nil
}
