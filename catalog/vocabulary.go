package catalog

// LocationState is the state of one stored copy of an object
// (storage_locations.state). The projector writes it from the log; the
// table's CHECK constraint admits exactly LocationStates.
type LocationState string

// The stored location states.
const (
	// LocationOK: the bytes are there and the last check (if any) proved
	// them. Only an ok copy is served.
	LocationOK LocationState = "ok"
	// LocationCorrupt: a verification or a read found bytes that do not
	// match the address.
	LocationCorrupt LocationState = "corrupt"
	// LocationMissing: the backend does not hold the bytes.
	LocationMissing LocationState = "missing"
	// LocationDeleted: the reaper deleted the bytes; the row stays as the
	// record.
	LocationDeleted LocationState = "deleted"
)

// LocationUnknown is reported, never stored: no location of the object is
// recorded (never stored, or the projector has not caught up).
const LocationUnknown LocationState = "unknown"

// LocationStates returns the stored location states, best first: the order
// in which readers pick the location that stands for an object.
func LocationStates() []LocationState {
	return []LocationState{LocationOK, LocationCorrupt, LocationMissing, LocationDeleted}
}

// Rank orders location states as LocationStates does: ok 0, corrupt 1,
// missing 2, anything else 3. locationRank is the same order in SQL.
func (s LocationState) Rank() int {
	switch s {
	case LocationOK:
		return 0
	case LocationCorrupt:
		return 1
	case LocationMissing:
		return 2
	default:
		return 3
	}
}

// locationRank is Rank in SQL, over the column state of storage_locations.
const locationRank = `CASE state WHEN '` + string(LocationOK) + `' THEN 0 WHEN '` + string(LocationCorrupt) +
	`' THEN 1 WHEN '` + string(LocationMissing) + `' THEN 2 ELSE 3 END`

// copyRank is Rank in SQL over the column state of the
// storage_locations row aliased c.
const copyRank = `CASE c.state WHEN '` + string(LocationOK) + `' THEN 0 WHEN '` + string(LocationCorrupt) +
	`' THEN 1 WHEN '` + string(LocationMissing) + `' THEN 2 ELSE 3 END`

// PackageState is the life-cycle state of a package
// (artifact_packages.state).
type PackageState string

// The stored package states.
const (
	// PackageOpen: files may still be added.
	PackageOpen PackageState = "open"
	// PackageSealed: no file can be added.
	PackageSealed PackageState = "sealed"
	// PackageExpired: its retention expired; its bytes may go once nothing
	// else needs them.
	PackageExpired PackageState = "expired"
	// PackageReaped: expired, and no file of it has a live location left.
	PackageReaped PackageState = "reaped"
)

// PackageUnknown is reported, never stored: a file names a package that has
// no row (yet).
const PackageUnknown PackageState = "unknown"

// PackageStates returns the stored package states in life-cycle order.
func PackageStates() []PackageState {
	return []PackageState{PackageOpen, PackageSealed, PackageExpired, PackageReaped}
}

// Known reports whether s is one of PackageStates.
func (s PackageState) Known() bool {
	for _, k := range PackageStates() {
		if s == k {
			return true
		}
	}
	return false
}

// RetrievalTier is how fast a location's bytes can be read
// (storage_locations.retrieval_tier).
type RetrievalTier string

// TierHot is the only tier today: bytes read at once. Colder tiers (and
// restore_status) are reserved for backends that archive.
const TierHot RetrievalTier = "hot"
