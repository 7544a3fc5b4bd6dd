package projector_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/projector"
)

// benchEvents is the size of the catch-up benchmark's log; override with
// ARTIFACTSTORE_BENCH_EVENTS.
func benchEvents(b *testing.B) int {
	if s := os.Getenv("ARTIFACTSTORE_BENCH_EVENTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("ARTIFACTSTORE_BENCH_EVENTS=%q is not a positive number", s)
		}
		return n
	}
	return 1_000_000
}

// BenchmarkCatchUp measures a projector catching up with a log of a
// realistic mix of events (about half file.added + object.stored, a quarter
// scrub outcomes, the rest package and retention events), against a
// baseline measured in the same run: CopyFrom of the same number of raw
// event rows into a table with the columns of events (no index). Each
// timed run starts after a CHECKPOINT (see settle). Both report events/s,
// the unit `make bench` takes ratios of.
func BenchmarkCatchUp(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b)
	n := benchEvents(b)
	g := newGen(42, realisticMix)
	start := time.Now()
	for appended := 0; appended < n; {
		ds := g.drafts(min(events.MaxReadLimit, n-appended))
		if len(ds) > n-appended {
			ds = ds[:n-appended]
		}
		appendAll(ctx, b, f.log, ds, len(ds))
		appended += len(ds)
	}
	b.Logf("generated %d events in %s", n, time.Since(start).Round(time.Millisecond))
	if _, err := f.pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
	sample, err := f.log.Read(ctx, 0, min(n, events.MaxReadLimit))
	if err != nil {
		b.Fatal(err)
	}

	var baseline, project float64
	b.Run("baseline_copyfrom", func(b *testing.B) {
		if _, err := f.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS events_copy (LIKE events INCLUDING DEFAULTS)`); err != nil {
			b.Fatal(err)
		}
		var total time.Duration
		for range b.N {
			b.StopTimer()
			if _, err := f.pool.Exec(ctx, `TRUNCATE events_copy`); err != nil {
				b.Fatal(err)
			}
			settle(ctx, b, f)
			b.StartTimer()
			t0 := time.Now()
			i := 0
			rows, err := f.pool.CopyFrom(ctx, pgx.Identifier{"events_copy"},
				[]string{"sequence", "event_id", "occurred_at", "event_type", "payload_version", "subject_kind", "subject_id", "actor", "command_id", "payload", "payload_digest", "chain_digest"},
				pgx.CopyFromFunc(func() ([]any, error) {
					if i == n {
						return nil, nil
					}
					e := sample[i%len(sample)]
					i++
					return []any{int64(i), uuid.New(), e.OccurredAt, string(e.Type), int16(e.PayloadVersion), e.SubjectKind, e.SubjectID, e.Actor, nil,
						e.Payload, e.PayloadDigest[:], e.ChainDigest[:]}, nil
				}))
			if err != nil || rows != int64(n) {
				b.Fatalf("CopyFrom = %d, %v", rows, err)
			}
			total += time.Since(t0)
		}
		baseline = float64(n) * float64(b.N) / total.Seconds()
		b.ReportMetric(baseline, "events/s")
	})
	b.Run("project", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			b.StopTimer()
			if _, err := f.pool.Exec(ctx, `TRUNCATE artifact_packages, artifact_files, storage_locations, retention_state;
				DELETE FROM projector_checkpoints`); err != nil {
				b.Fatal(err)
			}
			p := f.projector(b, projector.Config{BatchSize: events.MaxReadLimit})
			settle(ctx, b, f)
			b.StartTimer()
			t0 := time.Now()
			got, err := p.CatchUp(ctx)
			if err != nil || got != n {
				b.Fatalf("CatchUp = %d, %v; want %d", got, err, n)
			}
			total += time.Since(t0)
		}
		project = float64(n) * float64(b.N) / total.Seconds()
		b.ReportMetric(project, "events/s")
	})
	if baseline > 0 && project > 0 {
		fmt.Printf("catch-up over %d events: %.0f events/s; CopyFrom baseline %.0f rows/s; ratio %.3f\n", n, project, baseline, project/baseline)
	}
}

// settle flushes the dirty pages and WAL that earlier steps (generating
// the log, the baseline's million rows) left behind, so that the
// checkpoint they trigger does not land in the next measurement.
// CHECKPOINT needs a superuser or pg_checkpoint; without it, the
// measurements run unsettled.
func settle(ctx context.Context, b *testing.B, f fixture) {
	b.Helper()
	if _, err := f.pool.Exec(ctx, `CHECKPOINT`); err != nil {
		b.Logf("CHECKPOINT: %v; measuring without it", err)
	}
}
