package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// committer gathers the jobs of concurrent handlers for a short window and
// commits them in one transaction (group commit): appends are serialised
// by the log, so one transaction per command would cap throughput at one
// commit latency per command.
type committer struct {
	ing *Ingester
	// jobs carries the jobs of one command: one, or the files of a batch,
	// which enter the same group.
	jobs chan []*job
	done chan struct{}
}

func newCommitter(ing *Ingester) *committer {
	return &committer{ing: ing, jobs: make(chan []*job), done: make(chan struct{})}
}

// submit hands j to the committer and waits for its outcome. The commit
// itself is not cancelled by ctx (a decision half-taken is worse than a
// late one); only the wait is.
func (c *committer) submit(ctx context.Context, j *job) outcome {
	return c.submitAll(ctx, []*job{j})[0]
}

// submitAll hands jobs to the committer together, so that they are
// committed in one group (a batch is never split across groups), and
// waits for their outcomes, in order.
func (c *committer) submitAll(ctx context.Context, jobs []*job) []outcome {
	outs := make([]outcome, len(jobs))
	now := time.Now()
	for _, j := range jobs {
		j.done = make(chan outcome, 1)
		j.submitted = now
	}
	fail := func(err error) []outcome {
		for i := range outs {
			outs[i] = outcome{err: err}
		}
		return outs
	}
	select {
	case c.jobs <- jobs:
	case <-ctx.Done():
		return fail(context.Cause(ctx))
	}
	for i, j := range jobs {
		select {
		case outs[i] = <-j.done:
		case <-ctx.Done():
			return fail(context.Cause(ctx))
		}
	}
	return outs
}

