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
	switch loc.State {
	case catalog.LocationCorrupt:
		c.Recorded, c.Damage, c.Detail = true, storage.DamageCorrupt, "a verification recorded the stored copy corrupt"
	case catalog.LocationMissing:
		c.Recorded, c.Damage, c.Detail = true, storage.DamageMissing, "a verification recorded the stored copy missing"
	}
	return c, nil
}

// locationReader is what condition reads of the projection.
type locationReader interface {
	Location(ctx context.Context, addr digest.Address, backendID string) (catalog.Location, error)
}

var _ locationReader = (*catalog.Catalog)(nil)
