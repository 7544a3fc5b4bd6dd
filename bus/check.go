package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrTopologyMissing reports that a stream, durable consumer or bucket a
// process needs does not exist on the server.
var ErrTopologyMissing = errors.New("bus: JetStream topology incomplete")

// apiPrefix is the JetStream API subject prefix of the default domain.
const apiPrefix = "$JS.API"

// ItemKind is the kind of one piece of the topology.
type ItemKind string

// The kinds of topology items.
const (
	KindStream      ItemKind = "stream"
	KindConsumer    ItemKind = "consumer"
	KindObjectStore ItemKind = "object store"
)

// Item is one stream, durable consumer or object-store bucket of a
// [Topology], with the configuration [ApplyTopology] gives it. Build items
// with [Topology.Items] or [Topology.Item]; the zero value names nothing.
type Item struct {
	// Kind says what the item is.
	Kind ItemKind `json:"kind"`
	// Name is the stream name, the durable consumer name or the bucket
	// name.
	Name string `json:"name"`
	// Stream is the JetStream stream the item lives in: the stream itself,
	// the stream the consumer reads, or OBJ_<bucket> for an object store.
	Stream string `json:"stream"`

	stream   jetstream.StreamConfig
	consumer jetstream.ConsumerConfig
	bucket   jetstream.ObjectStoreConfig
}

// String names the item as an operator reads it.
func (i Item) String() string {
	if i.Kind == KindConsumer {
		return fmt.Sprintf("consumer %s on stream %s", i.Name, i.Stream)
	}
	return fmt.Sprintf("%s %s", i.Kind, i.Name)
}

// Config returns the configuration ApplyTopology gives the item: a
// jetstream.StreamConfig, jetstream.ConsumerConfig or
// jetstream.ObjectStoreConfig.
func (i Item) Config() any {
	switch i.Kind {
	case KindStream:
		return i.stream
	case KindConsumer:
		return i.consumer
	default:
		return i.bucket
	}
}

// InfoSubject is the JetStream API subject that looks the item up: a
// process that checks the item needs permission to publish on it.
func (i Item) InfoSubject() string {
	if i.Kind == KindConsumer {
		return apiPrefix + ".CONSUMER.INFO." + i.Stream + "." + i.Name
	}
	return apiPrefix + ".STREAM.INFO." + i.Stream
}

// objectStoreStream is the name of the stream behind an object-store bucket.
func objectStoreStream(bucket string) string { return "OBJ_" + bucket }

// Items lists every stream, durable consumer and bucket of t in the order
// [ApplyTopology] creates them: the streams of [Topology.StreamConfigs],
// the consumers of [Topology.Consumers] on the commands stream, those of
// [Topology.EventConsumers] on the events stream, then the
// staging bucket. A stream added to StreamConfigs is an item without
// further code.
func (t Topology) Items() []Item {
	var items []Item
	for _, cfg := range t.StreamConfigs() {
		items = append(items, Item{Kind: KindStream, Name: cfg.Name, Stream: cfg.Name, stream: cfg})
	}
	for _, f := range t.Consumers() {
		items = append(items, Item{Kind: KindConsumer, Name: f.Durable, Stream: t.CommandsStream, consumer: t.ConsumerConfig(f)})
	}
	for _, f := range t.EventConsumers() {
		items = append(items, Item{Kind: KindConsumer, Name: f.Durable, Stream: t.EventsStream, consumer: t.ConsumerConfig(f)})
	}
	items = append(items, Item{Kind: KindObjectStore, Name: t.StagingBucket, Stream: objectStoreStream(t.StagingBucket), bucket: t.StagingConfig()})
	return items
}

// Item returns the item of t of the given kind and name, and whether t
// has one.
func (t Topology) Item(kind ItemKind, name string) (Item, bool) {
	for _, it := range t.Items() {
		if it.Kind == kind && it.Name == name {
			return it, true
		}
	}
	return Item{}, false
}

// Drift is one setting of a live item that differs from the topology.
type Drift struct {
	// Item is the item that differs.
	Item Item
	// Field names the setting, as in the JetStream configuration.
	Field string
	// Live is the server's value, Want the topology's.
	Live, Want string
}

// String says what differs.
func (d Drift) String() string {
	return fmt.Sprintf("%s: %s is %s on the server, %s in the topology", d.Item, d.Field, d.Live, d.Want)
}

// CheckReport is what [CheckTopology] found.
type CheckReport struct {
	// Present are the items that exist, Missing those that do not.
	Present, Missing []Item
	// Drift lists the settings of present items that differ from the
	// topology; ApplyTopology would change them.
	Drift []Drift
}

