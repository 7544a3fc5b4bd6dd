package reaper_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/reaper"
)

// Environment of the helper process that TestCrashAtEachPoint starts.
const (
	envCrashDB   = "REAPER_TEST_CRASH_DB"
	envCrashRoot = "REAPER_TEST_CRASH_ROOT"
	envCrashNow  = "REAPER_TEST_CRASH_NOW"
	envCrashAt   = "REAPER_TEST_CRASH_AT"
	envCrashNth  = "REAPER_TEST_CRASH_NTH"
)

// crashExit is the helper's exit status when it stopped itself at the
// chosen point.
const crashExit = 3

// TestHelperReaperProcess is not a test of its own: TestCrashAtEachPoint
// runs the test binary again with this test selected and the environment
// above. It runs one reaper pass and, at the chosen point, exits the
// process at once (os.Exit: no deferred function, no commit, no cleanup),
// which is what a SIGKILL at that moment leaves behind.
func TestHelperReaperProcess(t *testing.T) {
	dbURL := os.Getenv(envCrashDB)
	if dbURL == "" {
		return // not started as a helper
	}
	nowNanos, err := strconv.ParseInt(os.Getenv(envCrashNow), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", envCrashNow, err)
	}
	at := reaper.Point(os.Getenv(envCrashAt))
	nth, _ := strconv.Atoi(os.Getenv(envCrashNth))
	if nth < 1 {
		nth = 1
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c := &clock{now: time.Unix(0, nowNanos).UTC()}
	e := openEnv(t, pool, dbURL, os.Getenv(envCrashRoot), c)
	seen := 0
	r := e.reaper(func(cfg *reaper.Config) {
		cfg.Grace = -1
		cfg.Hook = func(_ context.Context, p reaper.Point, _ *reaper.Object) {
			if p == at {
				if seen++; seen == nth {
					os.Exit(crashExit)
				}
			}
		}
	})
	if _, err := r.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestCrashAtEachPoint kills the reaper at every point of a pass (by
// making a helper process exit there), restarts it, and checks that the
// state converged: the same deletions and events as an uninterrupted
// pass, each event exactly once, no marked row left behind, and no live
// reference pointing at missing bytes.
func TestCrashAtEachPoint(t *testing.T) {
	t.Parallel()
	points := []struct {
		at  reaper.Point
		nth int
	}{
		{reaper.PointExpireBeforeCommit, 1}, {reaper.PointExpireBeforeCommit, 2}, {reaper.PointExpired, 1},
		{reaper.PointMarkBeforeCommit, 1}, {reaper.PointMarked, 1},
		{reaper.PointBeforeRecheck, 2}, {reaper.PointBeforeDelete, 1}, {reaper.PointAfterDelete, 1}, {reaper.PointAfterDelete, 3},
		{reaper.PointDeleted, 2}, {reaper.PointSwept, 1},
		{reaper.PointAfterQuarantine, 1}, {reaper.PointOrphansDone, 1},
	}
	for _, pt := range points {
		t.Run(fmt.Sprintf("%s#%d", pt.at, pt.nth), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			sc := crashScenario(e)
			now := strconv.FormatInt(e.clock.Now().Add(8*day).UnixNano(), 10)
			env := []string{envCrashDB + "=" + e.dbURL, envCrashRoot + "=" + e.root, envCrashNow + "=" + now}

			code := runHelper(t, append(env, envCrashAt+"="+string(pt.at), envCrashNth+"="+strconv.Itoa(pt.nth)))
			if code != crashExit {
				t.Fatalf("the helper exited with %d, not at %s #%d (%d): the point was never reached", code, pt.at, pt.nth, crashExit)
			}
			if code := runHelper(t, env); code != 0 {
				t.Fatalf("the restarted reaper exited with %d", code)
			}
			sc.check(t, e)
		})
	}
}

func runHelper(t *testing.T, env []string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperReaperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.ExitCode() != crashExit {
			t.Logf("helper output:\n%s", out)
		}
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("run helper: %v\n%s", err, out)
	}
	return 0
}

// scenario is what a pass 8 days later must do: expire four transient
// packages (two expire batches of at most 3), delete the five objects only
// they reference (several sweep batches), keep the content a
// permanent-record package shares, and quarantine one orphan.
type scenario struct {
	gone, kept []digest.Address
	orphan     digest.Address
}

func crashScenario(e *env) scenario {
	var sc scenario
	for i := range 4 {
		files := map[string][]byte{
			"own":    []byte(fmt.Sprintf("own %d", i)),
			"shared": []byte("shared with the record"),
		}
		if i == 0 {
			files["extra"] = []byte("extra")
		}
		got := e.ingest(fmt.Sprintf("t/%d", i), "transient", files)
		sc.gone = append(sc.gone, got["own"])
		if i == 0 {
			sc.gone = append(sc.gone, got["extra"])
		}
	}
	rec := e.ingest("record", "permanent-record", map[string][]byte{"shared": []byte("shared with the record"), "mine": []byte("mine")})
	sc.kept = []digest.Address{rec["shared"], rec["mine"]}
	sc.orphan = e.store([]byte("an orphan"))
	return sc
}

func (sc scenario) check(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	e.checkLiveBytes(ctx)
	for _, a := range sc.gone {
		if e.exists(a) || e.gcState(a) != "absent" {
			t.Errorf("%s: exists %v, gc row %s; want deleted", a, e.exists(a), e.gcState(a))
		}
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = $1 AND subject_id = $2`,
			string(events.TypeObjectDeleted), a.String()).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: %d object.deleted events (%v); want exactly 1", a, n, err)
		}
	}
	for _, a := range sc.kept {
		if !e.exists(a) || e.gcState(a) != "live" {
			t.Errorf("kept %s: exists %v, gc row %s", a, e.exists(a), e.gcState(a))
		}
	}
	if n := e.countEvents(events.TypeRetentionExpired); n != 4 {
		t.Errorf("%d retention.expired events; want 4", n)
	}
	if n := e.countEvents(events.TypeObjectDeleted); n != len(sc.gone) {
		t.Errorf("%d object.deleted events; want %d", n, len(sc.gone))
	}
	var marked int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM gc_objects WHERE state <> 'live'`).Scan(&marked); err != nil || marked != 0 {
		t.Errorf("%d rows left marked (%v)", marked, err)
	}
	if e.exists(sc.orphan) {
		t.Error("the orphan is still in the object tree")
	}
	if q := e.quarantined(); len(q) != 1 || filepath.Base(filepath.Dir(q[0])) != sc.orphan.Hex()[2:4] {
		t.Errorf("quarantine holds %v; want the orphan once", q)
	}
}
