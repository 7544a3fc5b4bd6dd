package main

import (
	"context"
	"fmt"

	"github.com/artifactstore/artifactstore/events"
)

type auditCmd struct{}

func (auditCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	log := events.NewLog(pool, events.NewCodec())
	rep, err := log.Audit(ctx, nil)
	if err != nil {
		return err
	}
	if rep.FirstBad != 0 {
		fmt.Fprintf(s.out, "log ALTERED: %d events read; first bad event at sequence %d: %s\n", rep.Events, rep.FirstBad, rep.Reason)
		return &exitError{code: 3, err: fmt.Errorf("the event log does not match its digests from sequence %d on", rep.FirstBad)}
	}
	_, err = fmt.Fprintf(s.out, "log intact: %d events, every payload and chain digest matches\n", rep.Events)
	return err
}
