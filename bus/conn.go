package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// ConnConfig says how to reach and authenticate to NATS. Empty fields are
// not used.
type ConnConfig struct {
	// URL is the server URL, or a comma-separated list of them, e.g.
	// nats://127.0.0.1:4222.
	URL string
	// CredsFile is a NATS credentials file (JWT and seed).
	CredsFile string
	// NKeySeedFile is a file holding an NKey user seed.
	NKeySeedFile string
	// User and Password authenticate with a user name and password.
	User     string
	Password string
	// TLSCAFile is a PEM file of CA certificates to verify the server.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client certificate and key for
	// mutual TLS; both or neither.
	TLSCertFile string
	TLSKeyFile  string
	// Name is the connection's name as the server shows it (e.g.
	// "artifactstore-ingest").
	Name string
}

// defaultConnectTimeout bounds the first connection when ctx has no
// deadline.
const defaultConnectTimeout = 5 * time.Second

// Connect opens a connection that reconnects forever and logs its
// disconnections, reconnections and asynchronous errors. The first
// connection must succeed within ctx's deadline (5 s without one); when no
// server answers, the error says how to start one.
func Connect(ctx context.Context, cfg ConnConfig, logger zerolog.Logger) (*nats.Conn, error) {
	if cfg.URL == "" {
		return nil, errors.New("bus: no NATS URL; set --nats-url / ARTIFACTSTORE_NATS_URL (e.g. nats://127.0.0.1:4222), or leave it empty in `artifactstore run` to start an embedded server")
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("bus: a TLS client certificate needs both its certificate and its key file; set both or neither")
	}
	log := logger.With().Str("service", "bus.conn").Str("name", cfg.Name).Logger()

	timeout := defaultConnectTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, fmt.Errorf("bus: connect to %s: %w", cfg.URL, context.DeadlineExceeded)
		}
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(timeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err == nil || nc.IsClosed() {
				return // closed on purpose
			}
			log.Warn().Err(err).Msg("NATS disconnected; reconnecting")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				log.Warn().Err(err).Msg("NATS connection closed")
				return
			}
			log.Debug().Msg("NATS connection closed")
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subscription", sub.Subject)
			}
			ev.Msg("NATS asynchronous error")
		}),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("bus: NKey seed file %s: %w", cfg.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.User != "" || cfg.Password != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}

	type result struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(cfg.URL, opts...)
		ch <- result{nc, err}
	}()
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("bus: connect to %s: %w", cfg.URL, context.Cause(ctx))
	}
	if res.err != nil {
		if errors.Is(res.err, nats.ErrNoServers) || errors.Is(res.err, nats.ErrTimeout) {
			return nil, fmt.Errorf("bus: no NATS server answers at %s: %w; start one with JetStream, e.g. "+
				"`start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server`, "+
				"or leave the NATS URL empty in `artifactstore run` to use an embedded server", cfg.URL, res.err)
		}
		if errors.Is(res.err, nats.ErrAuthorization) || errors.Is(res.err, nats.ErrAuthExpired) {
			return nil, fmt.Errorf("bus: NATS at %s refused the credentials; check the creds/nkey/user/password options: %w", cfg.URL, res.err)
		}
		return nil, fmt.Errorf("bus: connect to NATS at %s: %w", cfg.URL, res.err)
	}
	log.Debug().Str("url", res.nc.ConnectedUrlRedacted()).Int64("max_payload", res.nc.MaxPayload()).Msg("NATS connected")
	return res.nc, nil
}
