// Package replicator places further copies of objects on other backends
// and heals damaged copies from good ones.
//
// Any number of replicator processes share one durable JetStream consumer
// of the events stream (object events, bus.Topology.EventConsumers), fed
// by the relay with committed events only:
//
//   - object.stored (and object.repaired from a re-upload): the policy
//     ([Policy]) decides from the retention classes of the live packages
//     that reference the object how many further copies it gets and on
//     which backends; each is made with a verifying read (the source's
//     bytes proven against the address on the way out, dataplane.Serve)
//     and a verifying write (the put recomputes both digests and the size
//     and commits only when they match, dataplane.Ingest), then recorded:
//     the copy's gc_objects row (pkgstate.KeepCopy, so that the reaper
//     deletes every copy) and object.replicated, in one transaction.
//   - retention.changed: the same for every file of the package, so that
//     a package moved to a class with more copies gets them.
//   - object.corrupt and object.missing (a scrub, a verified read): the
//     damaged copy is verified again, and when it still fails it is
//     replaced by the bytes of another copy that verifies on the way out,
//     recorded as object.repaired with Source "replica:<backend>".
//
// A source that fails verification is never copied from: its read stops
// before the bad bytes (the data plane reports it, so it is recorded
// corrupt) and the next ok copy is tried; with none left the copy is
// refused ([ErrNoVerifiedSource]). Every effect is idempotent: the events
// are appended under a command id made of the address, the target backend
// and the triggering event's sequence, and a put of content the target
// already holds deduplicates against a copy that passes the put's check.
package replicator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// ErrNoVerifiedSource: no copy of the object verified on its way out, so
// nothing was copied (never is a copy made from unproven bytes).
var ErrNoVerifiedSource = errors.New("replicator: no copy of the object verifies; nothing is copied from an unverified copy")

