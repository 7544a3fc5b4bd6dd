package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// serveCmd runs the read API role: stateless, any number side by side.
type serveCmd struct {
	APIToken       string        `name:"api-token" help:"Bearer token every API request must carry (prefer the environment variable or --api-token-file to keep it out of the process list)." placeholder:"TOKEN"`
	APITokenFile   string        `name:"api-token-file" help:"File holding the bearer token (surrounding whitespace is ignored)." type:"path" placeholder:"FILE"`
	InsecureNoAuth bool          `name:"insecure-no-auth" help:"Serve the API without a token on an address other hosts can reach. Without this flag, a tokenless API binds only to loopback."`
	StopTimeout    time.Duration `help:"How long a SIGINT/SIGTERM waits for in-flight requests (long downloads) before closing them." default:"30s"`
}

// token returns the bearer token from the flag or the file.
func (c serveCmd) token() (string, error) {
	if c.APITokenFile == "" {
		return c.APIToken, nil
	}
	if c.APIToken != "" {
		return "", errors.New("--api-token and --api-token-file are both set; use one")
	}
	b, err := os.ReadFile(c.APITokenFile)
	if err != nil {
		return "", fmt.Errorf("--api-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--api-token-file %s is empty; write the token into it", c.APITokenFile)
	}
	return tok, nil
}

func (c serveCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	tok, err := c.token()
	if err != nil {
		return err
	}
	if err := api.CheckExposure(g.HTTPAddr, tok, c.InsecureNoAuth); err != nil {
		return fmt.Errorf("--http-addr: %w", err)
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
	rr, rrService := readReporter(&lg)
	dp, err := g.dataPlane(ctx, lg, dataplane.WithCorruptionReporter(rr))
	if err != nil {
		return err
	}
	codec := events.NewCodec()
	srv := ops.New(lg, g.HTTPAddr)
	a, err := api.New(pool, dp, api.Options{Token: tok, Logger: lg, Registerer: srv.Registry})
	if err != nil {
		return err
	}
	srv.Front(a.Wrap)
	addReadyChecks(srv, pool, nil, dp)
	svcs := service.NewGroup(
		service.Named{Name: "read reporter", Service: rrService(dp, events.NewLog(pool, codec), pool, codec)},
		service.Named{Name: "API server", Service: opsService{srv: srv, stop: c.StopTimeout}},
	)
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	auth := "bearer token required"
	if tok == "" {
		auth = "NO authentication"
	}
	lg.Info().Str("addr", srv.Addr()).Str("auth", auth).Msg("read API serving /v1/objects and /v1/packages")
	return stopServices(ctx, lg, c.StopTimeout, svcs)
}
