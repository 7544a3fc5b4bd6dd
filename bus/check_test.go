package bus_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

func TestCheckAndApplyTopology(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	items := top.Items()
	if len(items) != 9 {
		t.Fatalf("%d items, want 4 streams (commands, dead letters, events, checkpoints), 3 consumers of commands, 1 of events (replicate), 1 bucket", len(items))
	}
	if rc, ok := top.Item(bus.KindConsumer, top.ReplicateConsumer); !ok || rc.Stream != top.EventsStream {
		t.Fatalf("the replicate consumer: %+v, %v; want it on the events stream", rc, ok)
	}

	rep, err := bus.CheckTopology(ctx, js, top)
	if !errors.Is(err, bus.ErrTopologyMissing) || len(rep.Missing) != len(items) || len(rep.Present) != 0 {
		t.Fatalf("check before apply: %v, %+v", err, rep)
	}
	if want := "consumer ingest on stream " + top.CommandsStream; !strings.Contains(err.Error(), want) {
		t.Fatalf("the error does not name %q: %v", want, err)
	}

	changes, err := bus.ApplyTopology(ctx, js, top)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if !c.Created || !strings.HasSuffix(c.String(), ": created") {
			t.Errorf("first apply: %s", c)
		}
	}
	if rep, err := bus.CheckTopology(ctx, js, top); err != nil || len(rep.Drift) != 0 || len(rep.Present) != len(items) {
		t.Fatalf("check after apply: %v, %+v", err, rep)
	}

	// Only the items asked for are looked up.
	ingest, ok := top.Item(bus.KindConsumer, top.IngestConsumer)
	if !ok {
		t.Fatal("no ingest consumer item")
	}
	if rep, err := bus.CheckTopology(ctx, js, top, ingest); err != nil || len(rep.Present) != 1 {
		t.Fatalf("check of one item: %v, %+v", err, rep)
	}

	changed := top
	changed.MaxDeliver = 7
	changed.StagingTTL = time.Hour
	rep, err = bus.CheckTopology(ctx, js, changed)
	if err != nil {
		t.Fatal(err)
	}
	var drift []string
	for _, d := range rep.Drift {
		drift = append(drift, d.Item.Name+"."+d.Field+"="+d.Live+"->"+d.Want)
	}
	slices.Sort(drift)
	// The server's MaxDeliver is the attempts plus the spare delivery.
	want := []string{
		"ingest.MaxDeliver=11->8", "replicate.MaxDeliver=11->8", "retention.MaxDeliver=11->8",
		top.StagingBucket + ".TTL=24h0m0s->1h0m0s", "verify.MaxDeliver=11->8",
	}
	if !slices.Equal(drift, want) {
		t.Fatalf("drift %v, want %v", drift, want)
	}
	changes, err = bus.ApplyTopology(ctx, js, changed)
	if err != nil {
		t.Fatal(err)
	}
	updated := 0
	for _, c := range changes {
		if c.Created {
			t.Errorf("second apply created %s", c.Item)
		}
		if len(c.Drift) > 0 {
			updated++
			if !strings.Contains(c.String(), "updated (") {
				t.Errorf("change %q does not say what was updated", c)
			}
		}
	}
	if updated != 5 {
		t.Fatalf("second apply updated %d items, want 5 (4 consumers, the bucket): %v", updated, changes)
	}
	if rep, err := bus.CheckTopology(ctx, js, changed); err != nil || len(rep.Drift) != 0 {
		t.Fatalf("check after the update: %v, %+v", err, rep.Drift)
	}

	// A missing piece is named, the others are present.
	if err := js.DeleteConsumer(ctx, top.CommandsStream, top.VerifyConsumer); err != nil {
		t.Fatal(err)
	}
	rep, err = bus.CheckTopology(ctx, js, changed)
	if !errors.Is(err, bus.ErrTopologyMissing) || len(rep.Missing) != 1 || rep.Missing[0].Name != top.VerifyConsumer {
		t.Fatalf("check with the verify consumer deleted: %v, %+v", err, rep.Missing)
	}
}

