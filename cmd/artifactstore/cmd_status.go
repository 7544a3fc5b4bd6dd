package main

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/status"
)

// statusCmd prints one screen about the health of the whole pipeline.
type statusCmd struct {
	JSON          bool          `name:"json" help:"Print the report as JSON."`
	ScrubInterval time.Duration `help:"The scrub interval the coverage figure is measured against (as the verifier's --scrub-interval)." default:"168h"`
	MaxLag        int64         `help:"Projector lag, in events, above which the pipeline is reported unhealthy." default:"10000"`
}

func (c statusCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	if _, _, err := g.natsURL(); err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	src := statusSources(pool, nil, c.ScrubInterval, c.MaxLag, "")
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nc, js, err := g.natsConn(nctx, bus.RoleStatus, lg.Level(zerolog.WarnLevel))
	if err != nil {
		src.NATSErr = err
	} else {
		defer nc.Close()
		src.JS = js
	}
	r, err := status.Gather(ctx, src)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else if err := status.Render(s.out, r); err != nil {
		return err
	}
	if !r.Healthy {
		return &exitError{code: 3, err: errUnhealthy}
	}
	return nil
}

// errUnhealthy makes status exit with 3 when the pipeline needs attention,
// so scripts and probes can act on it.
var errUnhealthy = errors.New("the pipeline needs attention (see above)")

// statusSources names what status (and the status metrics) read: the
// default topology's consumers and streams, the projector and relay
// checkpoints. With a role name, the NATS part is only what that role
// checks at start, which its permissions let it read (an ingester's
// /metrics shows its own backlog); with "", everything.
func statusSources(pool *pgxpool.Pool, js jetstream.JetStream, scrubInterval time.Duration, maxLag int64, role string) status.Sources {
	top := bus.DefaultTopology()
	src := status.Sources{
		Pool: pool, JS: js, CommandsStream: top.CommandsStream, DeadLetters: top.DeadLetterStream,
		Projector: projector.DefaultName, Relay: "events", ScrubInterval: scrubInterval, MaxLag: maxLag,
	}
	if role == "" {
		for _, f := range top.Consumers() {
			src.Consumers = append(src.Consumers, f.Durable)
		}
		return src
	}
	r, _ := top.Role(role)
	src.DeadLetters = ""
	for _, it := range r.Needs {
		switch {
		case it.Kind == bus.KindConsumer && it.Stream == top.CommandsStream:
			src.Consumers = append(src.Consumers, it.Name)
		case it.Kind == bus.KindStream && it.Name == top.DeadLetterStream:
			src.DeadLetters = top.DeadLetterStream
		}
	}
	return src
}
