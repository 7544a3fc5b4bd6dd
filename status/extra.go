package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/staging"

	"github.com/artifactstore/artifactstore/internal/leader"
)

// DeadLetters counts the recent dead letters of one consumer.
type DeadLetters struct {
	Consumer string `json:"consumer"`
	// Failed are commands the pipeline gave up on (retries exhausted, out
	// of space, a worker lost): a problem.
	Failed uint64 `json:"failed"`
	// Refused are commands refused by a decision (a digest mismatch, a
	// retention rule), answered and recorded: the producers' business.
	Refused uint64 `json:"refused"`
	// LastCode, LastReason and LastAt describe the latest failure in the
	// window.
	LastCode   string     `json:"last_code,omitempty"`
	LastReason string     `json:"last_reason,omitempty"`
	LastAt     *time.Time `json:"last_at,omitempty"`
}

// Staged sums staged uploads.
type Staged struct {
	Uploads int   `json:"uploads"`
	Bytes   int64 `json:"bytes"`
}

// Backend is the space of one storage backend.
type Backend struct {
	ID        string  `json:"id"`
	Healthy   bool    `json:"healthy"`
	Detail    string  `json:"detail,omitempty"`
	FreeBytes uint64  `json:"free_bytes"`
	UsedBytes uint64  `json:"used_bytes"`
	FreePct   float64 `json:"free_percent"`
}

