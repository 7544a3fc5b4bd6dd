package verifier

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// Selector chooses what an on-demand verification covers: exactly one of
// its fields is set.
type Selector struct {
	// Package selects every stored copy of every file of the package.
	Package string
	// Object selects every stored copy of one object.
	Object digest.Address
	// All selects every stored copy that was not deleted.
	All bool
}

// ErrNothingSelected means a selector matched no stored object.
var ErrNothingSelected = errors.New("verifier: nothing to verify")

// Target is one stored copy to verify.
type Target struct {
	Address   digest.Address
	BackendID string
	// Path is the file's path when the selector named a package.
	Path string
}

// copyFinder is what FindTargets reads of the projections.
type copyFinder interface {
	PackageCopies(ctx context.Context, pkg string) ([]catalog.Copy, error)
	ObjectCopies(ctx context.Context, addr digest.Address) ([]catalog.Copy, error)
	AllCopies(ctx context.Context) ([]catalog.Copy, error)
}

var _ copyFinder = (*catalog.Catalog)(nil)

// FindTargets lists the stored copies a selector covers, from the
// catalog, in a stable order.
// Deleted copies are left out; corrupt and missing ones are included, so
// that a repair can be checked.
func FindTargets(ctx context.Context, pool *pgxpool.Pool, sel Selector) ([]Target, error) {
	n := 0
	for _, set := range []bool{sel.Package != "", !sel.Object.IsZero(), sel.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("verifier: choose exactly one of a package, an object or all")
	}
	var (
		cat    copyFinder = catalog.New(pool)
		copies []catalog.Copy
		err    error
		what   string
	)
	switch {
	case sel.Package != "":
		copies, err = cat.PackageCopies(ctx, sel.Package)
		what = fmt.Sprintf("package %q has no stored files (check the name with `artifactstore status`)", sel.Package)
	case sel.All:
		copies, err = cat.AllCopies(ctx)
		what = "no stored objects"
	default:
		copies, err = cat.ObjectCopies(ctx, sel.Object)
		what = fmt.Sprintf("object %s is not stored on any backend", sel.Object)
	}
	if err != nil {
		return nil, fmt.Errorf("verifier: find objects to verify: %w", err)
	}
	out := make([]Target, 0, len(copies))
	for _, c := range copies {
		out = append(out, Target{Address: c.Address, BackendID: c.Backend, Path: c.Path})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNothingSelected, what)
	}
	return out, nil
}

// Result is the outcome of one on-demand target.
type Result struct {
	Target Target
	// Reply is the worker's reply; zero when Err is set.
	Reply commands.VerifyReply
	// Err says why no reply came (publish failure, timeout, undecodable
	// reply).
	Err error
}

// Failed reports whether the target is anything but verified.
func (r Result) Failed() bool { return r.Err != nil || r.Reply.Failed() }

// RequestAll publishes one request per target (fresh UUIDs) through req on
// subject, with at most parallel outstanding, and waits for every reply
// until ctx is done. Results are in target order; a target without a
// reply has Err set.
func RequestAll(ctx context.Context, req *bus.Requester, codec *events.Codec, subject string, targets []Target, parallel int) []Result {
	if parallel <= 0 {
		parallel = 64
	}
	results := make([]Result, len(targets))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		results[i].Target = t
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			results[i].Err = fmt.Errorf("not sent: %w", context.Cause(ctx))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i].Reply, results[i].Err = requestOne(ctx, req, codec, subject, t)
		}()
	}
	wg.Wait()
	return results
}

func requestOne(ctx context.Context, req *bus.Requester, codec *events.Codec, subject string, t Target) (commands.VerifyReply, error) {
	id := uuid.NewString()
	body, err := commands.EncodeVerify(codec, commands.Verify{V: commands.Version, RequestID: id, Address: t.Address, BackendID: t.BackendID, Origin: commands.OriginOnDemand}, false)
	if err != nil {
		return commands.VerifyReply{}, err
	}
	msg, err := req.Request(ctx, subject, id, body, "")
	if err != nil {
		return commands.VerifyReply{}, err
	}
	rep, err := commands.DecodeVerifyReply(codec, msg.Data, commands.IsJSON(msg.Header.Get(bus.HeaderContentType)))
	if err != nil {
		return commands.VerifyReply{}, err
	}
	return rep, nil
}
