package main

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

// TestTopologyReplicasOnACluster: `topology apply --nats-replicas 3` on a
// 3-node JetStream cluster gives every stream (the staging bucket's and
// the checkpoints stream included) and every durable consumer three
// replicas on the servers; `topology check` with the default of one
// replica names the difference.
func TestTopologyReplicasOnACluster(t *testing.T) {
	t.Parallel()
	_, dbURL := pgtest.NewDB(t)
	c := natstest.StartCluster(t, 3)
	global := []string{"--nats-url", c.URL(), "--database-url", dbURL, "--data-dir", t.TempDir(), "--log-format", "json"}
	cliOK(t, append(global, "topology", "apply", "--nats-replicas", "3")...)
	cliOK(t, append(global, "topology", "check", "--nats-replicas", "3")...)

	js, err := jetstream.New(c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology()
	streams := []string{"OBJ_" + top.StagingBucket}
	for _, s := range top.StreamConfigs() {
		streams = append(streams, s.Name)
	}
	for _, name := range streams {
		s, err := js.Stream(t.Context(), name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("stream %s: %d replicas configured, cluster %+v; want 3", name, info.Config.Replicas, info.Cluster)
		}
	}
	for _, f := range top.Consumers() {
		cons, err := js.Consumer(t.Context(), top.CommandsStream, f.Durable)
		if err != nil {
			t.Fatalf("consumer %s: %v", f.Durable, err)
		}
		info := cons.CachedInfo()
		if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("consumer %s: cluster %+v; want a leader and 2 replicas", f.Durable, info.Cluster)
		}
	}

	p := startCLI(t, append(global, "topology", "check")...)
	if code := p.wait(t); code != 3 || !strings.Contains(p.out.String()+p.errOut.String(), "Replicas") {
		t.Fatalf("topology check with one replica on a topology of three: exit %d\n%s%s", code, p.out.String(), p.errOut.String())
	}
}
