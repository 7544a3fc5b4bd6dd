package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/internal/ops"
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
	dp, err := g.dataPlane(lg)
	if err != nil {
		return err
	}
	srv := ops.New(lg)
	a, err := api.New(pool, dp, api.Options{Token: tok, Logger: lg, Registerer: srv.Registry})
	if err != nil {
		return err
	}
	srv.Front(a.Wrap)
	srv.AddCheck("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	srv.AddCheck("storage", func(ctx context.Context) error {
		var errs []error
		for id, h := range dp.Health(ctx) {
			if !h.Healthy {
				errs = append(errs, fmt.Errorf("backend %s: %s", id, h.Detail))
			}
		}
		return errors.Join(errs...)
	})
	if err := srv.Start(g.HTTPAddr); err != nil {
		return fmt.Errorf("serve --http-addr %s (another process on it? pass another address): %w", g.HTTPAddr, err)
	}
	auth := "bearer token required"
	if tok == "" {
		auth = "NO authentication"
	}
	lg.Info().Str("addr", srv.Addr()).Str("auth", auth).Msg("read API serving /v1/objects and /v1/packages")
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.StopTimeout)
	defer cancel()
	if err := srv.Stop(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("stop the HTTP server: %w", err)
	}
	return nil
}
