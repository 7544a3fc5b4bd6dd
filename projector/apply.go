package projector

import (
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

type pkgRow struct {
	Name       string
	Class      string
	Metadata   string // JSON object
	CreatedAt  time.Time
	SealedAt   *time.Time
	FileCount  int64
	TotalBytes int64
	State      catalog.PackageState
	dirty      bool
	existed    bool // loaded from the table (else created in this batch)
}

type fileKey struct{ Package, Path string }

type fileRow struct {
	Package   string
	Path      string
	Address   string
	Algorithm string
	Primary   []byte
	BLAKE3    []byte
	SHA256    []byte
	Size      int64
	MediaType *string
	AddedAt   time.Time
	dirty     bool
	existed   bool
	// partial rows hold only Package, Path and Address (read by the reap
	// rule, never written).
	partial bool
}

type locKey struct{ Address, Backend string }

type locRow struct {
	Address      string
	Backend      string
	Algorithm    string
	BLAKE3       []byte
	SHA256       []byte
	Size         int64
	State        catalog.LocationState
	StoredAt     time.Time
	LastVerified *time.Time
	Verified     int64
	RepairedAt   *time.Time
	Repairs      int64
	Tier         catalog.RetrievalTier
	Restore      *string
	dirty        bool
	existed      bool
	// partial rows hold only Address, Backend and State (read by the reap
	// rule, never written).
	partial bool
}

type retRow struct {
	Package     string
	Class       string
	RetainUntil *time.Time
	Hold        bool
	HoldReason  *string
	ExpiredAt   *time.Time
	ReapedAt    *time.Time
	dirty       bool
	existed     bool
}

// state is the working set of one batch: every row the batch's events can
// read or write, loaded before the fold and written back after it. A key
// absent from a map is a row that does not exist.
//
// The reap rule (a package is reaped when it has expired and no file of it
// has a live location) reads across keys; it only runs for the packages in
// reapable, whose every file and every location of those files' addresses
// are loaded.
type state struct {
	pkgs  map[string]*pkgRow
	files map[fileKey]*fileRow
	locs  map[locKey]*locRow
	ret   map[string]*retRow

	reapable   map[string]bool
	filesByPkg map[string]map[fileKey]bool
	locsByAddr map[string]map[locKey]bool
	pkgsByAddr map[string]map[string]bool

	// dangling counts events that named a row that does not exist (see
	// apply); they change nothing.
	dangling int
	warn     func(seq int64, t events.Type, msg string)
}

func newState() *state {
	return &state{
		pkgs:       map[string]*pkgRow{},
		files:      map[fileKey]*fileRow{},
		locs:       map[locKey]*locRow{},
		ret:        map[string]*retRow{},
		reapable:   map[string]bool{},
		filesByPkg: map[string]map[fileKey]bool{},
		locsByAddr: map[string]map[locKey]bool{},
		pkgsByAddr: map[string]map[string]bool{},
	}
}

func addIndex[K comparable, V comparable](m map[K]map[V]bool, k K, v V) {
	s := m[k]
	if s == nil {
		s = map[V]bool{}
		m[k] = s
	}
	s[v] = true
}

func (s *state) putFile(f *fileRow) {
	k := fileKey{f.Package, f.Path}
	s.files[k] = f
	addIndex(s.filesByPkg, f.Package, k)
	addIndex(s.pkgsByAddr, f.Address, f.Package)
}

func (s *state) putLoc(l *locRow) {
	k := locKey{l.Address, l.Backend}
	s.locs[k] = l
	addIndex(s.locsByAddr, l.Address, k)
}

func (s *state) dangle(seq int64, t events.Type, format string, args ...any) {
	s.dangling++
	if s.warn != nil {
		s.warn(seq, t, fmt.Sprintf(format, args...))
	}
}

func tp(t time.Time) *time.Time { return &t }

// apply is the effect of one event: a pure function of the rows in s and
// the event. Every v1 type has a case; the effects are:
//
//   - package.created: inserts the package (open, created at the event
//     time); a second creation of the same name changes nothing.
//   - package.sealed: state sealed, sealed_at = event time (first seal wins).
//   - file.added: inserts or replaces the file at (package, path); the
//     package's file_count and total_bytes follow (a replaced file's size is
//     subtracted). A file of a package not (yet) created is recorded but
//     counted nowhere.
//   - object.stored: inserts the location (ok); for a deleted location
//     the bytes were written again: state ok, stored_at = event time. It
//     never changes a corrupt or missing location: a store, deduplicated
//     or not, says nothing of the copy's health; only object.repaired and
//     object.verified make such a location ok again.
//   - object.replicated: as object.stored, for the location on the
//     backend the copy went to.
//   - object.repaired: state ok, stored_at = repaired_at = event time,
//     repair_count + 1 (a location the log never stored is inserted so).
//   - retention.assigned, retention.changed: upsert retention_state's class
//     and retain-until; the package's class follows.
//   - legal_hold.set / released: retention_state.legal_hold and its reason.
//   - object.verified / corrupt / missing: last_verified_at = event time,
//     verification_count + 1, state ok / corrupt / missing; a deleted
//     location stays deleted (the scrub raced the reaper).
//   - retention.expired: expired_at = event time (first wins), package state
//     expired, then the reap rule.
//   - object.deleted: state deleted, then the reap rule for the expired
//     packages that reference the address.
//   - ingest.rejected: none; the rejection lives in the log only.
//
// The reap rule: an expired, not yet reaped package none of whose files has
// a location that is not deleted becomes reaped (reaped_at = event time,
// package state reaped).
//
// An event naming a package or location that does not exist (the log is
// the truth, and a producer bug may have written it) changes nothing and is
// reported through warn; only file.added and retention rows may exist
// without their package.
func (s *state) apply(e events.Event, p events.Payload) error {
	at := e.OccurredAt.UTC()
	switch p := p.(type) {
	case events.PackageCreatedV1:
		if s.pkgs[p.Name] != nil {
			return nil
		}
		meta, err := metadataJSON(p.Metadata)
		if err != nil {
			return fmt.Errorf("event %d: %w", e.Sequence, err)
		}
		// Counters start at zero even if files were recorded for the name
		// before its creation: the effect must not depend on rows outside
		// the event's own keys.
		pr := &pkgRow{Name: p.Name, Class: p.RetentionClass, Metadata: meta, CreatedAt: at, State: catalog.PackageOpen, dirty: true}
		s.pkgs[p.Name] = pr
	case events.PackageSealedV1:
		pr := s.pkgs[p.Name]
		if pr == nil {
			s.dangle(e.Sequence, e.Type, "package %q does not exist", p.Name)
			return nil
		}
		if pr.SealedAt == nil {
			pr.SealedAt = tp(at)
			if pr.State == catalog.PackageOpen {
				pr.State = catalog.PackageSealed
			}
			pr.dirty = true
		}
	case events.FileAddedV1:
		k := fileKey{p.Package, p.Path}
		old := s.files[k]
		sum := p.Address.Sum()
		f := &fileRow{
			Package: p.Package, Path: p.Path, Address: p.Address.String(), Algorithm: p.Address.Algorithm().String(),
			Primary: sum[:], BLAKE3: p.BLAKE3, SHA256: p.SHA256, Size: p.Size, AddedAt: at, dirty: true,
		}
		if p.MediaType != "" {
			mt := p.MediaType
			f.MediaType = &mt
		}
		f.existed = old != nil && old.existed
		s.putFile(f)
		if pr := s.pkgs[p.Package]; pr != nil {
			if old == nil {
				pr.FileCount++
			} else {
				pr.TotalBytes -= old.Size
			}
			pr.TotalBytes += p.Size
			pr.dirty = true
		}
	case events.ObjectStoredV1:
		s.store(p.Address, p.BackendID, p.BLAKE3, p.SHA256, p.Size, at)
	case events.ObjectReplicatedV1:
		s.store(p.Address, p.BackendID, p.BLAKE3, p.SHA256, p.Size, at)
	case events.ObjectRepairedV1:
		k := locKey{p.Address.String(), p.BackendID}
		l := s.locs[k]
		if l == nil {
			l = &locRow{
				Address: k.Address, Backend: k.Backend, Algorithm: p.Address.Algorithm().String(),
				BLAKE3: p.BLAKE3, SHA256: p.SHA256, Size: p.Size, Tier: catalog.TierHot,
			}
			s.putLoc(l)
		}
		l.State, l.StoredAt, l.RepairedAt = catalog.LocationOK, at, tp(at)
		l.Repairs++
		l.dirty = true
	case events.RetentionAssignedV1:
		s.setRetention(p.Package, p.Class, p.RetainUntil)
	case events.RetentionChangedV1:
		s.setRetention(p.Package, p.Class, p.RetainUntil)
	case events.LegalHoldSetV1:
		r := s.ret[p.Package]
		if r == nil {
			s.dangle(e.Sequence, e.Type, "package %q has no retention", p.Package)
			return nil
		}
		reason := p.Reason
		r.Hold, r.HoldReason, r.dirty = true, &reason, true
	case events.LegalHoldReleasedV1:
		r := s.ret[p.Package]
		if r == nil {
			s.dangle(e.Sequence, e.Type, "package %q has no retention", p.Package)
			return nil
		}
		r.Hold, r.HoldReason, r.dirty = false, nil, true
	case events.ObjectVerifiedV1:
		s.verify(e, p.Address.String(), p.BackendID, catalog.LocationOK, at)
	case events.ObjectCorruptV1:
		s.verify(e, p.Address.String(), p.BackendID, catalog.LocationCorrupt, at)
	case events.ObjectMissingV1:
		s.verify(e, p.Address.String(), p.BackendID, catalog.LocationMissing, at)
	case events.RetentionExpiredV1:
		r := s.ret[p.Package]
		if r == nil {
			s.dangle(e.Sequence, e.Type, "package %q has no retention", p.Package)
			return nil
		}
		if r.ExpiredAt == nil {
			r.ExpiredAt, r.dirty = tp(at), true
			if pr := s.pkgs[p.Package]; pr != nil && pr.State != catalog.PackageReaped {
				pr.State, pr.dirty = catalog.PackageExpired, true
			}
		}
		s.reap(p.Package, at)
	case events.ObjectDeletedV1:
		k := locKey{p.Address.String(), p.BackendID}
		l := s.locs[k]
		if l == nil {
			s.dangle(e.Sequence, e.Type, "location %s on %q does not exist", k.Address, k.Backend)
			return nil
		}
		if l.State != catalog.LocationDeleted {
			l.State, l.dirty = catalog.LocationDeleted, true
		}
		for name := range s.pkgsByAddr[k.Address] {
			s.reap(name, at)
		}
	case events.IngestRejectedV1, events.CommandRejectedV1:
		// No projection: a rejection is a fact of the log only.
	default:
		return fmt.Errorf("%w: event %d has type %q version %d, which this projector has no effect for",
			ErrUnknownEvent, e.Sequence, e.Type, e.PayloadVersion)
	}
	return nil
}

// store is the effect of object.stored and object.replicated on the
// location of addr on backend.
func (s *state) store(addr digest.Address, backend string, b3, s256 []byte, size int64, at time.Time) {
	k := locKey{addr.String(), backend}
	l := s.locs[k]
	if l == nil {
		s.putLoc(&locRow{
			Address: k.Address, Backend: k.Backend, Algorithm: addr.Algorithm().String(),
			BLAKE3: b3, SHA256: s256, Size: size, State: catalog.LocationOK, StoredAt: at, Tier: catalog.TierHot, dirty: true,
		})
		return
	}
	if l.State == catalog.LocationDeleted {
		l.State = catalog.LocationOK
		l.StoredAt = at
		l.dirty = true
	}
}

func (s *state) setRetention(pkg, class string, until *time.Time) {
	var u *time.Time
	if until != nil {
		u = tp(until.UTC())
	}
	r := s.ret[pkg]
	if r == nil {
		r = &retRow{Package: pkg}
		s.ret[pkg] = r
	}
	r.Class, r.RetainUntil, r.dirty = class, u, true
	if pr := s.pkgs[pkg]; pr != nil && pr.Class != class {
		pr.Class, pr.dirty = class, true
	}
}

func (s *state) verify(e events.Event, addr, backend string, st catalog.LocationState, at time.Time) {
	l := s.locs[locKey{addr, backend}]
	if l == nil {
		s.dangle(e.Sequence, e.Type, "location %s on %q does not exist", addr, backend)
		return
	}
	l.LastVerified = tp(at)
	l.Verified++
	if l.State != catalog.LocationDeleted {
		l.State = st
	}
	l.dirty = true
}

// reap applies the reap rule to one package. Only packages in s.reapable
// have their files and locations loaded; any other package cannot be
// expired (the loader makes every expired candidate reapable).
func (s *state) reap(pkg string, at time.Time) {
	if !s.reapable[pkg] {
		return
	}
	r := s.ret[pkg]
	if r == nil || r.ExpiredAt == nil || r.ReapedAt != nil {
		return
	}
	for fk := range s.filesByPkg[pkg] {
		f := s.files[fk]
		for lk := range s.locsByAddr[f.Address] {
			if s.locs[lk].State != catalog.LocationDeleted {
				return
			}
		}
	}
	r.ReapedAt, r.dirty = tp(at), true
	if pr := s.pkgs[pkg]; pr != nil {
		pr.State, pr.dirty = catalog.PackageReaped, true
	}
}
