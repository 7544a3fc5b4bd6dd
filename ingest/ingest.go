// Package ingest is the ingester worker: it pulls ingest and seal commands
// from the durable JetStream consumer, streams each blob through the data
// plane (both digests computed over exactly the bytes written, written
// once, memory bounded), checks the producer's claims and the staging
// store's SHA-256 against its own, commits the events idempotently by
// command id, replies to the producer, and deletes the staged object.
//
// # Order of effects
//
// For an ingest: decode and validate the command; if its command id is
// already in the log, reply with the first outcome and stop; pre-check
// the package (retention class, metadata schema, sealed) so that a refused
// ingest stores no bytes; stream the blob into the data plane, which
// returns only when the object and its directory are fsynced; hand the
// decision to the committer, which takes it again under a PostgreSQL
// advisory lock (so that two ingesters never both create a package) and
// commits the events with the command-side state in one transaction
// (taking each stored object's gc_objects row FOR UPDATE and writing the
// bytes again when the reaper deleted them after the put; see
// keepObjects); delete the staged object; reply; return, and the consume loop
// double-acks. Nothing is acknowledged or reported before the fsync and
// the commit. (The reply goes out just before the ack because the consume
// loop acks after the handler returns; a reply followed by a lost ack only
// leads to a redelivery, which finds the command id in the log and replies
// the same outcome again.)
//
// # Repairs
//
// A blob whose content is already stored is not simply deduplicated
// against: the data plane first asks what the records say of the stored
// copy (condition: the gc row and the projected location state), then
// checks the copy itself (size, sampled chunk groups proven against its
// tree; see storage.Putter). A copy recorded corrupt or missing, or that
// fails the check, is replaced by the blob's verified bytes, and a copy
// the records hold but the backend lost is stored again: the ingest then
// appends object.repaired instead of object.stored and replies
// "repaired". A copy the put found missing whose gc row, under its lock
// at commit, is not live was reaped, not lost: that is a plain store.
//
// # Rejections
//
// A malformed or oversized command, an invalid path or package name, an
// unknown retention class, metadata a schema refuses, a wrong size or
// digest claim, a staged object whose SHA-256 differs, a blob over the
// size limit, a package that is sealed: the ingester commits an
// ingest.rejected event (under the command id, or "nats-<stream>-<seq>"
// when the command has none), replies with the code and reason, and the
// message is dead-lettered and terminated, never redelivered. A mismatch
// is caught before the object becomes visible, so no bytes are stored.
// Only a race (the package sealed between pre-check and commit) can leave
// a stored object that no event references; such bytes are the reaper's
// to collect.
//
// # Open and sealed packages
//
// In an open package, ingesting a different object at an existing path
// replaces the path's object: a new file.added event names the new object
// (the old object stays in the log's history and on disk until retention
// removes it). Ingesting the same object at the same path appends only an
// object.stored event (deduplicated). In a sealed package, a new path or a
// different object at an existing path is refused (package_sealed,
// path_conflict); the same object at its existing path is accepted as a
// no-op, so that a retried upload of a sealed package succeeds.
package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/staging"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// DataPlane is the part of the data plane the ingester uses: storing a
// blob, asking whether an object's bytes are still there (see
// keepObjects), and its backends' free space.
type DataPlane interface {
	Ingest(ctx context.Context, r io.Reader, h dataplane.IngestHints) (dataplane.IngestResult, error)
	Head(ctx context.Context, backendID string, addr digest.Address) (storage.ObjectInfo, error)
	// Health and DefaultBackend tell the free space of the backend a blob
	// goes to, checked before the blob is written.
	Health(ctx context.Context) map[string]storage.Health
	DefaultBackend() string
}

var _ DataPlane = (*dataplane.DataPlane)(nil)