// run commits groups until stop is closed and no job is waiting.
//
// A group is the first waiting job and every job that arrives until that
// first job has waited CommitWindow, up to MaxCommitBatch jobs (the jobs
// of one batch stay together, so a group may end a batch beyond it). Under load, jobs queue while a commit
// runs, so the next group is taken at once, without waiting the window
// again: the window only gathers companions for a job that would otherwise
// commit alone.
func (c *committer) run(stop <-chan struct{}) {
	defer close(c.done)
	cfg := c.ing.cfg
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var group []*job
		select {
		case group = <-c.jobs:
		case <-stop:
			return
		}
		timer.Reset(max(time.Until(group[0].submitted.Add(cfg.CommitWindow)), 0))
	gather:
		for len(group) < cfg.MaxCommitBatch {
			select {
			case js := <-c.jobs:
				group = append(group, js...)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		// Take what queued meanwhile too.
	drain:
		for len(group) < cfg.MaxCommitBatch {
			select {
			case js := <-c.jobs:
				group = append(group, js...)
			default:
				break drain
			}
		}
		start := time.Now()
		c.commit(group)
		took := time.Since(start)
		c.ing.cfg.Metrics.committed(len(group), took)
		c.ing.log.Debug().Int("jobs", len(group)).Dur("took", took).Msg("group committed")
	}
}

// commit commits a group; when the group's transaction fails, each job is
// retried alone, so that one bad job cannot fail the others.
func (c *committer) commit(group []*job) {
	ctx, cancel := context.WithTimeout(context.Background(), c.ing.cfg.CommitTimeout)
	defer cancel()
	outs, err := c.commitGroup(ctx, group)
	if err == nil {
		for i, j := range group {
			j.done <- outs[i]
		}
		return
	}
	if len(group) == 1 {
		group[0].done <- outcome{err: err}
		return
	}
	c.ing.log.Warn().Err(err).Int("jobs", len(group)).Msg("group commit failed; committing its jobs one by one")
	for _, j := range group {
		ctx, cancel := context.WithTimeout(context.Background(), c.ing.cfg.CommitTimeout)
		outs, err := c.commitGroup(ctx, []*job{j})
		cancel()
		if err != nil {
			j.done <- outcome{err: err}
			continue
		}
		j.done <- outs[0]
	}
}

// commitGroup decides and commits every job of group in one transaction,
// in two round trips whatever the group's size: read (BEGIN, the
// package-state lock, the log head's lock and, under them, every read the
// decisions need), decide (in memory), then append and write together
// (the events, the state writes and COMMIT). The locks are held from the
// read to the commit, so each round trip saved is throughput for every
// ingester.
func (c *committer) commitGroup(ctx context.Context, group []*job) ([]outcome, error) {
	ing := c.ing
	var g *groupPlan
	err := runGroupTx(ctx, ing.cfg.Pool, func(tx *groupTx) error {
		now := ing.cfg.Now().UTC()
		r, err := c.read(ctx, tx, group, now)
		if err != nil {
			return err
		}
		g = decideGroup(r, group)
		keep, err := c.keepObjects(ctx, group, g, r.objects)
		if err != nil {
			return err
		}
		return c.appendAndWrite(ctx, tx, r.head, g, keep, now)
	})
	if err != nil {
		return nil, err
	}
	return c.outcomes(ctx, group, g)
}

// groupRead is what a group's decisions read under the lock.
type groupRead struct {
	known   map[string]bool // command ids already in the log
	state   *state
	objects map[pkgstate.ObjectKey]pkgstate.ObjectState // the stored objects' gc rows, locked
	head    *events.HeadLock                            // the log head, locked
}

// read sends BEGIN, the lock and every read of the group in one batch.
// Statements of a batch run in order, each with a snapshot taken after the
// lock was granted (READ COMMITTED): they see every decision committed
// before.
func (c *committer) read(ctx context.Context, tx *groupTx, group []*job, now time.Time) (*groupRead, error) {
	ids := make([]string, len(group))
	for i, j := range group {
		ids[i] = j.commandID
	}
	r := &groupRead{known: map[string]bool{}}
	b := &pgx.Batch{}
	queueBegin(b)
	pkgstate.QueueLock(b)
	// The log head's lock rides in this batch too, instead of a round
	// trip of the append: the package-state lock is taken first, as every
	// appender that takes both does, and the command ids are looked up
	// under both.
	r.head = c.ing.cfg.Log.QueueLockHead(b)
	b.Queue(`SELECT command_id FROM commands WHERE command_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return fmt.Errorf("look up command ids: %w", err)
			}
			r.known[id] = true
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("look up command ids: %w", err)
		}
		return nil
	})
	loadCfg := c.ing.config.queueLoad(b)
	r.state = queueState(b, now, group)
	r.objects = queueLockObjects(b, group)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("read the state of %d commands under the package-state lock: %w", len(group), err)
	}
	cfg, err := loadCfg()
	if err != nil {
		return nil, err
	}
	r.state.cfg = cfg
	reapedNotLost(group, r.objects)
	return r, nil
}

// groupPlan is the decisions of a group and, once appended, where their
// events went.
type groupPlan struct {
	ds []decided
	// dupOf[i] >= 0: job i repeats the command id of job dupOf[i] (same
	// group); -2: its command id is already in the log; -1: decided.
	dupOf []int
	// batchOf[i] is job i's batch in batches, -1 when it appends nothing.
	batchOf []int
	batches []events.Batch
	// firstSeq and lastSeq are the sequences of each job's first and last
	// event, once appended.
	firstSeq, lastSeq []int64
}

// decideGroup takes the decision of every job against what was read, in
// order, each seeing the effects of those before it.
func decideGroup(r *groupRead, group []*job) *groupPlan {
	g := &groupPlan{ds: make([]decided, len(group)), dupOf: make([]int, len(group)), batchOf: make([]int, len(group)),
		firstSeq: make([]int64, len(group)), lastSeq: make([]int64, len(group))}
	firstOf := map[string]int{}
	for i, j := range group {
		g.batchOf[i] = -1
		g.dupOf[i] = -1
		if r.known[j.commandID] {
			g.dupOf[i] = -2
			continue
		}
		if k, ok := firstOf[j.commandID]; ok {
			g.dupOf[i] = k
			continue
		}
		firstOf[j.commandID] = i
		g.ds[i] = r.state.decide(j)
		if g.ds[i].noEvents {
			continue
		}
		g.batchOf[i] = len(g.batches)
		g.batches = append(g.batches, events.Batch{CommandID: j.commandID, Events: g.ds[i].events})
	}
	return g
}

// appendAndWrite queues the group's events under the log head locked by
// the read, notes their sequences, and sends them with the state writes of
// the group (making the gc rows of keep live) and the COMMIT, in one
// round trip.
func (c *committer) appendAndWrite(ctx context.Context, tx *groupTx, head *events.HeadLock, g *groupPlan, keep []pkgstate.Sized, now time.Time) error {
	b := &pgx.Batch{}
	if len(g.batches) > 0 {
		results, err := c.ing.cfg.Log.QueueAppend(b, head, g.batches...)
		if err != nil {
			return err
		}
		for i, k := range g.batchOf {
			if k < 0 {
				continue
			}
			evs := results[k].Events
			g.firstSeq[i], g.lastSeq[i] = evs[0].Sequence, evs[len(evs)-1].Sequence
		}
	}
	if err := queueWrites(b, g.ds, g.firstSeq, keep, now); err != nil {
		return err
	}
	queueCommit(b)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("append the events, write the package state and commit: %w", err)
	}
	return nil
}

// outcomes are the replies of a committed group: the decided jobs', and
// for a repeated command id the first outcome (of the group, or rebuilt
// from the log).
func (c *committer) outcomes(ctx context.Context, group []*job, g *groupPlan) ([]outcome, error) {
	outs := make([]outcome, len(group))
	for i := range group {
		if g.dupOf[i] != -1 {
			continue
		}
		d := g.ds[i]
		if g.batchOf[i] >= 0 {
			d.reply.Sequence = g.lastSeq[i]
		}
		outs[i] = outcome{reply: d.reply, rejected: d.rejected}
	}
	for i, j := range group {
		switch k := g.dupOf[i]; {
		case k >= 0:
			o := outs[k]
			o.reply.Duplicate = true
			outs[i] = o
		case k == -2:
			evs, err := c.ing.cfg.Log.ByCommand(ctx, j.commandID)
			if err != nil {
				return nil, fmt.Errorf("read the events of duplicate command %s: %w", j.commandID, err)
			}
			rep, rej, err := replyFromEvents(c.ing.cfg.Codec, j.commandID, evs)
			if err != nil {
				return nil, err
			}
			outs[i] = outcome{reply: rep, rejected: rej}
		}
	}
	return outs, nil
}
