package natstest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/natstest"
)

// TestClusterSurvivesOneNode: an R3 stream of a 3-node cluster keeps
// taking and serving messages while one node is down, and the node comes
// back with the same store.
func TestClusterSurvivesOneNode(t *testing.T) {
	t.Parallel()
	c := natstest.StartCluster(t, 3)
	js, err := jetstream.New(c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute) // only stops a hung test
	defer cancel()
	name := natstest.Prefix(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	publish := func(i int) {
		t.Helper()
		// A publish during a leader election is refused or unanswered
		// (sent to the node that went away): each attempt has its own
		// bound, and the Nats-Msg-Id makes a repeat harmless.
		for {
			actx, acancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := js.Publish(actx, fmt.Sprintf("%s.m", name), []byte{byte(i)}, jetstream.WithMsgID(fmt.Sprint(i)))
			acancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
	}
	publish(1)
	for stop := range c.Size() {
		c.Stop(t, stop)
		if c.Server(stop) != nil {
			t.Fatalf("node %d still runs after Stop", stop)
		}
		publish(2 + stop)
		c.Restart(t, stop)
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 4 {
		t.Fatalf("%d messages, want 4", info.State.Msgs)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info %+v, want a leader and 2 replicas", info.Cluster)
	}
}