// Config configures an Ingester. Pool, Log, Codec, DataPlane, NATS and
// JetStream are required; every other field has a default.
type Config struct {
	// Pool is the PostgreSQL pool of the log and the ingest state.
	Pool *pgxpool.Pool
	// Log is the event log.
	Log *events.Log
	// Codec decodes CBOR commands and encodes replies.
	Codec *events.Codec
	// DataPlane stores blobs.
	DataPlane DataPlane
	// NATS is the connection replies are published on.
	NATS *nats.Conn
	// JetStream is the JetStream context of the consumer and the staging
	// bucket.
	JetStream jetstream.JetStream
	// Topology names the streams, consumer and bucket. Default
	// bus.DefaultTopology().
	Topology bus.Topology
	// EnsureTopology creates or updates the topology at Start.
	EnsureTopology bool

	// Concurrency is how many commands are handled at once by this
	// process. Default 32: a handler mostly waits (fsync, the group
	// commit), so more handlers than concurrent producers let fsyncs
	// overlap and commit groups grow; each holds at most one inline blob
	// (64 KiB) and one copy buffer (1 MiB).
	Concurrency int
	// MaxBlobSize caps one blob; a larger one is rejected (too_large).
	// Default 16 GiB; < 0 means unlimited.
	MaxBlobSize int64
	// Primary is the algorithm of content addresses. Default BLAKE3.
	Primary digest.Algorithm
	// BackendID names the backend blobs go to; "" is the data plane's
	// default.
	BackendID string
	// CommitWindow is how long the committer gathers jobs before it
	// commits them in one transaction. Default 2 ms.
	CommitWindow time.Duration
	// MaxCommitBatch caps the jobs of one commit. Default 256.
	MaxCommitBatch int
	// CommitTimeout bounds one commit transaction. Default 30 s.
	CommitTimeout time.Duration
	// ConfigMaxAge is how old the cached retention classes and metadata
	// schemas used by the pre-check may be (the commit always reads them
	// afresh). Default 2 s.
	ConfigMaxAge time.Duration
	// RetryDelay, when positive, is the redelivery delay after a transient
	// failure (database, NATS or disk). Default 0: the consume loop's
	// exponential backoff with jitter, which with the topology's
	// MaxDeliver sizes the retry budget (bus.RetryBudget).
	RetryDelay time.Duration
	// StorageReserve is how many bytes of the backend's free space an
	// ingest may not use: a blob of known size that does not fit in the
	// free space minus the reserve is refused (insufficient_storage)
	// before any byte is written. Default 0.
	StorageReserve int64
	// UploadIdle is the progress rule's period for a staged upload still
	// in progress (a command with upload): an upload during which the
	// handler waited for its next chunk at two consecutive ticks of this
	// period without receiving one is given up (staged_upload_abandoned,
	// its chunks purged), so that a producer that died mid-upload holds
	// no handler for ever. Default 2 minutes.
	UploadIdle time.Duration
	// uploadTicks, in tests, replaces the ticker of UploadIdle.
	uploadTicks <-chan time.Time
	// loseReply, in tests, loses the reply of a command (as a JetStream
	// cluster does when the node that took it dies) when it returns true.
	loseReply func(commandID string, m bus.Message) bool
	// Actor is the actor of events when a command names no producer.
	// Default "ingest".
	Actor string
	// Consumer tunes the consume loop; Concurrency and Logger are set from
	// this config.
	Consumer bus.ConsumerOptions
	// Metrics counts ingested bytes and objects, rejections and handling
	// time; nil counts nothing.
	Metrics *Metrics
	// Logger receives the ingester's log lines.
	Logger zerolog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if c.Pool == nil || c.Log == nil || c.Codec == nil || c.DataPlane == nil || c.NATS == nil || c.JetStream == nil {
		return c, errors.New("ingest: Config needs Pool, Log, Codec, DataPlane, NATS and JetStream")
	}
	if c.Topology.CommandsStream == "" {
		c.Topology = bus.DefaultTopology()
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 32
	}
	if c.MaxBlobSize == 0 {
		c.MaxBlobSize = 16 << 30
	}
	if c.Primary == 0 {
		c.Primary = digest.BLAKE3
	}
	if c.CommitWindow <= 0 {
		c.CommitWindow = 2 * time.Millisecond
	}
	if c.MaxCommitBatch <= 0 {
		c.MaxCommitBatch = 256
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 30 * time.Second
	}
	if c.ConfigMaxAge <= 0 {
		c.ConfigMaxAge = 2 * time.Second
	}
	if c.RetryDelay < 0 {
		c.RetryDelay = 0
	}
	if c.StorageReserve < 0 {
		c.StorageReserve = 0
	}
	if c.UploadIdle <= 0 {
		c.UploadIdle = 2 * time.Minute
	}
	if c.Actor == "" {
		c.Actor = "ingest"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Ingester is the ingest worker. Start it once; Stop is safe twice and
// before Start.
type Ingester struct {
	cfg     Config
	log     zerolog.Logger
	dec     *commands.Decoder
	config  *configCache
	commit  *committer
	staging jetstream.ObjectStore
	// slots bounds the files of batches stored at once, across batches.
	slots chan struct{}
	// locations reads the projected state of stored copies (condition).
	locations locationReader

	mu       sync.Mutex
	consumer *bus.Consumer
	stop     chan struct{}
	stopped  bool
}

// New returns an ingester; nothing runs until Start.
func New(cfg Config) (*Ingester, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ing := &Ingester{
		cfg:    cfg,
		log:    cfg.Logger.With().Str("service", "ingest").Logger(),
		dec:    commands.NewDecoder(cfg.Codec),
		config: newConfigCache(cfg.ConfigMaxAge, cfg.Now),
		stop:   make(chan struct{}),
		slots:  make(chan struct{}, cfg.Concurrency),

		locations: catalog.New(cfg.Pool),
	}
	ing.commit = newCommitter(ing)
	return ing, nil
}

// Start creates the topology (when configured), binds the staging bucket
// and the durable consumer, and returns once commands are being pulled.
func (ing *Ingester) Start(ctx context.Context) error {
	ing.mu.Lock()
	defer ing.mu.Unlock()
	switch {
	case ing.stopped:
		return fmt.Errorf("ingest: %w", service.ErrStopped)
	case ing.consumer != nil:
		return fmt.Errorf("ingest: %w", service.ErrStarted)
	}
	t := ing.cfg.Topology
	if ing.cfg.EnsureTopology {
		if err := bus.EnsureTopology(ctx, ing.cfg.JetStream, t); err != nil {
			return err
		}
	}
	obs, err := ing.cfg.JetStream.ObjectStore(ctx, t.StagingBucket)
	if err != nil {
		return fmt.Errorf("ingest: open staging bucket %s (create the topology first): %w", t.StagingBucket, err)
	}
	ing.staging = obs
	opts := ing.cfg.Consumer
	opts.Concurrency = ing.cfg.Concurrency
	opts.Logger = ing.cfg.Logger
	if opts.DeadLetterSubjectPrefix == "" {
		opts.DeadLetterSubjectPrefix = t.DeadLetterSubjectPrefix()
	}
	if opts.Answer == nil {
		opts.Answer = ing.answer
	}
	cons, err := bus.NewConsumer(ing.cfg.JetStream, t.CommandsStream, t.IngestConsumer, ing.handle, opts)
	if err != nil {
		return err
	}
	go ing.commit.run(ing.stop)
	if err := cons.Start(ctx); err != nil {
		close(ing.stop)
		<-ing.commit.done
		ing.stopped = true
		return err
	}
	ing.consumer = cons
	ing.log.Info().Int("concurrency", ing.cfg.Concurrency).Int64("max_blob_size", ing.cfg.MaxBlobSize).Msg("ingester started")
	return nil
}

// Stop stops pulling, lets in-flight commands finish until ctx is done
// (then cancels them; their messages are nak'd and redelivered), and stops
// the committer. Safe to call twice and before Start.
func (ing *Ingester) Stop(ctx context.Context) error {
	ing.mu.Lock()
	cons := ing.consumer
	first := !ing.stopped
	ing.stopped = true
	ing.mu.Unlock()
	var err error
	if cons != nil {
		err = cons.Stop(ctx)
	}
	if first && cons != nil {
		close(ing.stop)
		<-ing.commit.done
		ing.log.Info().Msg("ingester stopped")
	}
	return err
}

// handle is the consume loop's handler: it dispatches on the subject.
func (ing *Ingester) handle(ctx context.Context, m bus.Message) error {
	defer func(start time.Time) { ing.cfg.Metrics.handled(time.Since(start)) }(time.Now())
	t := ing.cfg.Topology
	d := newDelivery(m)
	switch m.Subject {
	case t.Subject(bus.CmdIngest):
		return ing.handleIngest(ctx, d)
	case t.Subject(bus.CmdSeal):
		return ing.handleSeal(ctx, d)
	case t.Subject(bus.CmdIngestBatch):
		return ing.handleBatch(ctx, d)
	default:
		d.id = fallbackID(m)
		return ing.reject(ctx, d, commands.Rejectf(commands.CodeMalformed,
			"subject %s is not a command this ingester handles; publish on %s, %s or %s", m.Subject, t.Subject(bus.CmdIngest), t.Subject(bus.CmdIngestBatch), t.Subject(bus.CmdSeal)))
	}
}

func (ing *Ingester) actor(producer string) string {
	if producer != "" {
		return producer
	}
	return ing.cfg.Actor
}

func (ing *Ingester) handleIngest(ctx context.Context, d *delivery) error {
	c, rej, err := decode(d, ing.dec.DecodeIngest, ingestNames)
	if err != nil {
		return err
	}
	if rej != nil {
		return ing.reject(ctx, d, rej)
	}
	id := d.id
	log := ing.log.With().Str("command_id", id).Str("package", c.Package).Str("path", c.Path).Logger()

	// One round trip: is the command id already in the log, and would the
	// commit refuse this ingest? A known command id gets its first outcome
	// again; a refusal costs no stored bytes.
	known, rej, err := ing.precheck(ctx, id, c)
	if err != nil {
		return ing.transient(ctx, postgresDependency(err), "pre-check", err)
	}
	if known {
		if done, err := ing.replyIfDone(ctx, d); done || err != nil {
			return err
		}
	}
	if rej != nil {
		return ing.reject(ctx, d, rej)
	}

	hints := ing.hints(c)
	var (
		r         io.Reader
		stagedSHA digest.Address
		need      int64
		res       dataplane.IngestResult
	)
	switch {
	case c.Upload != "":
		// The upload is still being written: read its chunks as they
		// arrive. Its size is known only at the end, so the claimed one
		// is checked against the limit and the free space now.
		if c.ExpectSize != nil {
			need = *c.ExpectSize
			if hints.MaxSize > 0 && need > hints.MaxSize {
				return ing.reject(ctx, d, tooLarge(need, hints.MaxSize))
			}
		}
		if err := ing.checkSpace(ctx, hints, need); err != nil {
			return err
		}
		res, stagedSHA, err = ing.ingestUpload(ctx, c, hints)
	case c.Inline != nil:
		need = int64(len(c.Inline))
		if err := ing.checkSpace(ctx, hints, need); err != nil {
			return err
		}
		r = bytes.NewReader(c.Inline)
	default:
		info, err := ing.staging.GetInfo(ctx, c.Staged)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			// A replica behind its leader answered the direct get (a
			// cluster): only the leader can say the object is missing.
			info, err = staging.LeaderInfo(ctx, ing.cfg.NATS, ing.cfg.Topology.StagingBucket, c.Staged)
		}
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return ing.reject(ctx, d, commands.Rejectf(commands.CodeStagedMissing,
				"staged object %q is not in bucket %s (expired after %s, deleted, or never put); stage the blob again and send a new command",
				c.Staged, ing.cfg.Topology.StagingBucket, ing.cfg.Topology.StagingTTL))
		}
		if err != nil {
			return ing.transient(ctx, bus.DependencyNATS, "staged object info", err)
		}
		stagedSHA, err = staging.ParseDigest(info.Digest)
		if err != nil {
			return ing.reject(ctx, d, commands.Rejectf(commands.CodeStagedDigest,
				"staged object %q has no usable SHA-256 digest (%v); stage it again with the JetStream object store", c.Staged, err))
		}
		if hints.MaxSize > 0 && int64(info.Size) > hints.MaxSize {
			return ing.reject(ctx, d, tooLarge(int64(info.Size), hints.MaxSize))
		}
		need = int64(info.Size)
		if err := ing.checkSpace(ctx, hints, need); err != nil {
			return err
		}
		hints.Expect = append(hints.Expect, stagedSHA)
		obj, err := staging.Open(ctx, ing.cfg.JetStream, ing.cfg.Topology.StagingBucket, info)
		if err != nil {
			return ing.transient(ctx, bus.DependencyNATS, "open staged object", err)
		}
		defer obj.Close()
		r = obj
	}
	if r != nil {
		res, err = ing.cfg.DataPlane.Ingest(ctx, r, hints)
	}
	if err != nil {
		if errors.Is(err, storage.ErrInsufficientStorage) {
			// Concurrent ingests passed the check together, or the disk
			// filled from elsewhere.
			if e := ing.spaceShortage(ctx, hints, need); e != nil {
				return ing.noSpace(e)
			}
			return ing.noSpace(fmt.Errorf("ingest: store blob of %s (%d bytes): %w", c.Path, need, err))
		}
		if rej := ing.classifyStoreError(err, c, stagedSHA, hints.MaxSize); rej != nil {
			return ing.reject(ctx, d, rej)
		}
		return ing.transient(ctx, storeDependency(err), "store blob", err)
	}
	log.Debug().Str("address", res.Address.String()).Int64("size", res.Digests.Size).Bool("deduplicated", res.Receipt.Deduplicated).Msg("blob durable")

	out := ing.commit.submit(ctx, &job{kind: jobIngest, commandID: id, actor: ing.actor(c.Producer),
		ingest: c, stored: res, pkg: c.Package, path: c.Path})
	return ing.finish(ctx, d, out)
}

