package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/internal/service"
)

// CommandWorker describes a worker of the commands stream: the durable
// consumer it binds, its handler and the answer of the commands the
// pipeline stops handling (see [ConsumerOptions.Answer]).
type CommandWorker struct {
	// Name prefixes the worker's errors, e.g. "verifier".
	Name string
	// JetStream and Topology are where the worker consumes: the durable
	// Durable on Topology.CommandsStream.
	JetStream jetstream.JetStream
	Topology  Topology
	Durable   string
	Handler   Handler
	// Answer is the default of Options.Answer.
	Answer func(ctx context.Context, m Message, code, reason string) error
	// Concurrency and Logger override Options' fields.
	Concurrency int
	Logger      zerolog.Logger
	// Options tunes the consume loop; its DeadLetterSubjectPrefix
	// defaults to the topology's.
	Options ConsumerOptions
}

// WorkerService runs a [CommandWorker] on its durable consumer with the
// lifecycle of package service: Start binds and returns once commands are
// pulled; Stop is the consumer's (soft until its ctx is done, then hard);
// a second Start, or one after Stop, fails. Workers (the verifier, the
// retention handler) embed it.
type WorkerService struct {
	w        CommandWorker
	state    service.State
	consumer *Consumer
}

// NewWorkerService returns the service of w; nothing runs until Start.
func NewWorkerService(w CommandWorker) *WorkerService { return &WorkerService{w: w} }

// Start binds the durable consumer and starts consuming.
func (s *WorkerService) Start(ctx context.Context) error {
	return s.state.TryStart(func() error {
		w := s.w
		if w.JetStream == nil {
			return fmt.Errorf("%s: no JetStream to consume from; set the JetStream of its config", w.Name)
		}
		opts := w.Options
		opts.Concurrency = w.Concurrency
		opts.Logger = w.Logger
		if opts.DeadLetterSubjectPrefix == "" {
			opts.DeadLetterSubjectPrefix = w.Topology.DeadLetterSubjectPrefix()
		}
		if opts.Answer == nil {
			opts.Answer = w.Answer
		}
		c, err := NewConsumer(w.JetStream, w.Topology.CommandsStream, w.Durable, w.Handler, opts)
		if err == nil {
			err = c.Start(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", w.Name, err)
		}
		s.consumer = c
		return nil
	})
}

// Stop stops consuming: in-flight commands finish until ctx is done, then
// are cancelled and redelivered later. Safe before Start and twice.
func (s *WorkerService) Stop(ctx context.Context) error {
	if !s.state.MarkStopped() {
		return nil
	}
	return s.consumer.Stop(ctx)
}
