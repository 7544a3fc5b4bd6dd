package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// ObjectServer opens stored bytes, proven on their way out;
// *dataplane.DataPlane implements it. The contracts are DataPlane.Serve's
// and DataPlane.Proof's: backendID "" is the default backend, rng nil is
// the whole object, errors match dataplane.ErrCorrupt,
// storage.ErrNotFound and storage.ErrInvalidRange, and the caller closes
// what it gets.
type ObjectServer interface {
	Serve(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (dataplane.Object, error)
	// ServeAny serves from the first of several copies that proves good,
	// failing over to the next without the client noticing.
	ServeAny(ctx context.Context, backendIDs []string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (dataplane.Object, error)
	Proof(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (io.ReadCloser, int64, error)
	// Corrupt returns non-nil for an object a read found corrupt that no
	// verification has proven good since (the projection may not say so
	// yet).
	Corrupt(backendID string, addr digest.Address) *dataplane.CorruptError
}

// Options configure a Server. The zero value is an open API with no logs
// and metrics in a private registry.
type Options struct {
	// Token, when not empty, is the bearer token every request must carry.
	Token string
	// Logger receives request failures; the zero value logs nothing.
	Logger zerolog.Logger
	// Registerer receives the API's metrics; nil keeps them in a private
	// registry (tests).
	Registerer prometheus.Registerer
}

// Server is the read API. It holds no per-request state and is safe for
// concurrent use.
type Server struct {
	catalog catalogReader
	objects ObjectServer
	token   [sha256.Size]byte
	auth    bool
	logger  zerolog.Logger

	mux      *http.ServeMux
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

// New returns the API over the projection tables in db and the bytes behind
// objects. It fails only when the metrics cannot be registered (e.g. a
// second API on one registry).
func New(db *pgxpool.Pool, objects ObjectServer, opts Options) (*Server, error) {
	if db == nil || objects == nil {
		return nil, errors.New("api: a database pool and an object server are required")
	}
	s := &Server{
		catalog: catalog.New(db),
		objects: objects,
		logger:  opts.Logger.With().Str("service", "api").Logger(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_api_requests_total",
			Help: "Read API requests by route and HTTP status code.",
		}, []string{"route", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "artifactstore_api_bytes_served_total",
			Help: "Object bytes written to read API clients, by route.",
		}, []string{"route"}),
	}
	if opts.Token != "" {
		s.auth = true
		s.token = sha256.Sum256([]byte(opts.Token))
	}
	// After the token: the routes' handlers are built with authentication
	// or without.
	s.mux = http.NewServeMux()
	s.routes(s.mux)
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{s.requests, s.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("api: register metrics: %w", err)
		}
	}
	return s, nil
}

// Wrap returns a handler that answers every request for /v1 or a path
// under /v1/ and passes any other request to next (e.g. the ops server's
// mux, so that one port serves the API, /metrics and the health checks).
//
// The API sees its requests as they were sent: a path with "." or ".."
// segments, empty segments, a NUL or control character or invalid UTF-8,
// or a query that does not parse or holds such text, is refused with 400
// (checkRequest) rather than cleaned and redirected, which is what an
// http.ServeMux in front of it would do. So Wrap goes in front of a
// ServeMux, never behind one.
func (s *Server) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.EscapedPath(); p != "/v1" && !strings.HasPrefix(p, "/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		if e := checkRequest(r); e != nil {
			s.instrument("invalid", s.authenticate(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if e.status == http.StatusMethodNotAllowed {
					w.Header().Set("Allow", "GET, HEAD")
				}
				writeError(w, e)
			}))).ServeHTTP(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// Handler returns a handler serving only the API (for tests and for
// servers that do not need the ops endpoints): any other path is a JSON
// not_found.
func (s *Server) Handler() http.Handler {
	return s.Wrap(s.instrument("unknown", s.authenticate(http.HandlerFunc(s.notFound))))
}

// routes registers every route of the API on mux. Wrap checks a request
// before mux sees it, so mux finds clean paths only and never redirects:
// the exact patterns for /v1 and .../files stop its trailing-slash
// redirects (to /v1/ and .../files/).
func (s *Server) routes(mux *http.ServeMux) {
	s.route(mux, "GET /v1/objects/{address}", "object", s.getObject)
	s.route(mux, "GET /v1/objects/{address}/tree", "tree", s.getTree)
	s.route(mux, "GET /v1/packages", "packages", s.listPackages)
	s.route(mux, "GET /v1/packages/{name}", "package", s.getPackage)
	s.route(mux, "GET /v1/packages/{name}/files/{path...}", "file", s.getFile)
	// Anything else under /v1/ answers a JSON 404, with a hint for the
	// commonest mistake: a package name with an unencoded "/".
	s.route(mux, "GET /v1/", "unknown", s.notFound)
	s.route(mux, "GET /v1", "unknown", s.notFound)
	s.route(mux, "GET /v1/packages/{name}/files", "unknown", s.notFound)
}

func (s *Server) route(mux *http.ServeMux, pattern, name string, h func(w http.ResponseWriter, r *http.Request)) {
	mux.Handle(pattern, s.instrument(name, s.authenticate(http.HandlerFunc(h))))
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	msg := fmt.Sprintf("no API route for %s %s", r.Method, r.URL.EscapedPath())
	if strings.HasPrefix(r.URL.Path, "/v1/packages/") {
		msg += "; a package name that contains '/' must be percent-encoded as %2F, e.g. /v1/packages/ci%2Frun-42"
	}
	writeError(w, &apiError{status: http.StatusNotFound, code: CodeNotFound, msg: msg})
}

// authenticate refuses requests without the bearer token when one is set.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if !s.auth {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="artifactstore"`)
			writeError(w, &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized,
				msg: "this API needs a bearer token; send the header 'Authorization: Bearer <token>'"})
			return
		}
		// Hashing first makes the comparison independent of the length
		// of the guess.
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="artifactstore", error="invalid_token"`)
			writeError(w, &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized,
				msg: "the bearer token is wrong; use the token the server was started with (--api-token)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the status code for the request counter.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) instrument(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := strconv.Itoa(sw.code)
			if sw.code == 0 {
				code = "200"
			}
			if rec := recover(); rec != nil {
				// An aborted stream (see abort) or a bug: the client sees
				// a broken connection either way.
				s.requests.WithLabelValues(route, "aborted").Inc()
				panic(rec)
			}
			s.requests.WithLabelValues(route, code).Inc()
		}()
		next.ServeHTTP(sw, r)
	})
}

// CheckExposure refuses to serve the API without a token on an address
// other hosts can reach, unless allowInsecure says the operator wants
// exactly that. addr is host:port; an empty host means every interface.
func CheckExposure(addr, token string, allowInsecure bool) error {
	if token != "" || allowInsecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("HTTP address %q is not host:port: %w", addr, err)
	}
	if isLoopback(host) {
		return nil
	}
	return fmt.Errorf("refusing to serve the read API without a token on %s, which other hosts can reach: "+
		"set --api-token (or ARTIFACTSTORE_API_TOKEN), bind a loopback address such as 127.0.0.1:8080, "+
		"or pass --insecure-no-auth if an unauthenticated API on the network is really intended", addr)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