// maxUploadRestarts bounds how often one handler starts reading an
// upload again after its writer restarted it (the writer itself gives up
// after a few attempts).
const maxUploadRestarts = 16

// ingestUpload stores the blob of an upload still in progress, reading
// its chunks as they arrive: hashing, the tree and the write go on while
// the producer uploads. The SHA-256 the producer recorded comes with the
// last chunk and is checked, like every claim, after the last byte and
// before the object is committed. When the producer restarts its upload,
// the partial write is aborted and the new attempt read from its start.
// It returns the recorded SHA-256 (zero before the last chunk).
func (ing *Ingester) ingestUpload(ctx context.Context, c commands.Ingest, hints dataplane.IngestHints) (dataplane.IngestResult, digest.Address, error) {
	idle := ing.cfg.uploadTicks
	if idle == nil {
		t := time.NewTicker(ing.cfg.UploadIdle)
		defer t.Stop()
		idle = t.C
	}
	up, err := staging.OpenUpload(ctx, ing.cfg.JetStream, ing.cfg.Topology.StagingBucket, c.Upload, staging.UploadOptions{Idle: idle})
	if err != nil {
		return dataplane.IngestResult{}, digest.Address{}, err
	}
	defer up.Close()
	hints.ExpectAtEnd = func() []digest.Address {
		if a, ok := up.Digest(); ok {
			return []digest.Address{a}
		}
		return nil
	}
	for restarts := 0; ; restarts++ {
		res, err := ing.cfg.DataPlane.Ingest(ctx, up, hints)
		if errors.Is(err, staging.ErrRestarted) && restarts < maxUploadRestarts {
			ing.log.Info().Str("command_id", c.CommandID).Msg("the producer restarted its upload; reading it again")
			continue
		}
		sha, _ := up.Digest()
		return res, sha, err
	}
}