// DataPlane is what the replicator needs of the data plane: a proven
// read, a verifying write and a verification.
type DataPlane interface {
	Serve(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (dataplane.Object, error)
	Ingest(ctx context.Context, r io.Reader, h dataplane.IngestHints) (dataplane.IngestResult, error)
	Verify(ctx context.Context, backendID string, addr digest.Address, exp dataplane.Expected) (dataplane.VerifyResult, error)
}

var _ DataPlane = (*dataplane.DataPlane)(nil)

// EventLog is what the replicator needs of the event log.
type EventLog interface {
	AppendTx(ctx context.Context, tx pgx.Tx, batches ...events.Batch) ([]events.Result, error)
}

var _ EventLog = (*events.Log)(nil)

// locations is what the replicator reads of the projections.
type locations interface {
	Location(ctx context.Context, addr digest.Address, backendID string) (catalog.Location, error)
	Locations(ctx context.Context, addr digest.Address) ([]catalog.Location, error)
	AllCopies(ctx context.Context) ([]catalog.Copy, error)
	PackageCopies(ctx context.Context, pkg string) ([]catalog.Copy, error)
}

var _ locations = (*catalog.Catalog)(nil)

// Config configures a [Replicator]. Pool, Log, DataPlane and Policy are
// required; the other fields have defaults.
type Config struct {
	// Pool is the PostgreSQL pool of the log, the projections and the
	// package state.
	Pool *pgxpool.Pool
	// Log is the event log.
	Log EventLog
	// DataPlane reads, writes and verifies bytes.
	DataPlane DataPlane
	// Policy says which objects get further copies, and where.
	Policy Policy
	// Concurrency is how many events one process handles at once.
	// Default 4.
	Concurrency int
	// Actor is the actor of the replicator's events. Default
	// "replicator".
	Actor string
	// Logger receives the replicator's log lines. The zero value logs
	// nothing.
	Logger zerolog.Logger
	// Now is the clock of the gc rows. Default time.Now.
	Now func() time.Time
	// Consumer tunes the JetStream consume loop; Concurrency and Logger
	// come from the fields above.
	Consumer bus.ConsumerOptions
	// JetStream and Topology are where Start consumes (the durable
	// replicate consumer of the events stream). Only Start needs them;
	// Topology defaults to bus.DefaultTopology().
	JetStream jetstream.JetStream
	Topology  bus.Topology
}

// Replicator copies and repairs objects. Handle is its bus.Handler;
// Replicate and Repair do the same without the bus; Start and Stop (of
// the embedded bus.WorkerService: the lifecycle of internal/service) run
// it on the durable replicate consumer of the events stream. Safe for
// concurrent use.
type Replicator struct {
	*bus.WorkerService
	cfg   Config
	locs  locations
	codec *events.Codec
	log   zerolog.Logger
}

// New returns a replicator; nothing runs until Start.
func New(cfg Config) (*Replicator, error) {
	if cfg.Pool == nil || cfg.Log == nil || cfg.DataPlane == nil {
		return nil, errors.New("replicator: Config needs Pool, Log and DataPlane")
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Actor == "" {
		cfg.Actor = "replicator"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Topology.EventsStream == "" {
		cfg.Topology = bus.DefaultTopology()
	}
	r := &Replicator{cfg: cfg, locs: catalog.New(cfg.Pool), codec: events.NewCodec(),
		log: cfg.Logger.With().Str("service", "replicator").Logger()}
	r.WorkerService = bus.NewWorkerService(bus.CommandWorker{
		Name: "replicator", JetStream: cfg.JetStream, Topology: cfg.Topology, Durable: cfg.Topology.ReplicateConsumer,
		Stream: cfg.Topology.EventsStream, Handler: r.Handle, Concurrency: cfg.Concurrency, Logger: r.log, Options: cfg.Consumer,
	})
	return r, nil
}

// envelope is the part of a relayed event (relay.Message) the replicator
// reads: the payload is decoded from its CBOR, the log's own bytes.
type envelope struct {
	Sequence    int64       `json:"sequence"`
	Type        events.Type `json:"type"`
	Version     int         `json:"payload_version"`
	PayloadCBOR []byte      `json:"payload_cbor"`
}

// Handle is the bus.Handler of object events. An undecodable event is
// rejected (dead letter); a failure to read, write or record is retried
// with backoff, and so is an object no copy of which verifies (a repair
// may bring one back).
func (r *Replicator) Handle(ctx context.Context, m bus.Message) error {
	var env envelope
	if err := json.Unmarshal(m.Data, &env); err != nil {
		return bus.Reject(fmt.Errorf("replicator: the event is not a relayed event (JSON): %w", err), "malformed")
	}
	p, err := r.codec.DecodePayload(env.Type, env.Version, env.PayloadCBOR)
	if err != nil {
		return bus.Reject(fmt.Errorf("replicator: event %d: %w", env.Sequence, err), "malformed")
	}
	switch p := p.(type) {
	case events.ObjectStoredV1:
		_, err = r.Replicate(ctx, Stored{Address: p.Address, BLAKE3: p.BLAKE3, SHA256: p.SHA256, Size: p.Size, BackendID: p.BackendID}, env.Sequence)
	case events.ObjectRepairedV1:
		if p.Source != events.RepairSourceReupload {
			return nil // a repair from a replica: the copies exist
		}
		_, err = r.Replicate(ctx, Stored{Address: p.Address, BLAKE3: p.BLAKE3, SHA256: p.SHA256, Size: p.Size, BackendID: p.BackendID}, env.Sequence)
	case events.ObjectCorruptV1:
		_, err = r.Repair(ctx, p.Address, p.BackendID, env.Sequence)
	case events.ObjectMissingV1:
		_, err = r.Repair(ctx, p.Address, p.BackendID, env.Sequence)
	case events.RetentionChangedV1:
		_, err = r.ReplicatePackage(ctx, p.Package, env.Sequence)
	default:
		return nil
	}
	if err != nil {
		return bus.Retry(err, 0)
	}
	return nil
}

// ReplicatePackage places the copies the policy asks for of every file
// of package pkg, whose retention class changed (retention.changed,
// sequence seq): a package moved to a class with more copies gets them.
// Objects with no ok copy are skipped.
func (r *Replicator) ReplicatePackage(ctx context.Context, pkg string, seq int64) ([]Copy, error) {
	copies, err := r.locs.PackageCopies(ctx, pkg)
	if err != nil {
		return nil, fmt.Errorf("replicator: %w", err)
	}
	var out []Copy
	done := map[digest.Address]bool{}
	for _, c := range copies {
		if done[c.Address] {
			continue
		}
		l, err := r.locs.Location(ctx, c.Address, c.Backend)
		if err != nil {
			return out, fmt.Errorf("replicator: %w", err)
		}
		if l.State != catalog.LocationOK {
			continue
		}
		done[c.Address] = true
		cs, err := r.Replicate(ctx, Stored{Address: c.Address, BLAKE3: l.BLAKE3[:], SHA256: l.SHA256[:], Size: l.Size, BackendID: c.Backend}, seq)
		out = append(out, cs...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// Stored is an object as an object.stored event records it.
type Stored struct {
	Address        digest.Address
	BLAKE3, SHA256 []byte
	Size           int64
	// BackendID is the backend that holds it.
	BackendID string
}

func (s Stored) expected() (dataplane.Expected, error) {
	if len(s.BLAKE3) != 32 || len(s.SHA256) != 32 {
		return dataplane.Expected{}, fmt.Errorf("replicator: %s: the event's digests are not 32 bytes", s.Address)
	}
	b3, s256 := [32]byte(s.BLAKE3), [32]byte(s.SHA256)
	return dataplane.Expected{BLAKE3: &b3, SHA256: &s256, Size: s.Size}, nil
}

// Copy is one copy the replicator made (or found made).
type Copy struct {
	Target, Source string
	Deduplicated   bool
	// Repaired is set when the target held a damaged copy that the
	// verified bytes replaced.
	Repaired *storage.Repair
	// Duplicate is true when the copy had been recorded before (a
	// redelivered event).
	Duplicate bool
}

// Replicate places the further copies the policy asks for of the object
// o, which object.stored (sequence seq) recorded: it returns the copies
// made. No copy is asked for when no live package of a listed class
// references the object.
func (r *Replicator) Replicate(ctx context.Context, o Stored, seq int64) ([]Copy, error) {
	exp, err := o.expected()
	if err != nil {
		return nil, err
	}
	classes, err := pkgstate.LiveClasses(ctx, r.cfg.Pool, o.Address.String())
	if err != nil {
		return nil, fmt.Errorf("replicator: classes of %s: %w", o.Address, err)
	}
	targets, why := r.cfg.Policy.Targets(o.BackendID, classes)
	var out []Copy
	for _, target := range targets {
		c, err := r.copyTo(ctx, o.Address, exp, o.BackendID, target, why, fmt.Sprintf("replicate:%s@%s:%d", o.Address, target, seq))
		if err != nil {
			return out, err
		}
		out = append(out, c)
	}
	return out, nil
}

// copyTo copies addr to target from the first copy that verifies on its
// way out, preferring source, and records it under cmdID.
func (r *Replicator) copyTo(ctx context.Context, addr digest.Address, exp dataplane.Expected, source, target, why, cmdID string) (Copy, error) {
	log := r.log.With().Str("address", addr.String()).Str("target", target).Logger()
	if l, err := r.locs.Location(ctx, addr, target); err == nil && l.State == catalog.LocationOK {
		return Copy{Target: target, Duplicate: true}, nil // placed before (a redelivery, or another reference)
	} else if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return Copy{}, fmt.Errorf("replicator: %w", err)
	}
	res, src, err := r.fromVerified(ctx, addr, exp, source, target, storage.Condition{})
	if err != nil {
		return Copy{}, err
	}
	c := Copy{Target: target, Source: src, Deduplicated: res.Receipt.Deduplicated, Repaired: res.Receipt.Repaired}
	var payload events.Payload = events.ObjectReplicatedV1{Address: addr, BLAKE3: res.Digests.BLAKE3[:], SHA256: res.Digests.SHA256[:],
		Size: res.Digests.Size, BackendID: target, SourceBackendID: src, Deduplicated: c.Deduplicated, Reason: why}
	if rp := res.Receipt.Repaired; rp != nil {
		payload = events.ObjectRepairedV1{Address: addr, BLAKE3: res.Digests.BLAKE3[:], SHA256: res.Digests.SHA256[:], Size: res.Digests.Size,
			BackendID: target, Was: rp.Was, Detail: rp.Detail, Source: events.RepairSourceReplica(src)}
	}
	dup, err := r.record(ctx, addr, target, res.Digests.Size, cmdID, payload, true)
	if err != nil {
		return c, err
	}
	c.Duplicate = dup
	log.Info().Str("source", src).Bool("deduplicated", c.Deduplicated).Bool("duplicate", dup).Str("why", why).Msg("object replicated")
	return c, nil
}

// fromVerified streams addr from the first ok copy that verifies on its
// way out (prefer first, never target) into target, with a put that
// checks both digests and the size; cond is what is known of target's
// copy. A source whose read fails verification is skipped (the data
// plane records it corrupt); none left is ErrNoVerifiedSource.
func (r *Replicator) fromVerified(ctx context.Context, addr digest.Address, exp dataplane.Expected, prefer, target string, cond storage.Condition) (dataplane.IngestResult, string, error) {
	locs, err := r.locs.Locations(ctx, addr)
	if err != nil {
		return dataplane.IngestResult{}, "", fmt.Errorf("replicator: %w", err)
	}
	var sources []string
	if prefer != "" && prefer != target {
		sources = append(sources, prefer)
	}
	for _, l := range locs {
		if l.State == catalog.LocationOK && l.Backend != target && l.Backend != prefer {
			sources = append(sources, l.Backend)
		}
	}
	var failures []error
	for _, src := range sources {
		res, err := r.copyOnce(ctx, addr, exp, src, target, cond)
		if err == nil {
			return res, src, nil
		}
		if !errors.Is(err, dataplane.ErrCorrupt) && !errors.Is(err, storage.ErrNotFound) {
			return res, src, err
		}
		r.log.Warn().Err(err).Str("address", addr.String()).Str("source", src).Str("target", target).
			Msg("source copy failed verification on its way out; not copied from it")
		failures = append(failures, err)
	}
	if len(failures) == 0 {
		return dataplane.IngestResult{}, "", fmt.Errorf("%w: %s has no ok copy besides %q", ErrNoVerifiedSource, addr, target)
	}
	return dataplane.IngestResult{}, "", fmt.Errorf("%w: %s: %w", ErrNoVerifiedSource, addr, errors.Join(failures...))
}

// copyOnce copies addr from src to target: a proven read into a
// verifying put.
func (r *Replicator) copyOnce(ctx context.Context, addr digest.Address, exp dataplane.Expected, src, target string, cond storage.Condition) (dataplane.IngestResult, error) {
	body, err := r.cfg.DataPlane.Serve(ctx, src, addr, nil, exp)
	if err != nil {
		return dataplane.IngestResult{}, err
	}
	defer body.Close()
	claims := []digest.Address{digest.New(digest.BLAKE3, *exp.BLAKE3), digest.New(digest.SHA256, *exp.SHA256)}
	res, err := r.cfg.DataPlane.Ingest(ctx, body, dataplane.IngestHints{
		Primary: addr.Algorithm(), BackendID: target, Expect: claims, ExpectSize: exp.Size,
		Condition: func(ctx context.Context, _ string, _ digest.Address) (storage.Condition, error) {
			if cond.Damage != "" {
				return cond, nil
			}
			l, err := r.locs.Location(ctx, addr, target)
			switch {
			case errors.Is(err, catalog.ErrNotFound):
				return storage.Condition{}, nil
			case err != nil:
				return storage.Condition{}, err
			case l.State == catalog.LocationCorrupt:
				return storage.Condition{Recorded: true, Damage: storage.DamageCorrupt, Detail: "recorded corrupt"}, nil
			case l.State == catalog.LocationMissing:
				return storage.Condition{Recorded: true, Damage: storage.DamageMissing, Detail: "recorded missing"}, nil
			default:
				return storage.Condition{Recorded: l.State == catalog.LocationOK}, nil
			}
		},
	})
	if err != nil {
		return res, fmt.Errorf("copy %s from %q to %q: %w", addr, src, target, err)
	}
	return res, nil
}

// record appends payload under cmdID and, when keep, makes target's gc
// row live, in one transaction under the package-state lock. dup is true
// when cmdID had been appended before.
func (r *Replicator) record(ctx context.Context, addr digest.Address, target string, size int64, cmdID string, payload events.Payload, keep bool) (dup bool, err error) {
	err = pkgstate.InTx(ctx, r.cfg.Pool, func(tx pgx.Tx) error {
		if keep {
			if err := pkgstate.KeepCopy(ctx, tx, pkgstate.Sized{Key: pkgstate.ObjectKey{Address: addr.String(), Backend: target}, Size: size}, r.cfg.Now().UTC()); err != nil {
				return err
			}
		}
		res, err := r.cfg.Log.AppendTx(ctx, tx, events.Batch{CommandID: cmdID, Events: []events.Draft{{
			SubjectKind: events.SubjectObject, SubjectID: addr.String(), Actor: r.cfg.Actor, Payload: payload,
		}}})
		if err != nil {
			return err
		}
		dup = res[0].Duplicate
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("replicator: record %s on %q: %w", addr, target, err)
	}
	return dup, nil
}

// Repair heals the copy of addr on backend, which object.corrupt or
// object.missing (sequence seq) recorded damaged: the copy is verified
// again, and when it still fails it is replaced by the bytes of another
// copy that verifies on the way out (object.repaired names it). A copy
// that verifies now (repaired meanwhile), a location that is gone, and an
// object with no other ok copy are left alone (ok false).
func (r *Replicator) Repair(ctx context.Context, addr digest.Address, backend string, seq int64) (ok bool, err error) {
	log := r.log.With().Str("address", addr.String()).Str("backend", backend).Logger()
	l, err := r.locs.Location(ctx, addr, backend)
	if errors.Is(err, catalog.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("replicator: %w", err)
	}
	if l.State == catalog.LocationDeleted {
		return false, nil
	}
	exp := dataplane.Expected{BLAKE3: &l.BLAKE3, SHA256: &l.SHA256, Size: l.Size}
	v, err := r.cfg.DataPlane.Verify(ctx, backend, addr, exp)
	if err != nil {
		return false, fmt.Errorf("replicator: verify %s on %q before repairing it: %w", addr, backend, err)
	}
	if v.Verified {
		log.Debug().Msg("the copy verifies now; nothing to repair")
		return false, nil
	}
	cond := storage.Condition{Recorded: true, Damage: storage.DamageCorrupt, Detail: v.Reason}
	if v.Missing {
		cond.Damage = storage.DamageMissing
	}
	res, src, err := r.fromVerified(ctx, addr, exp, "", backend, cond)
	if errors.Is(err, ErrNoVerifiedSource) {
		log.Warn().Err(err).Msg("damaged copy left as it is: no other copy verifies")
		return false, nil
	}
	if err != nil {
		return false, err
	}
	was, detail := cond.Damage, cond.Detail
	if rp := res.Receipt.Repaired; rp != nil {
		was, detail = rp.Was, rp.Detail
	}
	if _, err := r.record(ctx, addr, backend, res.Digests.Size, fmt.Sprintf("repair:%s@%s:%d", addr, backend, seq),
		events.ObjectRepairedV1{Address: addr, BLAKE3: res.Digests.BLAKE3[:], SHA256: res.Digests.SHA256[:], Size: res.Digests.Size,
			BackendID: backend, Was: was, Detail: detail, Source: events.RepairSourceReplica(src)}, false); err != nil {
		return false, err
	}
	log.Info().Str("source", src).Str("was", was).Msg("damaged copy repaired from a verified copy")
	return true, nil
}

// CopyAll copies every object that has an ok copy somewhere to backend
// target, whatever its class (moving a store from one backend to
// another: `artifactstore replicate --copy-all --to ID`). It returns how
// many objects it copied and how many target held already.
func (r *Replicator) CopyAll(ctx context.Context, target string) (copied, present int, err error) {
	all, err := r.locs.AllCopies(ctx)
	if err != nil {
		return 0, 0, err
	}
	done := map[digest.Address]bool{}
	for _, c := range all {
		if done[c.Address] || c.Backend == target {
			continue
		}
		done[c.Address] = true
		l, err := r.locs.Location(ctx, c.Address, c.Backend)
		if err != nil {
			return copied, present, fmt.Errorf("replicator: %w", err)
		}
		exp := dataplane.Expected{BLAKE3: &l.BLAKE3, SHA256: &l.SHA256, Size: l.Size}
		cp, err := r.copyTo(ctx, c.Address, exp, c.Backend, target, "copy of every object to "+target,
			fmt.Sprintf("copy-all:%s@%s:%d", c.Address, target, r.cfg.Now().UnixMicro()))
		if err != nil {
			return copied, present, err
		}
		if cp.Duplicate || cp.Deduplicated {
			present++
		} else {
			copied++
		}
	}
	return copied, present, nil
}
