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
	ing  *Ingester
	jobs chan *job
	done chan struct{}
}

func newCommitter(ing *Ingester) *committer {
	return &committer{ing: ing, jobs: make(chan *job), done: make(chan struct{})}
}

// submit hands j to the committer and waits for its outcome. The commit
// itself is not cancelled by ctx (a decision half-taken is worse than a
// late one); only the wait is.
func (c *committer) submit(ctx context.Context, j *job) outcome {
	j.done = make(chan outcome, 1)
	j.submitted = time.Now()
	select {
	case c.jobs <- j:
	case <-ctx.Done():
		return outcome{err: context.Cause(ctx)}
	}
	select {
	case o := <-j.done:
		return o
	case <-ctx.Done():
		return outcome{err: context.Cause(ctx)}
	}
}

// run commits groups until stop is closed and no job is waiting.
//
// A group is the first waiting job and every job that arrives until that
// first job has waited CommitWindow. Under load, jobs queue while a commit
// runs, so the next group is taken at once, without waiting the window
// again: the window only gathers companions for a job that would otherwise
// commit alone.
func (c *committer) run(stop <-chan struct{}) {
	defer close(c.done)
	cfg := c.ing.cfg
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var first *job
		select {
		case first = <-c.jobs:
		case <-stop:
			return
		}
		group := []*job{first}
		timer.Reset(max(time.Until(first.submitted.Add(cfg.CommitWindow)), 0))
	gather:
		for len(group) < cfg.MaxCommitBatch {
			select {
			case j := <-c.jobs:
				group = append(group, j)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		// Take what queued meanwhile too.
	drain:
		for len(group) < cfg.MaxCommitBatch {
			select {
			case j := <-c.jobs:
				group = append(group, j)
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
// in four round trips whatever the group's size: (1) BEGIN, the ingest
// lock and, under it, every read the decisions need (command ids,
// configuration, package and file state, the gc rows of the stored objects
// FOR UPDATE), (2, 3) the append, (4) the state writes and COMMIT.
// The lock is held from (1) to the commit, so each round trip saved is
// throughput for every ingester.
func (c *committer) commitGroup(ctx context.Context, group []*job) ([]outcome, error) {
	ing := c.ing
	outs := make([]outcome, len(group))
	// dupOf[i] >= 0: job i repeats the command id of job dupOf[i] (same
	// group); -2: its command id is already in the log.
	dupOf := make([]int, len(group))
	err := runGroupTx(ctx, ing.cfg.Pool, func(tx *groupTx) error {
		now := ing.cfg.Now().UTC()
		ids := make([]string, len(group))
		for i, j := range group {
			ids[i] = j.commandID
		}
		known := map[string]bool{}
		b := &pgx.Batch{}
		queueBegin(b)
		// Statements of a batch run in order, each with a snapshot taken
		// after the lock was granted (READ COMMITTED): they see every
		// decision committed before.
		pkgstate.QueueLock(b)
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
		loadCfg := ing.config.queueLoad(b)
		st := queueState(b, now, group)
		gcStates := queueLockObjects(b, group)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("read the state of %d commands under the ingest lock: %w", len(group), err)
		}
		cfg, err := loadCfg()
		if err != nil {
			return err
		}
		st.cfg = cfg
		reapedNotLost(group, gcStates)

		firstOf := map[string]int{}
		var (
			batches []events.Batch
			batchOf = make([]int, len(group))
			ds      = make([]decided, len(group))
		)
		for i, j := range group {
			batchOf[i] = -1
			dupOf[i] = -1
			if known[j.commandID] {
				dupOf[i] = -2
				continue
			}
			if k, ok := firstOf[j.commandID]; ok {
				dupOf[i] = k
				continue
			}
			firstOf[j.commandID] = i
			ds[i] = st.decide(j)
			if ds[i].noEvents {
				continue
			}
			batchOf[i] = len(batches)
			batches = append(batches, events.Batch{CommandID: j.commandID, Events: ds[i].events})
		}
		keep, err := c.keepObjects(ctx, group, ds, dupOf, gcStates)
		if err != nil {
			return err
		}
		lastSeq := make([]int64, len(group))
		firstSeq := make([]int64, len(group))
		if len(batches) > 0 {
			results, err := ing.cfg.Log.AppendTx(ctx, tx, batches...)
			if err != nil {
				return err
			}
			for i := range group {
				if k := batchOf[i]; k >= 0 {
					evs := results[k].Events
					if results[k].Duplicate {
						// Committed by another appender after our lookup:
						// impossible under the lock; refuse to guess.
						return fmt.Errorf("command %s was appended concurrently despite the ingest lock", group[i].commandID)
					}
					firstSeq[i], lastSeq[i] = evs[0].Sequence, evs[len(evs)-1].Sequence
				}
			}
		}
		wb := &pgx.Batch{}
		if err := queueWrites(wb, ds, firstSeq, keep, now); err != nil {
			return err
		}
		queueCommit(wb)
		if err := tx.SendBatch(ctx, wb).Close(); err != nil {
			return fmt.Errorf("write the ingest state and commit: %w", err)
		}
		for i := range group {
			if dupOf[i] != -1 {
				continue
			}
			d := ds[i]
			if batchOf[i] >= 0 {
				d.reply.Sequence = lastSeq[i]
			}
			outs[i] = outcome{reply: d.reply, rejected: d.rejected}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, j := range group {
		switch k := dupOf[i]; {
		case k >= 0:
			o := outs[k]
			o.reply.Duplicate = true
			outs[i] = o
		case k == -2:
			evs, err := ing.cfg.Log.ByCommand(ctx, j.commandID)
			if err != nil {
				return nil, fmt.Errorf("read the events of duplicate command %s: %w", j.commandID, err)
			}
			rep, rej, err := replyFromEvents(ing.cfg.Codec, j.commandID, evs)
			if err != nil {
				return nil, err
			}
			outs[i] = outcome{reply: rep, rejected: rej}
		}
	}
	return outs, nil
}