// hints are the data plane's hints for the blob of c.
func (ing *Ingester) hints(c commands.Ingest) dataplane.IngestHints {
	h := dataplane.IngestHints{
		Primary: ing.cfg.Primary, BackendID: ing.cfg.BackendID,
		Expect: append([]digest.Address(nil), c.Expect...), ExpectSize: storage.NoSizeClaim,
		Condition: ing.condition,
	}
	if ing.cfg.MaxBlobSize > 0 {
		h.MaxSize = ing.cfg.MaxBlobSize
	}
	if c.ExpectSize != nil {
		h.ExpectSize = *c.ExpectSize
	}
	return h
}

func tooLarge(size, limit int64) *commands.Error {
	return commands.Rejectf(commands.CodeTooLarge, "blob of %d bytes is larger than this ingester's limit of %d bytes; split it or ask the operator to raise --max-blob-size", size, limit)
}

// classifyStoreError turns a data-plane failure caused by the command into
// a rejection; nil means the failure is transient.
func (ing *Ingester) classifyStoreError(err error, c commands.Ingest, stagedSHA digest.Address, maxSize int64) *commands.Error {
	var mm *storage.MismatchError
	switch {
	case errors.As(err, &mm):
		claimed := func(a digest.Address) bool {
			for _, e := range c.Expect {
				if e == a {
					return true
				}
			}
			return false
		}
		for _, w := range mm.WrongDigests {
			if w == stagedSHA && !claimed(w) {
				return commands.Rejectf(commands.CodeStagedDigest,
					"the staging store recorded %s for object %q but its bytes are %s; nothing was stored — stage the blob again",
					stagedSHA, c.Staged, mm.Actual.Address(digest.SHA256))
			}
		}
		code := commands.CodeDigestMismatch
		if len(mm.WrongDigests) == 0 {
			code = commands.CodeSizeMismatch
		}
		return &commands.Error{Code: code, Reason: mm.Error()}
	case errors.Is(err, storage.ErrDigestMismatch):
		return commands.Rejectf(commands.CodeDigestMismatch, "%v", err)
	case errors.Is(err, storage.ErrSizeMismatch):
		return commands.Rejectf(commands.CodeSizeMismatch, "%v", err)
	case errors.Is(err, storage.ErrTooLarge):
		return tooLarge(maxSize+1, maxSize)
	case errors.Is(err, staging.ErrAbandoned):
		return commands.Rejectf(commands.CodeUploadAbandoned,
			"the upload of staged object %q stopped before its end (%v); nothing was stored — put the file again", c.Staged, err)
	case errors.Is(err, staging.ErrRestarted):
		return commands.Rejectf(commands.CodeUploadAbandoned,
			"the upload of staged object %q restarted more than %d times; nothing was stored — put the file again", c.Staged, maxUploadRestarts)
	case errors.Is(err, staging.ErrCorrupt):
		return commands.Rejectf(commands.CodeStagedDigest,
			"staged object %q is corrupt (%v); nothing was stored — stage the blob again", c.Staged, err)
	}
	return nil
}

