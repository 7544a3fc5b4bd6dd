package verifier

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/bus"
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

// FindTargets lists the stored copies a selector covers, from the
// projections (artifact_files, storage_locations), in a stable order.
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
		query string
		args  []any
		what  string
	)
	switch {
	case sel.Package != "":
		query = `SELECT l.content_address, l.backend_id, f.path
			FROM artifact_files f JOIN storage_locations l ON l.content_address = f.content_address
			WHERE f.package = $1 AND l.state <> 'deleted'
			ORDER BY f.path, l.backend_id`
		args, what = []any{sel.Package}, fmt.Sprintf("package %q has no stored files (check the name with `artifactstore status`)", sel.Package)
	case sel.All:
		query = `SELECT content_address, backend_id, '' FROM storage_locations
			WHERE state <> 'deleted' ORDER BY content_address, backend_id`
		what = "no stored objects"
	default:
		query = `SELECT content_address, backend_id, '' FROM storage_locations
			WHERE content_address = $1 AND state <> 'deleted' ORDER BY backend_id`
		args, what = []any{sel.Object.String()}, fmt.Sprintf("object %s is not stored on any backend", sel.Object)
	}
	rows, err := pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("verifier: find objects to verify: %w", err)
	}
	defer rows.Close()
	var out []Target
	for rows.Next() {
		var (
			t    Target
			addr string
		)
		if err := rows.Scan(&addr, &t.BackendID, &t.Path); err != nil {
			return nil, fmt.Errorf("verifier: find objects to verify: %w", err)
		}
		if t.Address, err = digest.Parse(addr); err != nil {
			return nil, fmt.Errorf("verifier: storage_locations holds an invalid address: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("verifier: find objects to verify: %w", err)
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
	Reply Reply
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

func requestOne(ctx context.Context, req *bus.Requester, codec *events.Codec, subject string, t Target) (Reply, error) {
	id := uuid.NewString()
	body, err := EncodeRequest(codec, Request{V: RequestVersion, RequestID: id, Address: t.Address, BackendID: t.BackendID, Origin: OriginOnDemand}, false)
	if err != nil {
		return Reply{}, err
	}
	msg, err := req.Request(ctx, subject, id, body, "")
	if err != nil {
		return Reply{}, err
	}
	rep, err := DecodeReply(codec, msg.Data, isJSON(msg.Header.Get(bus.HeaderContentType)))
	if err != nil {
		return Reply{}, err
	}
	return rep, nil
}