// Leader is the process that holds the leader lock of a single-active
// role, as PostgreSQL knows it.
type Leader struct {
	Role string `json:"role"`
	// Holder is the session's application_name
	// (artifactstore/<role>/<instance>); empty when nobody leads.
	Holder string `json:"holder,omitempty"`
	// PID is the PostgreSQL backend's process id; Client its address.
	PID    int        `json:"pid,omitempty"`
	Client string     `json:"client,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
}

// LeaderLock names a single-active role and its advisory lock key.
type LeaderLock struct {
	Role string
	Key  int64
}

// gatherDeadLetters counts each consumer's dead letters of the window by
// kind, with an ephemeral consumer per subject (its pending count is the
// answer), and reads the latest failure.
func gatherDeadLetters(ctx context.Context, src Sources, r *Report) {
	since := r.At.Add(-src.DeadLetterWindow)
	for _, name := range src.Consumers {
		d := DeadLetters{Consumer: name}
		var err error
		if d.Failed, err = countSince(ctx, src.JS, src.DeadLetters, src.DeadLetterPrefix+"."+name+"."+bus.DeadLetterFailed, since); err == nil {
			d.Refused, err = countSince(ctx, src.JS, src.DeadLetters, src.DeadLetterPrefix+"."+name+"."+bus.DeadLetterRefused, since)
		}
		if err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("dead letters of %s: %v", name, err))
			continue
		}
		if d.Failed > 0 {
			if st, err := src.JS.Stream(ctx, src.DeadLetters); err == nil {
				if m, err := st.GetLastMsgForSubject(ctx, src.DeadLetterPrefix+"."+name+"."+bus.DeadLetterFailed); err == nil {
					at := m.Time
					d.LastCode, d.LastReason, d.LastAt = m.Header.Get(bus.HeaderDeadCode), m.Header.Get(bus.HeaderDeadReason), &at
				}
			}
			what := fmt.Sprintf("%d %s commands failed in the last %s (answered %s)", d.Failed, name, src.DeadLetterWindow, d.LastCode)
			if d.LastReason != "" {
				what += ": " + trunc(d.LastReason, 200)
			}
			r.Problems = append(r.Problems, what+fmt.Sprintf("; inspect with 'nats stream view %s --subject %s.%s.%s'", src.DeadLetters, src.DeadLetterPrefix, name, bus.DeadLetterFailed))
		}
		if d.Refused > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%d %s commands refused in the last %s (answered, the producers' business)", d.Refused, name, src.DeadLetterWindow))
		}
		r.RecentDeadLetters = append(r.RecentDeadLetters, d)
	}
}

func countSince(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time) (uint64, error) {
	c, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		FilterSubject: subject, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
	})
	if err != nil {
		return 0, err
	}
	info := c.CachedInfo()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = js.DeleteConsumer(dctx, stream, info.Name) // else it goes after InactiveThreshold
	return info.NumPending, nil
}

func gatherStaging(ctx context.Context, src Sources, r *Report) {
	ups, err := staging.Uploads(ctx, src.JS, src.Topology)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("staging bucket: %v", err))
		return
	}
	for _, u := range ups {
		r.Staged.Uploads++
		r.Staged.Bytes += u.Bytes
	}
	ab, err := staging.Abandoned(ctx, src.JS, src.Topology, staging.AbandonedQuery{MaxAge: src.StagedMaxAge, Handled: src.Handled, Now: func() time.Time { return r.At }})
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("staging bucket: %v", err))
		return
	}
	for _, u := range ab {
		r.AbandonedStaged.Uploads++
		r.AbandonedStaged.Bytes += u.Bytes
	}
	if r.AbandonedStaged.Uploads > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d staged uploads (%s) abandoned for over %s: the staging janitor purges them; is an ingester ('artifactstore ingest' or 'run') running?",
			r.AbandonedStaged.Uploads, humanBytes(r.AbandonedStaged.Bytes), src.StagedMaxAge))
	}
}

func gatherBackends(ctx context.Context, src Sources, r *Report) {
	for id, h := range src.Backends(ctx) {
		b := Backend{ID: id, Healthy: h.Healthy, Detail: h.Detail, FreeBytes: h.FreeBytes, UsedBytes: h.UsedBytes}
		if total := h.FreeBytes + h.UsedBytes; total > 0 {
			b.FreePct = 100 * float64(h.FreeBytes) / float64(total)
		}
		r.Backends = append(r.Backends, b)
		switch {
		case !h.Healthy:
			r.Problems = append(r.Problems, fmt.Sprintf("storage backend %s is unhealthy: %s", id, h.Detail))
		case h.FreeBytes+h.UsedBytes == 0:
			// capacity unknown
		case h.FreeBytes < src.MinFreeBytes || b.FreePct < src.MinFreePercent:
			r.Problems = append(r.Problems, fmt.Sprintf("storage backend %s has %s free (%.1f%%), below %s or %.1f%%: ingests will be refused with insufficient_storage; let the reaper free space or enlarge it",
				id, humanBytes(int64(h.FreeBytes)), b.FreePct, humanBytes(int64(src.MinFreeBytes)), src.MinFreePercent))
		}
	}
}

// gatherLeaders reads who holds each leader lock: pg_locks joined with
// pg_stat_activity, whose application_name every artifactstore process
// sets to artifactstore/<role>/<instance>.
func gatherLeaders(ctx context.Context, src Sources, r *Report) error {
	locks := append([]LeaderLock(nil), src.LeaderLocks...)
	if src.Projector != "" {
		locks = append([]LeaderLock{{Role: "projector", Key: leader.ProjectorKey(src.Projector)}}, locks...)
	}
	for _, l := range locks {
		ld := Leader{Role: l.Role}
		var holder, client *string
		var pid *int
		var since *time.Time
		err := src.Pool.QueryRow(ctx, `
			SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local socket'), a.backend_start
			FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
			LIMIT 1`, l.Key).Scan(&holder, &pid, &client, &since)
		switch {
		case err == nil:
			if holder != nil {
				ld.Holder = *holder
			}
			if pid != nil {
				ld.PID = *pid
			}
			if client != nil {
				ld.Client = *client
			}
			ld.Since = since
			if ld.Holder == "" {
				ld.Holder = "(a session without application_name)"
			}
		case errors.Is(err, pgx.ErrNoRows):
			r.Notes = append(r.Notes, fmt.Sprintf("no process leads the %s", l.Role))
		default:
			return fmt.Errorf("read the holder of the %s lock: %w", l.Role, err)
		}
		r.Leaders = append(r.Leaders, ld)
	}
	return nil
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