func (ing *Ingester) handleSeal(ctx context.Context, d *delivery) error {
	c, rej, err := decode(d, ing.dec.DecodeSeal, sealNames)
	if err != nil {
		return err
	}
	if rej != nil {
		return ing.reject(ctx, d, rej)
	}
	out := ing.commit.submit(ctx, &job{kind: jobSeal, commandID: d.id, actor: ing.actor(c.Producer), seal: c, pkg: c.Package})
	return ing.finish(ctx, d, out)
}

// replyIfDone replies with the first outcome when d's command id is in
// the log.
func (ing *Ingester) replyIfDone(ctx context.Context, d *delivery) (bool, error) {
	evs, err := ing.cfg.Log.ByCommand(ctx, d.id)
	if errors.Is(err, events.ErrCommandNotFound) {
		return false, nil
	}
	if err != nil {
		return true, ing.transient(ctx, postgresDependency(err), "look up command", err)
	}
	rep, rej, err := replyFromEvents(ing.cfg.Codec, d.id, evs)
	if err != nil {
		return true, ing.transient(ctx, "", "rebuild reply", err)
	}
	return true, ing.finish(ctx, d, outcome{reply: rep, rejected: rej})
}

// precheck reads, outside the commit lock and in one round trip, whether
// id is already in the log and the package's state and configuration, and
// returns what the commit would refuse. The commit decides again under the
// lock.
func (ing *Ingester) precheck(ctx context.Context, id string, c commands.Ingest) (known bool, rej *commands.Error, err error) {
	kn, rejs, err := ing.precheckMany(ctx, []string{id}, []commands.Ingest{c})
	if err != nil {
		return false, nil, err
	}
	return kn[id], rejs[0], nil
}

