package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Globals are the flags every command accepts.
type Globals struct {
	LogLevel  string `help:"Log level: debug, info, warn or error." default:"info" enum:"debug,info,warn,error"`
	LogFormat string `help:"Log format: json, console, or auto (console on a terminal, else JSON)." default:"auto" enum:"auto,json,console"`

	DatabaseURL string `help:"PostgreSQL URL (pool_max_conns=N sets the pool size, default 20). The database is created by 'migrate up' and 'run' when it does not exist." default:"postgres://postgres@127.0.0.1:5432/artifactstore?sslmode=disable" placeholder:"URL"`

	NATSURL      string `name:"nats-url" help:"NATS server URL. Empty in 'run' starts an embedded server; other commands then read its URL from nats.url in the data directory, and fail when there is none (no default server is guessed)." placeholder:"URL"`
	NATSCreds    string `name:"nats-creds" help:"NATS credentials file (JWT + NKey)." type:"path" placeholder:"FILE"`
	NATSNKey     string `name:"nats-nkey" help:"NATS NKey seed file." type:"path" placeholder:"FILE"`
	NATSUser     string `name:"nats-user" help:"NATS user name."`
	NATSPassword string `name:"nats-password" help:"NATS password."`
	NATSCA       string `name:"nats-tls-ca" help:"CA certificate file that signs the NATS server's certificate." type:"path" placeholder:"FILE"`
	NATSCert     string `name:"nats-tls-cert" help:"Client certificate file for NATS TLS." type:"path" placeholder:"FILE"`
	NATSKey      string `name:"nats-tls-key" help:"Client key file for NATS TLS." type:"path" placeholder:"FILE"`

	DataDir      string `help:"Data directory: object storage root (unless --storage says otherwise) and, in 'run', the embedded NATS store." default:"./data" type:"path" placeholder:"DIR"`
	storageFlags `embed:""`
	HTTPAddr     string `name:"http-addr" help:"Address of the HTTP server (API, /metrics, /healthz, /readyz). Default per role, so that roles run side by side on one host: run and serve 127.0.0.1:8080, ingest :8081, project :8082, verify :8083, reap :8084, relay :8085, checkpoint sign :8086." placeholder:"HOST:PORT"`
	Instance     string `help:"Name of this process in PostgreSQL's application_name (artifactstore/<role>/<instance>), which 'status' shows for the leader of each single-active role. Default <hostname>:<pid>." placeholder:"NAME"`

	// role is the command being run (its first word), set before it runs.
	role string
}

// opsPort is the default port of a role's HTTP server on 127.0.0.1:
// distinct per role, so that two roles started on one host with default
// flags both run. The API roles (run, serve) keep 8080.
func opsPort(role string) int {
	switch role {
	case "ingest":
		return 8081
	case "project":
		return 8082
	case "verify":
		return 8083
	case "reap":
		return 8084
	case "relay":
		return 8085
	case "checkpoint":
		return 8086
	case "replicate":
		return 8087
	}
	return 8080
}

// defaults fills in the defaults that depend on the command: the HTTP
// address of the role and the instance name.
func (g *Globals) defaults(command string) {
	g.role, _, _ = strings.Cut(command, " ")
	if g.HTTPAddr == "" {
		g.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", opsPort(g.role))
	}
	if g.Instance == "" {
		host, _ := os.Hostname()
		g.Instance = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
}

// applicationName is what this process's PostgreSQL sessions are called.
func (g *Globals) applicationName() string {
	role := g.role
	if role == "" {
		role = "client"
	}
	name := "artifactstore/" + role + "/" + g.Instance
	if len(name) > 63 { // NAMEDATALEN - 1: PostgreSQL truncates silently
		name = name[:63]
	}
	return name
}

// logger builds the process logger. It is created once here and injected
// everywhere else.
func (g *Globals) logger(w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(g.LogLevel)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("--log-level: %w", err)
	}
	out := w
	console := g.LogFormat == "console"
	if g.LogFormat == "auto" {
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			console = true
		}
	}
	if console {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), nil
}

// defaultPoolConns is the connection pool size when the URL sets none
// (pool_max_conns=N in --database-url overrides it).
const defaultPoolConns = 20

// pool connects to PostgreSQL and checks that it answers.
func (g *Globals) pool(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(g.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("--database-url is not a valid PostgreSQL URL: %w", err)
	}
	if _, set := cfg.ConnConfig.RuntimeParams["application_name"]; !set {
		// 'status' reads it to show who leads each single-active role.
		cfg.ConnConfig.RuntimeParams["application_name"] = g.applicationName()
	}
	if !strings.Contains(g.DatabaseURL, "pool_max_conns") {
		// pgxpool's default (max(4, CPUs)) starves 32 ingest handlers plus
		// the committer and the consumers of 'run'.
		cfg.MaxConns = defaultPoolConns
	}
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.Ping(pingCtx); err != nil {
		p.Close()
		return nil, fmt.Errorf("PostgreSQL at %s does not answer (%w); start it (on Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), run 'artifactstore migrate up', or set --database-url", redactURL(g.DatabaseURL), err)
	}
	return p, nil
}
