package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
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
func (c *committer) run(stop <-chan struct{}) {
	defer close(c.done)
	cfg := c.ing.cfg
	for {
		var first *job
		select {
		case first = <-c.jobs:
		case <-stop:
			return
		}
		group := []*job{first}
		timer := time.NewTimer(cfg.CommitWindow)
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
		c.commit(group)
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

// commitGroup decides and commits every job of group in one transaction.
func (c *committer) commitGroup(ctx context.Context, group []*job) ([]outcome, error) {
	ing := c.ing
	outs := make([]outcome, len(group))
	// dupOf[i] >= 0: job i repeats the command id of job dupOf[i] (same
	// group); -2: its command id is already in the log.
	dupOf := make([]int, len(group))
	var dupIDs []string
	err := pgx.BeginFunc(ctx, ing.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, leader.KeyPackageState); err != nil {
			return fmt.Errorf("take the ingest lock: %w", err)
		}
		ids := make([]string, len(group))
		for i, j := range group {
			ids[i] = j.commandID
		}
		known := map[string]bool{}
		rows, err := tx.Query(ctx, `SELECT command_id FROM commands WHERE command_id = ANY($1)`, ids)
		if err != nil {
			return fmt.Errorf("look up command ids: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			known[id] = true
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("look up command ids: %w", err)
		}
		cfg, err := ing.config.load(ctx, tx)
		if err != nil {
			return err
		}
		now := ing.cfg.Now().UTC()
		st, err := loadState(ctx, tx, cfg, now, group)
		if err != nil {
			return err
		}

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
				dupIDs = append(dupIDs, j.commandID)
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
		if err := c.keepObjects(ctx, tx, group, ds, dupOf); err != nil {
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
		if err := writeState(ctx, tx, ds, firstSeq, now); err != nil {
			return err
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