// precheckMany is precheck for several ingests (ids[i] is the command id
// of cs[i]) in one round trip: the command ids already in the log, and
// what the commit would refuse of each.
func (ing *Ingester) precheckMany(ctx context.Context, ids []string, cs []commands.Ingest) (known map[string]bool, rejs []*commands.Error, err error) {
	known = map[string]bool{}
	b := &pgx.Batch{}
	b.Queue(`SELECT command_id FROM commands WHERE command_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return fmt.Errorf("look up command ids: %w", err)
			}
			known[id] = true
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("look up command ids: %w", err)
		}
		return nil
	})
	cfg := ing.config.cachedRecent()
	var loadCfg func() (*config, error)
	if cfg == nil {
		loadCfg = ing.config.queueLoad(b)
	}
	jobs := make([]*job, len(cs))
	for i, c := range cs {
		jobs[i] = &job{kind: jobIngest, commandID: ids[i], pkg: c.Package, path: c.Path}
	}
	st := queueState(b, ing.cfg.Now(), jobs)
	if err := ing.cfg.Pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, err
	}
	if loadCfg != nil {
		if cfg, err = loadCfg(); err != nil {
			return nil, nil, err
		}
	}
	st.cfg = cfg
	rejs = make([]*commands.Error, len(cs))
	for i, c := range cs {
		rejs[i] = st.precheck(c)
	}
	return known, rejs, nil
}

// reject commits the rejection event of d, replies, and returns the
// error that dead-letters and terminates the message.
func (ing *Ingester) reject(ctx context.Context, d *delivery, rej *commands.Error) error {
	ing.log.Info().Str("command_id", d.id).Str("code", rej.Code).Str("reason", rej.Reason).Msg("rejecting command")
	out := ing.commit.submit(ctx, &job{kind: jobReject, commandID: d.id, actor: ing.cfg.Actor, reject: rej, pkg: d.pkg, path: d.path})
	return ing.finish(ctx, d, out)
}

// finish deletes the staged object of a committed outcome (whatever the
// outcome: a rejected blob must be staged again anyway), replies, and
// returns the handler's verdict. The staged object goes first so that a
// producer holding a reply knows the staging space is free.
func (ing *Ingester) finish(ctx context.Context, d *delivery, out outcome) error {
	if out.err != nil {
		return ing.transient(ctx, postgresDependency(out.err), "commit", out.err)
	}
	ing.cfg.Metrics.outcome(out.reply)
	body, err := commands.Encode(ing.cfg.Codec, out.reply, d.json)
	if err != nil {
		return ing.transient(ctx, "", "encode reply", err)
	}
	switch {
	case d.upload != "" && staging.ValidUpload(d.upload):
		ing.purgeUpload(ctx, d.staged, d.upload)
	case d.staged != "":
		ing.deleteStaged(ctx, d.staged)
	}
	if ing.cfg.loseReply != nil && ing.cfg.loseReply(d.id, d.msg) {
		ing.log.Warn().Str("command_id", d.id).Msg("test: reply lost")
	} else if err := bus.Reply(ing.cfg.NATS, d.msg.ReplyTo, body, d.contentType()); err != nil {
		// The outcome is committed: a redelivery finds it in the log and
		// answers it again, once NATS takes messages.
		return ing.transient(ctx, bus.DependencyNATS, "reply", err)
	}
	if out.rejected != nil {
		return bus.Reject(out.rejected, out.rejected.Code)
	}
	return nil
}

// stagedDeleteTimeout bounds the delete of a staged object: purging the
// chunks of a large blob takes longer than JetStream's default 5 s.
const stagedDeleteTimeout = 2 * time.Minute

// deleteStaged deletes a staged object once its command's outcome is
// committed; a failure leaves it to the staging janitor. A delete cut
// short by a lost connection is made again on the new one (deleting twice
// is harmless) rather than waited out: its answer never comes, and the
// command's reply and ack wait behind it. So is one unanswered within
// bus.AttemptTimeout: on a cluster the node leading the bucket's stream
// may go away while this connection stays up.
func (ing *Ingester) deleteStaged(ctx context.Context, staged string) {
	dctx, cancel := context.WithTimeout(ctx, stagedDeleteTimeout)
	defer cancel()
	err := bus.RetryTransient(dctx, stagedDeleteTimeout, func(ctx context.Context) error {
		return bus.RetryAcrossReconnects(ctx, ing.cfg.JetStream.Conn(), func(ctx context.Context) error {
			return ing.staging.Delete(ctx, staged)
		})
	}, nil)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		ing.log.Warn().Err(err).Str("staged", staged).Msg("delete of the staged object failed; the staging janitor removes it")
	}
}

// purgeUpload removes the chunks and the info of an upload that was in
// progress when its command came, once the outcome is committed, like
// deleteStaged; chunks its producer writes after this are the staging
// janitor's.
func (ing *Ingester) purgeUpload(ctx context.Context, staged, upload string) {
	dctx, cancel := context.WithTimeout(ctx, stagedDeleteTimeout)
	defer cancel()
	err := bus.RetryAcrossReconnects(dctx, ing.cfg.JetStream.Conn(), func(ctx context.Context) error {
		return staging.PurgeUpload(ctx, ing.cfg.JetStream, ing.cfg.Topology.StagingBucket, staged, upload)
	})
	if err != nil {
		ing.log.Warn().Err(err).Str("staged", staged).Str("upload", upload).Msg("purge of the staged upload failed; the staging janitor removes it")
	}
}

// transient maps a failure that is not the command's fault to a
// redelivery with the consume loop's backoff (or after RetryDelay when
// set), naming the dependency that failed ("" when unknown), or to the
// context's error when stopping. When the retries run out, the consume
// loop answers the command as unavailable with that dependency.
func (ing *Ingester) transient(ctx context.Context, dependency, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("ingest: %s: %w", what, err)
	}
	ing.log.Warn().Err(err).Str("step", what).Str("dependency", dependency).Msg("transient failure; the command will be redelivered")
	return &bus.RetryError{Err: fmt.Errorf("ingest: %s: %w", what, err), Delay: ing.cfg.RetryDelay, Dependency: dependency}
}

// storeDependency names what failed when storing a blob: NATS when the
// staged object could not be read, PostgreSQL when the records of the
// stored copy could not (see condition), else the storage backend.
func storeDependency(err error) string {
	if errors.Is(err, staging.ErrRead) {
		return bus.DependencyNATS
	}
	if errors.Is(err, errRecords) {
		return bus.DependencyPostgres
	}
	return bus.DependencyStorage
}
