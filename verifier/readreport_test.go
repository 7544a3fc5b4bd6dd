package verifier_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

type readReport struct {
	c   *dataplane.CorruptError
	rep commands.VerifyReply
	err error
}

// readEnv is an env whose data plane reports corrupt reads to a started
// ReadReporter; handled reports arrive on the returned channel.
func readEnv(t *testing.T) (*env, chan readReport) {
	t.Helper()
	done := make(chan readReport, 8)
	rr := verifier.NewReadReporter(verifier.ReadReporterConfig{
		Done: func(c *dataplane.CorruptError, rep commands.VerifyReply, err error) { done <- readReport{c, rep, err} },
	})
	e := newEnv(t, dataplane.WithCorruptionReporter(rr))
	l := e.logger
	if err := rr.Service(verifier.NewWorker(e.dp, e.log, e.pool, e.codec, nil, verifier.WorkerConfig{Actor: "read", Logger: &l})).Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rr.Stop(ctx)
	})
	return e, done
}

func waitReport(t *testing.T, ch chan readReport) readReport {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("no report was handled within 60 s")
		return readReport{}
	}
}

// readAll serves the whole object and returns the error that stopped it.
func readAllServed(t *testing.T, dp *dataplane.DataPlane, addr digest.Address, size int64) ([]byte, error) {
	t.Helper()
	o, err := dp.Serve(t.Context(), "local", addr, nil, dataplane.Expected{Size: size})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}

// TestReadCorruptionIsRecordedAtOnce: a read that meets a damaged byte
// makes the reporter verify the object, which appends object.corrupt with
// what the bytes now hash to.
func TestReadCorruptionIsRecordedAtOnce(t *testing.T) {
	t.Parallel()
	e, done := readEnv(t)
	data := randomBytes(t, 10*blaketree.GroupSize+3)
	addr := e.store(data)
	bad := bytes.Clone(data)
	bad[5*blaketree.GroupSize+9] ^= 1
	rewrite(t, e.path(addr), bad)

	if _, err := readAllServed(t, e.dp, addr, int64(len(data))); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read of a damaged object: %v, want ErrCorrupt", err)
	}
	r := waitReport(t, done)
	if r.err != nil || r.rep.Outcome != commands.OutcomeCorrupt || r.c.Offset != 5*blaketree.GroupSize {
		t.Fatalf("report %+v -> %+v, %v; want a corrupt outcome for the group at %d", r.c, r.rep, r.err, 5*blaketree.GroupSize)
	}
	evs, err := e.log.ByCommand(context.Background(), r.rep.RequestID)
	if err != nil || len(evs) != 1 || evs[0].Type != events.TypeObjectCorrupt || evs[0].SubjectID != addr.String() {
		t.Fatalf("events of %s: %v, %v; want one object.corrupt of %s", r.rep.RequestID, types(evs), err, addr)
	}
	p, err := e.codec.DecodeEvent(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	actual, _ := digest.Compute(bytes.NewReader(bad), nil)
	if cp := p.(events.ObjectCorruptV1); !bytes.Equal(cp.ActualBLAKE3, actual.BLAKE3[:]) {
		t.Fatalf("object.corrupt records blake3 %x, the bytes hash to %x", cp.ActualBLAKE3, actual.BLAKE3)
	}
	if e.dp.Corrupt("local", addr) == nil {
		t.Fatal("the data plane forgot the corrupt object after a corrupt verdict")
	}
}

// TestReadOfDamagedTreeRebuildsIt: only the stored tree is damaged; the
// read fails, the verification proves the bytes, rewrites the tree and
// appends object.verified, and the object is served again.
func TestReadOfDamagedTreeRebuildsIt(t *testing.T) {
	t.Parallel()
	e, done := readEnv(t)
	data := randomBytes(t, 10*blaketree.GroupSize+3)
	addr := e.store(data)
	treePath := e.path(addr) + ".bao"
	tree, err := os.ReadFile(treePath)
	if err != nil {
		t.Fatal(err)
	}
	tree[len(tree)-1] ^= 1
	rewrite(t, treePath, tree)

	if _, err := readAllServed(t, e.dp, addr, int64(len(data))); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read with a damaged tree: %v, want ErrCorrupt", err)
	}
	r := waitReport(t, done)
	if r.err != nil || r.rep.Outcome != commands.OutcomeVerified || r.rep.Tree != string(dataplane.TreeRebuilt) || r.rep.Reason == "" {
		t.Fatalf("report -> %+v, %v; want verified with the tree rebuilt", r.rep, r.err)
	}
	if got, err := readAllServed(t, e.dp, addr, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the tree was rebuilt: %v", err)
	}
}

// TestScrubBuildsLegacyTree: an object stored before trees gets its tree
// at its next verification.
func TestScrubBuildsLegacyTree(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	data := randomBytes(t, 4*blaketree.GroupSize)
	addr := e.store(data)
	if err := os.Remove(e.path(addr) + ".bao"); err != nil {
		t.Fatal(err)
	}
	rep, err := e.worker("w").Verify(context.Background(), request("legacy", addr))
	if err != nil || rep.Outcome != commands.OutcomeVerified || rep.Tree != string(dataplane.TreeBuilt) {
		t.Fatalf("verify of a legacy object: %+v, %v; want verified, tree built", rep, err)
	}
	if _, err := os.Stat(e.path(addr) + ".bao"); err != nil {
		t.Fatalf("no tree after the scrub: %v", err)
	}
}
