package bus

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// EmbeddedMaxPayload is the max_payload of the embedded server: the
// largest command (Topology.MaxMsgSize, 8 MiB) plus room for headers.
const EmbeddedMaxPayload = 8<<20 + 64<<10

// Embedded is an in-process nats-server with JetStream, for `artifactstore
// run` without a NATS URL.
//
// Its JetStream store uses the server's default sync_interval (2 minutes):
// JetStream acknowledges a publish before it reaches the disk. That is
// acceptable because JetStream is only the transport: a command counts as
// done when its reply says so, after the object and its events were made
// durable by artifactstore itself.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a nats-server in this process, listening on
// host:port (port -1 picks a free one), with JetStream storing under
// storeDir (created if missing). It returns once the server accepts
// connections, or fails when ctx is done first.
func StartEmbedded(ctx context.Context, storeDir, host string, port int, logger zerolog.Logger) (*Embedded, error) {
	if err := os.MkdirAll(storeDir, 0o750); err != nil {
		return nil, fmt.Errorf("bus: embedded NATS store directory %s: %w", storeDir, err)
	}
	opts := &server.Options{
		ServerName: "artifactstore-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		MaxPayload: EmbeddedMaxPayload,
		NoSigs:     true, // the process's own signal handling stops it
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: configure embedded NATS server on %s:%d with store %s: %w", host, port, storeDir, err)
	}
	srv.SetLoggerV2(serverLogger{logger.With().Str("service", "nats-server").Logger()}, false, false, false)
	srv.Start()

	ready := make(chan bool, 1)
	go func() {
		timeout := 30 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		ready <- srv.ReadyForConnections(timeout)
	}()
	var ok bool
	select {
	case ok = <-ready:
	case <-ctx.Done():
	}
	if !ok || !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded NATS server on %s:%d (store %s) did not become ready with JetStream "+
			"(is the port taken by another process, or the store directory unwritable? see the nats-server log lines): %w",
			host, port, storeDir, context.Cause(ctx))
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the URL clients connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits until it has flushed its store and
// exited. Safe to call twice.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// serverLogger sends nats-server log lines to zerolog.
type serverLogger struct{ log zerolog.Logger }

// Noticef logs at debug level: the server's notices (its start banner,
// JetStream's settings) are noise in the log of an embedding process.
func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