func TestReplicasReachEveryItem(t *testing.T) {
	t.Parallel()
	top := bus.DefaultTopology()
	top.Replicas = 3
	if err := top.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, it := range top.Items() {
		var r int
		switch cfg := it.Config().(type) {
		case jetstream.StreamConfig:
			r = cfg.Replicas
		case jetstream.ConsumerConfig:
			r = cfg.Replicas
		case jetstream.ObjectStoreConfig:
			r = cfg.Replicas
		default:
			t.Fatalf("%s: config of type %T", it, cfg)
		}
		if r != 3 {
			t.Errorf("%s has %d replicas, want 3", it, r)
		}
	}
	for _, bad := range []int{0, 6} {
		top.Replicas = bad
		if err := top.Validate(); err == nil || !strings.Contains(err.Error(), "Replicas") {
			t.Errorf("Replicas %d: Validate = %v", bad, err)
		}
	}
}

func TestSubjectMatches(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pattern, subject string
		want             bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"$JS.API.CONSUMER.CREATE.S.*", "$JS.API.CONSUMER.CREATE.S.d.artifacts.cmd.>", false},
		{"$JS.API.CONSUMER.CREATE.S.d.>", "$JS.API.CONSUMER.CREATE.S.d.artifacts.cmd.>", true},
		{"x.*.y", "x.a.y", true},
		{"x.*.y", "x.a.z", false},
	} {
		if got := bus.SubjectMatches(c.pattern, c.subject); got != c.want {
			t.Errorf("SubjectMatches(%q, %q) = %v", c.pattern, c.subject, got)
		}
	}
}

// TestRolesCanCheckWhatTheyNeed: every item a role checks at start is an
// item of the topology, and the role may publish on its info subject.
func TestRolesCanCheckWhatTheyNeed(t *testing.T) {
	t.Parallel()
	for _, top := range []bus.Topology{bus.DefaultTopology(), bus.DefaultTopology().WithPrefix("p1")} {
		names := map[string]bool{}
		for _, r := range top.Roles() {
			if names[r.Name] {
				t.Errorf("role %s twice", r.Name)
			}
			names[r.Name] = true
			for _, need := range r.Needs {
				if _, ok := top.Item(need.Kind, need.Name); !ok || need.Kind == "" {
					t.Errorf("role %s needs %q, which the topology does not have", r.Name, need)
				}
				allowed := false
				for _, g := range r.Publish {
					allowed = allowed || bus.SubjectMatches(g.Subject, need.InfoSubject())
				}
				if !allowed {
					t.Errorf("role %s checks %s but may not publish on %s", r.Name, need, need.InfoSubject())
				}
			}
			for _, g := range append(slices.Clone(r.Publish), r.Subscribe...) {
				if g.Subject == "" || g.Why == "" {
					t.Errorf("role %s: grant %+v lacks its subject or why", r.Name, g)
				}
				if top.SubjectRoot != "artifacts" && strings.Contains(g.Subject, "ARTIFACTS_") && !strings.Contains(g.Subject, "p1_ARTIFACTS_") {
					t.Errorf("role %s: grant %s ignores the prefix", r.Name, g.Subject)
				}
			}
		}
	}
}

// A topology with more replicas than the cluster has servers fails with
// ErrNoPlacement and says what to do, not that the user lacks permissions.
func TestApplyTopologyMoreReplicasThanServers(t *testing.T) {
	t.Parallel()
	c := natstest.StartCluster(t, 3)
	js, err := jetstream.New(c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	top.Replicas = 5
	changes, err := bus.ApplyTopology(t.Context(), js, top)
	if !errors.Is(err, bus.ErrNoPlacement) {
		t.Fatalf("apply with 5 replicas on 3 servers: %v, want ErrNoPlacement", err)
	}
	if len(changes) != 0 {
		t.Errorf("changes reported for a topology that could not be placed: %v", changes)
	}
	for _, want := range []string{"5 JetStream servers", "--nats-replicas", top.CommandsStream} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	top.Replicas = 3
	if _, err := bus.ApplyTopology(t.Context(), js, top, bus.WaitForPlacement(time.Minute)); err != nil {
		t.Fatalf("apply with 3 replicas on 3 servers: %v", err)
	}
}
