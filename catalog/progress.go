package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Checkpoint returns the last sequence the projector name applied to the
// tables (projector_checkpoints), 0 if it never ran.
func (c *Catalog) Checkpoint(ctx context.Context, projector string) (int64, error) {
	var cp int64
	err := c.db.QueryRow(ctx, `SELECT coalesce((SELECT sequence FROM projector_checkpoints WHERE projector = $1), 0)`, projector).Scan(&cp)
	if err != nil {
		return 0, fmt.Errorf("catalog: read the checkpoint of projector %q: %w", projector, err)
	}
	return cp, nil
}

// Stop is why a projector stopped on the log.
type Stop struct {
	At      time.Time
	Reason  string
	Message string
}

// ProjectorStop returns why the projector name stopped, or nil while it
// is not stopped.
func (c *Catalog) ProjectorStop(ctx context.Context, projector string) (*Stop, error) {
	var st Stop
	err := c.db.QueryRow(ctx, `SELECT stopped_at, stop_reason, coalesce(stop_message, '') FROM projector_checkpoints
		WHERE projector = $1 AND stop_reason IS NOT NULL`, projector).Scan(&st.At, &st.Reason, &st.Message)
	switch {
	case err == nil:
		return &st, nil
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	default:
		return nil, fmt.Errorf("catalog: read the stop of projector %q (has 'artifactstore migrate up' run?): %w", projector, err)
	}
}
