package natstest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterTimeout bounds how long a test waits for a cluster to elect its
// JetStream meta leader and for every node to catch up. It only stops a
// hung start; on a busy machine an election may take many seconds.
const clusterTimeout = 3 * time.Minute

// Cluster is n embedded nats-servers with JetStream, joined by cluster
// routes on loopback: a JetStream cluster whose streams may have up to n
// replicas. One node at a time may be stopped and restarted, as after the
// crash of one machine.
type Cluster struct {
	name   string
	mu     sync.Mutex
	nodes  []*clusterNode
	routes []*url.URL
}

// clusterNode is one server of a Cluster; srv is nil while it is stopped.
type clusterNode struct {
	name        string
	storeDir    string
	port        int
	clusterPort int
	srv         *server.Server
}

// StartCluster starts n embedded servers (each with its own store under
// t.TempDir() and its own loopback ports, routed to every other), waits
// until JetStream has elected a meta leader that sees every node, and
// shuts them all down when the test ends. It ignores
// ARTIFACTSTORE_TEST_NATS_URL: a cluster is always the test's own.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest: a cluster of %d nodes", n)
	}
	ports := freePorts(t, 2*n)
	c := &Cluster{name: Prefix(t)}
	for i := range n {
		nd := &clusterNode{
			name:        fmt.Sprintf("%s-n%d", c.name, i),
			storeDir:    t.TempDir(),
			port:        ports[2*i],
			clusterPort: ports[2*i+1],
		}
		c.nodes = append(c.nodes, nd)
		c.routes = append(c.routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", nd.clusterPort)})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for i := range c.nodes {
			wg.Go(func() { c.shutdown(i) })
		}
		wg.Wait()
	})
	// Start them together: each waits for its routes, and JetStream elects
	// its meta leader once a quorum of them is up.
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Go(func() { errs <- c.start(i) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady(t)
	return c
}

// freePorts reserves n distinct free loopback ports by listening on them
// all at once, then releases them for the servers to take.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: find a free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Size is the number of nodes, running or stopped.
func (c *Cluster) Size() int { return len(c.nodes) }

// URL is the client URL of every node, comma-separated: a client given it
// connects to any running node and fails over to the others.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.nodes))
	for i, nd := range c.nodes {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", nd.port)
	}
	return strings.Join(urls, ",")
}

// NodeURL is the client URL of node i.
func (c *Cluster) NodeURL(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].port) }