// CheckTopology looks up items (every item of t when none is given) on the
// server without changing anything: it needs only the permission to read
// their info ($JS.API.STREAM.INFO.<stream>, $JS.API.CONSUMER.INFO.<stream>.<durable>).
// Missing items make the error wrap [ErrTopologyMissing] and name every
// one of them; settings that differ are reported in the report's Drift
// and are not an error. A lookup the server's permissions refuse fails
// with an error naming the subject to grant.
func CheckTopology(ctx context.Context, js jetstream.JetStream, t Topology, items ...Item) (CheckReport, error) {
	var rep CheckReport
	if err := t.Validate(); err != nil {
		return rep, err
	}
	if len(items) == 0 {
		items = t.Items()
	}
	for _, it := range items {
		drift, found, err := lookup(ctx, js, it)
		if err != nil {
			return rep, err
		}
		if !found {
			rep.Missing = append(rep.Missing, it)
			continue
		}
		rep.Present = append(rep.Present, it)
		rep.Drift = append(rep.Drift, drift...)
	}
	if len(rep.Missing) > 0 {
		names := make([]string, len(rep.Missing))
		for i, it := range rep.Missing {
			names[i] = it.String()
		}
		return rep, fmt.Errorf("%w: %s missing on the server", ErrTopologyMissing, strings.Join(names, ", "))
	}
	return rep, nil
}

// Change is what [ApplyTopology] did to one item.
type Change struct {
	// Item is the item.
	Item Item
	// Created is true when the item did not exist before.
	Created bool
	// Drift lists the settings the update changed (empty for a created
	// item and for one that already matched).
	Drift []Drift
}

// String says what was done.
func (c Change) String() string {
	switch {
	case c.Created:
		return c.Item.String() + ": created"
	case len(c.Drift) == 0:
		return c.Item.String() + ": unchanged"
	}
	fields := make([]string, len(c.Drift))
	for i, d := range c.Drift {
		fields[i] = fmt.Sprintf("%s %s -> %s", d.Field, d.Live, d.Want)
	}
	return c.Item.String() + ": updated (" + strings.Join(fields, ", ") + ")"
}

// ApplyTopology creates every stream, durable consumer and bucket of t, or
// updates them to t where they exist (create-or-update), and reports what
// it did to each. It is safe to run any number of times. It needs the
// permissions to read, create and update each of them; the processes that
// only use the topology check it with [CheckTopology] instead. A change
// the server cannot apply in place (e.g. a stream's retention or storage)
// fails with the server's reason.
func ApplyTopology(ctx context.Context, js jetstream.JetStream, t Topology, opts ...ApplyOption) ([]Change, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	var o applyOptions
	for _, opt := range opts {
		opt(&o)
	}
	var changes []Change
	for _, it := range t.Items() {
		drift, found, err := lookup(ctx, js, it)
		if err != nil {
			return changes, err
		}
		if err := applyItem(ctx, js, it, t.Replicas, o.placementWait); err != nil {
			return changes, err
		}
		changes = append(changes, Change{Item: it, Created: !found, Drift: drift})
	}
	return changes, nil
}

// ErrNoPlacement is wrapped by the error of [ApplyTopology] when the NATS
// cluster cannot place an item's replicas: fewer JetStream servers are
// online than the topology's replica count, or the cluster is still
// forming (its meta leader has not yet heard from every server).
var ErrNoPlacement = errors.New("the NATS cluster cannot place the replicas")

// jsClusterNoPeers is JetStream's error code for "no suitable peers for
// placement" (JSClusterNoPeersErrF).
const jsClusterNoPeers jetstream.ErrorCode = 10005

// ApplyOption changes how [ApplyTopology] applies a topology.
type ApplyOption func(*applyOptions)

type applyOptions struct {
	placementWait time.Duration
}

// WaitForPlacement makes [ApplyTopology] retry an item the cluster cannot
// place yet for up to d (a cluster that has just started places replicas
// only once its meta leader has heard from every server), before it fails
// with [ErrNoPlacement].
func WaitForPlacement(d time.Duration) ApplyOption {
	return func(o *applyOptions) { o.placementWait = d }
}

