package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/storage"
)

// errRecords marks a failure to read the records a put asks about (see
// condition): PostgreSQL's, not the storage backend's.
var errRecords = errors.New("the ingest records could not be read")

// condition tells the data plane what the records say of the copy of addr
// on backendID before a put decides whether to trust it (see
// storage.PutOptions.Condition), outside the ingest lock:
//
//   - the object's gc_objects row (command-side state, written with every
//     ingest's commit): a live row means the bytes must be on the
//     backend, so a copy the put finds absent was lost. A marked row (the
//     reaper may be deleting it) or none promises nothing.
//   - the projected state of its storage location (through the
//     catalog): corrupt or missing,
//     recorded by a verification (a scrub, or a read that failed its
//     proof), means the copy must be replaced whatever a sample of it
//     says. The projection lags the log by the projector's delay; damage
//     recorded in that window is still found by the put's own check when
//     it lies in a sampled group, and otherwise by the next verification.
func (ing *Ingester) condition(ctx context.Context, backendID string, addr digest.Address) (storage.Condition, error) {
	gc, _, err := pkgstate.ObjectStateOf(ctx, ing.cfg.Pool, pkgstate.ObjectKey{Address: addr.String(), Backend: backendID})
	if err != nil {
		return storage.Condition{}, fmt.Errorf("%w: read the gc row of %s on %q: %w", errRecords, addr, backendID, err)
	}
	c := storage.Condition{Recorded: gc == pkgstate.ObjectLive}
	loc, err := ing.locations.Location(ctx, addr, backendID)
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return c, nil
	case err != nil:
		return storage.Condition{}, fmt.Errorf("%w: %w", errRecords, err)
	}
	return withLocation(c, loc.State), nil
}

// withLocation adds to c what the projected state of the location says.
func withLocation(c storage.Condition, state catalog.LocationState) storage.Condition {
	switch state {
	case catalog.LocationCorrupt:
		c.Recorded, c.Damage, c.Detail = true, storage.DamageCorrupt, "a verification recorded the stored copy corrupt"
	case catalog.LocationMissing:
		c.Recorded, c.Damage, c.Detail = true, storage.DamageMissing, "a verification recorded the stored copy missing"
	}
	return c
}

// conditions is condition for several objects on one backend, read in two
// round trips whatever their number (a batch's files): the returned
// function answers for those objects from what was read, and asks
// condition for any other.
func (ing *Ingester) conditions(ctx context.Context, backendID string, addrs []digest.Address) (func(context.Context, string, digest.Address) (storage.Condition, error), error) {
	keys := make([]pkgstate.ObjectKey, len(addrs))
	for i, a := range addrs {
		keys[i] = pkgstate.ObjectKey{Address: a.String(), Backend: backendID}
	}
	gc, err := pkgstate.ObjectStatesOf(ctx, ing.cfg.Pool, keys)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errRecords, err)
	}
	locs, err := ing.locations.LocationStates(ctx, addrs, backendID)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errRecords, err)
	}
	known := make(map[digest.Address]storage.Condition, len(addrs))
	for i, a := range addrs {
		known[a] = withLocation(storage.Condition{Recorded: gc[keys[i]] == pkgstate.ObjectLive}, locs[a])
	}
	return func(ctx context.Context, b string, a digest.Address) (storage.Condition, error) {
		if c, ok := known[a]; ok && b == backendID {
			return c, nil
		}
		return ing.condition(ctx, b, a)
	}, nil
}

// locationReader is what condition reads of the projection.
type locationReader interface {
	Location(ctx context.Context, addr digest.Address, backendID string) (catalog.Location, error)
	LocationStates(ctx context.Context, addrs []digest.Address, backendID string) (map[digest.Address]catalog.LocationState, error)
}

var _ locationReader = (*catalog.Catalog)(nil)