// Connect opens a client connection to the cluster that is closed when the
// test ends. It knows every node and reconnects forever, so that it
// survives the loss of the node it is connected to.
func (c *Cluster) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URL(),
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("natstest: connect to cluster %s: %v", c.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ConnectTo is [Cluster.Connect] to node i first: the client fails over
// to the other nodes only when node i is down, so that a test knows which
// connections a [Cluster.Stop] of node i cuts.
func (c *Cluster) ConnectTo(t testing.TB, i int) *nats.Conn {
	t.Helper()
	urls := []string{c.NodeURL(i)}
	for j := range c.nodes {
		if j != i {
			urls = append(urls, c.NodeURL(j))
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","),
		nats.Name(fmt.Sprintf("%s@n%d", t.Name(), i)),
		nats.DontRandomize(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("natstest: connect to cluster node %d: %v", i, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Index is the index of the node whose server is named name (as in a
// stream's cluster info), or -1.
func (c *Cluster) Index(name string) int {
	for i, nd := range c.nodes {
		if nd.name == name {
			return i
		}
	}
	return -1
}

// Server is the running server of node i, nil while it is stopped.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv
}

// Stop shuts node i down and waits until it is gone, as when its machine
// crashes; [Cluster.Restart] brings it back with the same store and ports.
func (c *Cluster) Stop(t testing.TB, i int) {
	t.Helper()
	c.shutdown(i)
}

// Restart starts node i again (stopping it first when it runs) with its
// store and ports, and waits until the cluster has a meta leader that
// sees every node and every node is current.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.shutdown(i)
	if err := c.start(i); err != nil {
		t.Fatal(err)
	}
	c.WaitReady(t)
}

// WaitReady waits until one running node is the JetStream meta leader,
// the leader sees every running node as a peer, and every running node is
// current and healthy (its stream and consumer replicas caught up). It fails the test after a generous bound, which
// only stops a hung cluster.
func (c *Cluster) WaitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	tick := time.NewTicker(20 * time.Millisecond) // only costs time; the bound stops a hung test
	defer tick.Stop()
	for {
		state := c.readiness()
		if state == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: cluster %s not ready after %s: %s", c.name, clusterTimeout, state)
		}
		<-tick.C
	}
}

// readiness says what the cluster still lacks, or "" when it is ready.
func (c *Cluster) readiness() string {
	c.mu.Lock()
	var running []*server.Server
	for _, nd := range c.nodes {
		if nd.srv != nil {
			running = append(running, nd.srv)
		}
	}
	c.mu.Unlock()
	var leader *server.Server
	for _, s := range running {
		if s.JetStreamIsLeader() {
			leader = s
		}
	}
	if leader == nil {
		return "no JetStream meta leader"
	}
	if peers := leader.JetStreamClusterPeers(); len(peers) != len(running) {
		return fmt.Sprintf("the meta leader %s sees %d of %d running nodes: %v", leader.Name(), len(peers), len(running), peers)
	}
	for _, s := range running {
		if !s.JetStreamIsCurrent() {
			return fmt.Sprintf("node %s is not current", s.Name())
		}
		// Every stream and consumer replica the node holds has caught
		// up: stopping another node then leaves each a current quorum.
		if h := s.Healthz(nil); h.Status != "ok" {
			return fmt.Sprintf("node %s: %s %s", s.Name(), h.Status, h.Error)
		}
	}
	// The meta leader places a stream only on peers whose statistics it
	// has heard (STATSZ), which may come after the peer joined the meta
	// group: without this a test's first stream can fail with "no
	// suitable peers for placement, peer offline".
	return c.placementProbe(leader, len(running))
}

// placementProbeStream is the throwaway stream that proves the meta
// leader can place a stream on every running node.
const placementProbeStream = "NATSTEST_PLACEMENT_PROBE"

// placementProbe creates and deletes a memory stream with one replica per
// running node, through the meta leader, and says why it could not, or ""
// when it could.
func (c *Cluster) placementProbe(leader *server.Server, replicas int) string {
	nc, err := nats.Connect(leader.ClientURL(), nats.Name("natstest placement probe"))
	if err != nil {
		return fmt.Sprintf("placement probe: connect to %s: %v", leader.Name(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Sprintf("placement probe: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // only bounds one probe; WaitReady retries
	defer cancel()
	cfg := jetstream.StreamConfig{
		Name:     placementProbeStream,
		Subjects: []string{"natstest.placement.probe"},
		Storage:  jetstream.MemoryStorage,
		Replicas: replicas,
	}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		return fmt.Sprintf("placement probe: a stream with %d replicas: %v", replicas, err)
	}
	if err := js.DeleteStream(ctx, placementProbeStream); err != nil {
		return fmt.Sprintf("placement probe: delete its stream: %v", err)
	}
	return ""
}

func (c *Cluster) start(i int) error {
	c.mu.Lock()
	nd := c.nodes[i]
	c.mu.Unlock()
	opts := &server.Options{
		ServerName: nd.name,
		Host:       "127.0.0.1",
		Port:       nd.port,
		JetStream:  true,
		StoreDir:   nd.storeDir,
		MaxPayload: MaxPayload,
		NoLog:      true,
		NoSigs:     true,
		// As in Start: limits that do not depend on the machine.
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  4 << 30,
		Cluster: server.ClusterOpts{
			Name: c.name,
			Host: "127.0.0.1",
			Port: nd.clusterPort,
		},
		Routes: c.routes,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("natstest: configure cluster node %s: %w", nd.name, err)
	}
	srv.Start()
	if !srv.ReadyForConnections(startTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("natstest: cluster node %s (store %s, port %d, cluster port %d) not ready after %s", nd.name, nd.storeDir, nd.port, nd.clusterPort, startTimeout)
	}
	c.mu.Lock()
	nd.srv = srv
	c.mu.Unlock()
	return nil
}

func (c *Cluster) shutdown(i int) {
	c.mu.Lock()
	nd := c.nodes[i]
	srv := nd.srv
	nd.srv = nil
	c.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Shutdown()
	srv.WaitForShutdown()
}
