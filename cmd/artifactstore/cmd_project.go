package main

import (
	"context"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/projector"
)

// projectCmd runs the projector role, or rebuilds the projection tables.
type projectCmd struct {
	BatchSize    int           `help:"Most events applied in one transaction (1..10000)." default:"2000" placeholder:"N"`
	PollInterval time.Duration `help:"How long to wait for a notification of new events before looking at the log anyway." default:"1s"`
	Name         string        `help:"Projector name: its checkpoint and leader lock." default:"projector" hidden:""`
	Rebuild      bool          `help:"Build fresh tables from sequence 0 beside the live ones, swap them in atomically, and exit. A running projector may keep running."`
	Once         bool          `help:"Catch up with the head of the log and exit, without leader election (for scripts)."`
	Status       bool          `help:"Print the checkpoint, the head of the log and the lag, and exit."`
	opsFlags     `embed:""`
}

func (c projectCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.BatchSize < 1 || c.BatchSize > events.MaxReadLimit {
		return fmt.Errorf("--batch-size %d is out of range; use 1..%d", c.BatchSize, events.MaxReadLimit)
	}
	if c.PollInterval <= 0 {
		return fmt.Errorf("--poll-interval %s must be positive, e.g. 1s", c.PollInterval)
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	codec := events.NewCodec()
	p := projector.New(pool, events.NewLog(pool, codec), codec, projector.Config{
		BatchSize: c.BatchSize, PollInterval: c.PollInterval, Logger: &lg, Name: c.Name,
	})
	switch {
	case c.Status:
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(s.out, "checkpoint %d\nhead %d\nlag %d events, %.3fs\n", st.Checkpoint, st.Head, st.Head-st.Checkpoint, st.LagSeconds)
		return err
	case c.Rebuild:
		if err := p.Rebuild(ctx); err != nil {
			return err
		}
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(s.out, "rebuilt and swapped in at sequence %d\n", st.Checkpoint)
		return err
	case c.Once:
		n, err := p.CatchUp(ctx)
		if err != nil {
			return projectErr(err)
		}
		_, err = fmt.Fprintf(s.out, "applied %d events\n", n)
		return err
	default:
		_, opsSvc := g.opsServer(c.opsFlags, lg, pool, nil, nil, nil, "")
		return projectErr(runServices(ctx, lg, 30*time.Second, service.NewGroup(
			service.Named{Name: "ops server", Service: opsSvc},
			service.Named{Name: "projector", Service: service.NewLoop("projector", p.Run)},
		)))
	}
}

// projectErr gives the stops that need a person a distinct exit status (3),
// as 'audit' does for an altered log.
func projectErr(err error) error {
	if projector.StopReason(err) != "" {
		return &exitError{code: 3, err: err}
	}
	return err
}
