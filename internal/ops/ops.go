// Package ops serves the endpoints every role exposes for operators:
// /metrics (Prometheus), /healthz (the process is alive) and /readyz (every
// dependency the role needs answers and is healthy).
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/internal/service"
)

// Check reports whether one dependency is reachable and healthy; a nil
// error means ready.
type Check func(ctx context.Context) error

// Server is the operator HTTP server of one process. Other handlers (the
// read API) can be mounted on Mux before Start.
type Server struct {
	// Mux is the server's router; mount more handlers on it before Start.
	Mux *http.ServeMux
	// Registry holds the process's metrics.
	Registry *prometheus.Registry

	logger       zerolog.Logger
	checkTimeout time.Duration

	front func(http.Handler) http.Handler

	addr    string
	state   service.State
	stopped chan struct{} // closed when the first Stop returned

	mu     sync.Mutex
	checks map[string]Check
	srv    *http.Server
	ln     net.Listener
}

// New returns a server with Go runtime and process collectors registered.
func New(logger zerolog.Logger, addr string) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{
		Mux:          http.NewServeMux(),
		Registry:     reg,
		logger:       logger.With().Str("service", "ops").Logger(),
		checkTimeout: 3 * time.Second,
		checks:       map[string]Check{},
		addr:         addr,
		stopped:      make(chan struct{}),
	}
	s.Mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.Mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	s.Mux.HandleFunc("GET /readyz", s.readyz)
	return s
}

// Front puts a handler in front of Mux: wrap(Mux) receives every request
// before Mux cleans its path. The read API goes there (api.Server.Wrap),
// because it refuses unclean paths itself instead of letting the mux
// redirect them. Call before Start.
func (s *Server) Front(wrap func(next http.Handler) http.Handler) {
	s.front = wrap
}

// AddCheck registers a readiness check under name ("postgres", "nats", ...).
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// Ready runs every check and returns each one's error (nil when ready).
func (s *Server) Ready(ctx context.Context) map[string]error {
	s.mu.Lock()
	checks := make(map[string]Check, len(s.checks))
	for k, v := range s.checks {
		checks[k] = v
	}
	s.mu.Unlock()
	out := make(map[string]error, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, s.checkTimeout)
			defer cancel()
			err := c(cctx)
			mu.Lock()
			out[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	results := s.Ready(r.Context())
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	type check struct {
		Name  string `json:"name"`
		Ready bool   `json:"ready"`
		Error string `json:"error,omitempty"`
	}
	body := struct {
		Ready  bool    `json:"ready"`
		Checks []check `json:"checks"`
	}{Ready: true}
	for _, n := range names {
		c := check{Name: n, Ready: results[n] == nil}
		if results[n] != nil {
			c.Error = results[n].Error()
			body.Ready = false
		}
		body.Checks = append(body.Checks, c)
	}
	code := http.StatusOK
	if !body.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Start listens on the server's address and serves in the background; it
// returns once the listener is open (so a port conflict is reported at
// once). A second Start, or one after Stop, fails (the lifecycle of
// internal/service).
func (s *Server) Start(ctx context.Context) error {
	return s.state.TryStart(func() error { return s.listen(ctx) })
}

func (s *Server) listen(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	var h http.Handler = s.Mux
	if s.front != nil {
		h = s.front(s.Mux)
	}
	s.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	s.logger.Info().Str("addr", ln.Addr().String()).Msg("serving /metrics, /healthz, /readyz")
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error().Err(err).Msg("HTTP server stopped")
		}
	}()
	return nil
}

// ListenAddr is the address Start listens on, as given to New.
func (s *Server) ListenAddr() string { return s.addr }

// Addr returns the listening address, or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stop shuts the server down gracefully within ctx (in-flight requests
// finish; when ctx is done first they are cut off). Safe before Start and
// twice.
func (s *Server) Stop(ctx context.Context) error {
	if !s.state.MarkStopped() {
		return nil
	}
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil { // a second Stop: wait for the first
		select {
		case <-s.stopped:
			return nil
		case <-ctx.Done():
			return service.ErrStopDeadline
		}
	}
	defer close(s.stopped)
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close() // hard stop: cut the requests still in flight
		return fmt.Errorf("ops: %w: %w", service.ErrStopDeadline, err)
	}
	return nil
}