// applyItem creates or updates one item, retrying for up to wait while the
// cluster cannot place its replicas.
func applyItem(ctx context.Context, js jetstream.JetStream, it Item, nReplicas int, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	pause := 100 * time.Millisecond
	for {
		var err error
		switch it.Kind {
		case KindStream:
			_, err = js.CreateOrUpdateStream(ctx, it.stream)
		case KindConsumer:
			_, err = js.CreateOrUpdateConsumer(ctx, it.Stream, it.consumer)
		case KindObjectStore:
			_, err = js.CreateOrUpdateObjectStore(ctx, it.bucket)
		}
		var apiErr *jetstream.APIError
		if err == nil || !errors.As(err, &apiErr) || apiErr.ErrorCode != jsClusterNoPeers {
			if err != nil {
				return fmt.Errorf("bus: create or update %s: %w", it, err)
			}
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("bus: create or update %s: %w: %d replicas need %d JetStream servers online in the cluster; "+
				"start the missing servers (or wait until the cluster has formed) and run again, or lower --nats-replicas (%v)",
				it, ErrNoPlacement, replicas(nReplicas), replicas(nReplicas), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: create or update %s: %w (%v)", it, ctx.Err(), err)
		case <-time.After(min(pause, time.Until(deadline))):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// EnsureTopology is [ApplyTopology] without the report: it creates or
// updates every stream, durable consumer and bucket of t.
func EnsureTopology(ctx context.Context, js jetstream.JetStream, t Topology) error {
	_, err := ApplyTopology(ctx, js, t)
	return err
}

// lookup reads the item's live configuration and compares it with the
// topology's.
func lookup(ctx context.Context, js jetstream.JetStream, it Item) (drift []Drift, found bool, err error) {
	switch it.Kind {
	case KindConsumer:
		cons, err := js.Consumer(ctx, it.Stream, it.Name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, lookupErr(js, it, err)
		}
		return consumerDrift(it, cons.CachedInfo()), true, nil
	case KindStream, KindObjectStore:
		s, err := js.Stream(ctx, it.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, lookupErr(js, it, err)
		}
		if it.Kind == KindStream {
			return streamDrift(it, s.CachedInfo().Config), true, nil
		}
		return bucketDrift(it, s.CachedInfo().Config), true, nil
	}
	return nil, false, fmt.Errorf("bus: unknown topology item kind %q", it.Kind)
}

// lookupErr explains a failed lookup. The server drops a request its
// permissions refuse and tells the client asynchronously, so the request
// itself only times out: the connection's last error says why.
func lookupErr(js jetstream.JetStream, it Item, err error) error {
	subject := it.InfoSubject()
	if last := js.Conn().LastError(); errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), subject) {
		return fmt.Errorf("bus: look up %s: the NATS server refused this user's request (%v); grant it publish on %q: %w", it, last, subject, err)
	}
	return fmt.Errorf("bus: look up %s (request on %s): %w", it, subject, err)
}

type differ struct {
	it    Item
	drift []Drift
}

func (d *differ) cmp(field string, live, want any) {
	l, w := fmt.Sprint(live), fmt.Sprint(want)
	if l != w {
		d.drift = append(d.drift, Drift{Item: d.it, Field: field, Live: l, Want: w})
	}
}

// replicas normalises a replica count: 0 means the default, 1.
func replicas(n int) int { return max(n, 1) }

// unlimited normalises a limit: 0 and -1 both mean none.
func unlimited[T int32 | int64](n T) T {
	if n <= 0 {
		return -1
	}
	return n
}

func streamDrift(it Item, live jetstream.StreamConfig) []Drift {
	want := it.stream
	d := differ{it: it}
	ls, ws := slices.Clone(live.Subjects), slices.Clone(want.Subjects)
	slices.Sort(ls)
	slices.Sort(ws)
	d.cmp("Subjects", ls, ws)
	d.cmp("Retention", live.Retention, want.Retention)
	d.cmp("Storage", live.Storage, want.Storage)
	d.cmp("Replicas", replicas(live.Replicas), replicas(want.Replicas))
	d.cmp("MaxAge", live.MaxAge, want.MaxAge)
	d.cmp("MaxBytes", unlimited(live.MaxBytes), unlimited(want.MaxBytes))
	d.cmp("MaxMsgSize", unlimited(live.MaxMsgSize), unlimited(want.MaxMsgSize))
	d.cmp("Duplicates", live.Duplicates, want.Duplicates)
	d.cmp("Discard", live.Discard, want.Discard)
	d.cmp("DenyDelete", live.DenyDelete, want.DenyDelete)
	d.cmp("DenyPurge", live.DenyPurge, want.DenyPurge)
	return d.drift
}

func consumerDrift(it Item, info *jetstream.ConsumerInfo) []Drift {
	want, live := it.consumer, info.Config
	d := differ{it: it}
	d.cmp("FilterSubject", live.FilterSubject, want.FilterSubject)
	d.cmp("AckPolicy", live.AckPolicy, want.AckPolicy)
	d.cmp("AckWait", live.AckWait, want.AckWait)
	d.cmp("MaxDeliver", live.MaxDeliver, want.MaxDeliver)
	d.cmp("MaxAckPending", live.MaxAckPending, want.MaxAckPending)
	// A consumer's replica count of 0 means its stream's.
	liveR := live.Replicas
	if liveR == 0 && info.Cluster != nil {
		liveR = len(info.Cluster.Replicas) + 1
	}
	d.cmp("Replicas", replicas(liveR), replicas(want.Replicas))
	return d.drift
}

func bucketDrift(it Item, live jetstream.StreamConfig) []Drift {
	want := it.bucket
	d := differ{it: it}
	d.cmp("TTL", live.MaxAge, want.TTL)
	d.cmp("MaxBytes", unlimited(live.MaxBytes), unlimited(want.MaxBytes))
	d.cmp("Storage", live.Storage, want.Storage)
	d.cmp("Replicas", replicas(live.Replicas), replicas(want.Replicas))
	return d.drift
}
