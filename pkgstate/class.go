package pkgstate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Class is one row of retention_classes (configuration, seeded by the
// migrations and edited by `artifactstore schema`), as the retention
// decisions read it.
type Class struct {
	Name string
	// Duration is the class's default retention; invalid (NULL) for a
	// class without one.
	Duration pgtype.Interval
	// MayShorten says whether a package's retain-until may be moved
	// earlier.
	MayShorten bool
	// NeverExpires marks a class whose packages have no retain-until.
	NeverExpires bool
}

// RetainUntil is the one retain-until rule: from (a package's creation)
// plus the class's default duration, in UTC to the microsecond (what
// PostgreSQL keeps), or nil when the class never expires. A new package
// and a change of class both take it from here.
func (c Class) RetainUntil(from time.Time) *time.Time {
	if c.NeverExpires || !c.Duration.Valid {
		return nil
	}
	t := from.UTC().AddDate(0, int(c.Duration.Months), int(c.Duration.Days)).
		Add(time.Duration(c.Duration.Microseconds) * time.Microsecond).Truncate(time.Microsecond)
	return &t
}

// QueueClasses queues on b the read of the retention classes named (nil:
// every class); once the batch ran, into holds them by name.
func QueueClasses(b *pgx.Batch, names []string, into map[string]Class) {
	sql := `SELECT name, default_duration, may_shorten, never_expires FROM retention_classes`
	var args []any
	if names != nil {
		sql += ` WHERE name = ANY($1)`
		args = append(args, names)
	}
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var c Class
			if err := rows.Scan(&c.Name, &c.Duration, &c.MayShorten, &c.NeverExpires); err != nil {
				return fmt.Errorf("read retention classes: %w", err)
			}
			into[c.Name] = c
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read retention classes: %w", err)
		}
		return nil
	})
}

// LoadClasses reads the retention classes named in tx.
func LoadClasses(ctx context.Context, tx pgx.Tx, names ...string) (map[string]Class, error) {
	out := map[string]Class{}
	b := &pgx.Batch{}
	QueueClasses(b, names, out)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return out, nil
}
