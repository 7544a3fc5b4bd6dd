package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
)

// embeddedURLFile is where 'run' writes the URL of its embedded NATS server
// so that client commands using the same data directory find it.
func (g *Globals) embeddedURLFile() string { return filepath.Join(g.DataDir, "nats.url") }

// errNoNATSURL reports that no NATS server was named and no 'run' recorded
// one: there is nothing to connect to, and guessing a default would talk
// to whatever listens there.
var errNoNATSURL = errors.New("no NATS server to connect to")

// natsURL returns --nats-url (or ARTIFACTSTORE_NATS_URL), else the URL of
// the embedded server that 'run' recorded in the data directory, with
// where it came from. It never guesses: with neither, it fails and says
// how to name a server.
func (g *Globals) natsURL() (url, source string, err error) {
	if g.NATSURL != "" {
		return g.NATSURL, "--nats-url", nil
	}
	file := g.embeddedURLFile()
	b, err := os.ReadFile(file)
	if err == nil {
		if u := strings.TrimSpace(string(b)); u != "" {
			return u, file, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("read the NATS URL recorded by 'artifactstore run' in %s: %w", file, err)
	}
	return "", "", fmt.Errorf("%w: --nats-url (ARTIFACTSTORE_NATS_URL) is not set and %s does not exist; "+
		"start 'artifactstore run' with --data-dir %s (it records its embedded server there), "+
		"or pass --nats-url nats://HOST:PORT", errNoNATSURL, file, g.DataDir)
}

// natsConn connects to NATS with the credentials and TLS flags.
func (g *Globals) natsConn(ctx context.Context, name string, logger zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	url, source, err := g.natsURL()
	if err != nil {
		return nil, nil, err
	}
	nc, err := bus.Connect(ctx, bus.ConnConfig{
		URL:          url,
		Name:         "artifactstore-" + name,
		CredsFile:    g.NATSCreds,
		NKeySeedFile: g.NATSNKey,
		User:         g.NATSUser,
		Password:     g.NATSPassword,
		TLSCAFile:    g.NATSCA,
		TLSCertFile:  g.NATSCert,
		TLSKeyFile:   g.NATSKey,
	}, logger)
	if err != nil {
		if source != "--nats-url" {
			return nil, nil, fmt.Errorf("%w (the URL comes from %s, written by an 'artifactstore run' that may have stopped without removing it: start 'run' again, or pass --nats-url)", err, source)
		}
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream client: %w", err)
	}
	return nc, js, nil
}

// replicasFlag sets the replica count of the topology a command applies.
type replicasFlag struct {
	NATSReplicas int `name:"nats-replicas" help:"Replicas of every JetStream stream, consumer and bucket the topology creates or updates: 1 on a single server, 3 in a three-node cluster." default:"1" placeholder:"N"`
}

// topology is the default topology with the flags applied.
func (f replicasFlag) topology() (bus.Topology, error) {
	t := bus.DefaultTopology()
	t.Replicas = f.NATSReplicas
	if err := t.Validate(); err != nil {
		return t, fmt.Errorf("--nats-replicas: %w", err)
	}
	return t, nil
}

// topologyFlags are the topology flags of a worker role.
type topologyFlags struct {
	ApplyTopology bool `name:"apply-topology" help:"Create or update the JetStream streams, consumers and bucket at start, as 'topology apply' does (needs the admin's NATS permissions). Without it the role only checks that what it uses exists."`
	replicasFlag  `embed:""`
}

// prepareTopology makes sure the topology items role uses exist: it
// applies the whole topology with --apply-topology, else only checks the
// role's items, so that the role needs no permission to create or change
// them. Settings that differ from the flags are logged, not fatal.
func prepareTopology(ctx context.Context, js jetstream.JetStream, role string, f topologyFlags, lg zerolog.Logger) (bus.Topology, error) {
	top, err := f.topology()
	if err != nil {
		return top, err
	}
	if f.ApplyTopology {
		return top, applyTopology(ctx, js, top, lg)
	}
	r, ok := top.Role(role)
	if !ok {
		return top, fmt.Errorf("internal error: no NATS role %q", role)
	}
	rep, err := bus.CheckTopology(ctx, js, top, r.Needs...)
	if errors.Is(err, bus.ErrTopologyMissing) {
		return top, fmt.Errorf("%w; create it once with 'artifactstore topology apply' (NATS credentials of the admin role), "+
			"or start this role with --apply-topology (then it needs the admin's permissions too)", err)
	}
	if err != nil {
		return top, err
	}
	for _, d := range rep.Drift {
		lg.Warn().Str("item", d.Item.String()).Str("field", d.Field).Str("live", d.Live).Str("want", d.Want).
			Msg("JetStream topology differs from this process's flags; 'artifactstore topology apply' updates it")
	}
	return top, nil
}

// placementWait is how long applying the topology waits for a NATS
// cluster that cannot place the replicas yet: one that has just started
// places them only once its meta leader has heard from every server.
const placementWait = 30 * time.Second

// applyTopology creates or updates every item of top and logs what it did.
func applyTopology(ctx context.Context, js jetstream.JetStream, top bus.Topology, lg zerolog.Logger) error {
	changes, err := bus.ApplyTopology(ctx, js, top, bus.WaitForPlacement(placementWait))
	if err != nil {
		return err
	}
	for _, c := range changes {
		lg.Debug().Str("change", c.String()).Msg("JetStream topology applied")
	}
	return nil
}

// conns are the connections of a worker role: PostgreSQL, and NATS with
// the JetStream topology checked (or applied).
type conns struct {
	pool *pgxpool.Pool
	nc   *nats.Conn
	js   jetstream.JetStream
	top  bus.Topology
}

// connect opens the connections of role (a bus.Role* name) and prepares
// the topology.
func (g *Globals) connect(ctx context.Context, role string, f topologyFlags, lg zerolog.Logger) (*conns, error) {
	if _, _, err := g.natsURL(); err != nil {
		return nil, err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return nil, err
	}
	nc, js, err := g.natsConn(ctx, role, lg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	top, err := prepareTopology(ctx, js, role, f, lg)
	if err != nil {
		nc.Close()
		pool.Close()
		return nil, err
	}
	return &conns{pool: pool, nc: nc, js: js, top: top}, nil
}

// Close closes NATS, then PostgreSQL.
func (c *conns) Close() {
	c.nc.Close()
	c.pool.Close()
}
