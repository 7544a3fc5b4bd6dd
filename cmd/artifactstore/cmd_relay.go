package main

import (
	"context"
	"time"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/relay"
)

// relayCmd runs the events relay role: one active instance (advisory lock),
// others stand by.
type relayCmd struct {
	BatchSize     int           `help:"Events published per round." default:"256" placeholder:"N"`
	PollInterval  time.Duration `help:"How often to look for new events." default:"500ms"`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

func (c relayCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	cn, err := g.connect(ctx, bus.RoleRelay, c.topologyFlags, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	pool, js, top := cn.pool, cn.js, cn.top
	codec := events.NewCodec()
	r, err := relay.New(pool, events.NewLog(pool, codec), codec, js, relay.Config{
		Stream:       top.EventsStream,
		Subject:      func(t events.Type) string { return top.EventsSubject(string(t)) },
		BatchSize:    c.BatchSize,
		PollInterval: c.PollInterval,
		Logger:       lg,
	})
	if err != nil {
		return err
	}
	_, opsSvc := g.opsServer(c.opsFlags, lg, pool, cn.nc, js, nil, bus.RoleRelay)
	return runServices(ctx, lg, 30*time.Second, service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "events relay", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyRelay, Name: "relay", Logger: &lg}, r.Run)},
	))
}
