package events

import (
	"bytes"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/digest"
)

// Payload is implemented by every versioned payload struct. Each struct is
// the wire format of one event type at one version: a field is never removed
// or retyped; a change that would need that is a new version, registered in
// codec.go and pinned by a golden file in testdata/.
//
// Every registered struct also has a Validate method that EncodePayload and
// DecodePayload call.
type Payload interface {
	// EventType is the event type the payload belongs to.
	EventType() Type
	// PayloadVersion is the version of this struct for its type.
	PayloadVersion() int
}

// The v1 event types.
const (
	TypePackageCreated    Type = "package.created"
	TypePackageSealed     Type = "package.sealed"
	TypeFileAdded         Type = "file.added"
	TypeObjectStored      Type = "object.stored"
	TypeRetentionAssigned Type = "retention.assigned"
	TypeRetentionChanged  Type = "retention.changed"
	TypeLegalHoldSet      Type = "legal_hold.set"
	TypeLegalHoldReleased Type = "legal_hold.released"
	TypeObjectVerified    Type = "object.verified"
	TypeObjectCorrupt     Type = "object.corrupt"
	TypeObjectMissing     Type = "object.missing"
	TypeRetentionExpired  Type = "retention.expired"
	TypeObjectDeleted     Type = "object.deleted"
	TypeIngestRejected    Type = "ingest.rejected"
	TypeCommandRejected   Type = "command.rejected"
	TypeObjectRepaired    Type = "object.repaired"
	TypeObjectReplicated  Type = "object.replicated"
)

// PackageCreatedV1 records that a package came into being (subject:
// package name).
type PackageCreatedV1 struct {
	Name           string            `cbor:"name"`
	RetentionClass string            `cbor:"retention_class"`
	Metadata       map[string]string `cbor:"metadata,omitempty"`
}

// EventType returns TypePackageCreated.
func (PackageCreatedV1) EventType() Type { return TypePackageCreated }

// PayloadVersion returns 1.
func (PackageCreatedV1) PayloadVersion() int { return 1 }

// Validate requires Name and RetentionClass.
func (p PackageCreatedV1) Validate() error {
	return firstError(p.EventType(),
		required("name", p.Name),
		required("retention_class", p.RetentionClass))
}

// PackageSealedV1 records that no file may be added to or replaced in the
// package any more (subject: package).
type PackageSealedV1 struct {
	Name string `cbor:"name"`
}

// EventType returns TypePackageSealed.
func (PackageSealedV1) EventType() Type { return TypePackageSealed }

// PayloadVersion returns 1.
func (PackageSealedV1) PayloadVersion() int { return 1 }

// Validate requires Name.
func (p PackageSealedV1) Validate() error {
	return firstError(p.EventType(), required("name", p.Name))
}

// FileAddedV1 records that a path inside a package now names an object
// (subject: package).
type FileAddedV1 struct {
	Package   string         `cbor:"package"`
	Path      string         `cbor:"path"`
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	MediaType string         `cbor:"media_type,omitempty"`
}

// EventType returns TypeFileAdded.
func (FileAddedV1) EventType() Type { return TypeFileAdded }

// PayloadVersion returns 1.
func (FileAddedV1) PayloadVersion() int { return 1 }

// Validate requires Package, Path, both digests, a non-negative Size and
// an Address that is the address of one of the digests.
func (p FileAddedV1) Validate() error {
	return firstError(p.EventType(),
		required("package", p.Package),
		required("path", p.Path),
		objectDigests(p.Address, p.BLAKE3, p.SHA256),
		nonNegative("size", p.Size))
}

// ObjectStoredV1 records that the bytes of an object were placed on a
// backend (subject: content address).
type ObjectStoredV1 struct {
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	BackendID string         `cbor:"backend_id"`
	// Deduplicated is true when the bytes were already on the backend.
	Deduplicated bool `cbor:"deduplicated,omitempty"`
}

// EventType returns TypeObjectStored.
func (ObjectStoredV1) EventType() Type { return TypeObjectStored }

// PayloadVersion returns 1.
func (ObjectStoredV1) PayloadVersion() int { return 1 }

// Validate requires both digests, an Address that is the address of one of
// them, a non-negative Size and BackendID.
func (p ObjectStoredV1) Validate() error {
	return firstError(p.EventType(),
		objectDigests(p.Address, p.BLAKE3, p.SHA256),
		nonNegative("size", p.Size),
		required("backend_id", p.BackendID))
}

// RetentionAssignedV1 records a package's retention class and retain-until
// as set at creation (subject: package). RetainUntil is nil for classes
// that never expire.
type RetentionAssignedV1 struct {
	Package     string     `cbor:"package"`
	Class       string     `cbor:"class"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty"`
}

// EventType returns TypeRetentionAssigned.
func (RetentionAssignedV1) EventType() Type { return TypeRetentionAssigned }

// PayloadVersion returns 1.
func (RetentionAssignedV1) PayloadVersion() int { return 1 }

// Validate requires Package and Class, and RetainUntil, when set, to be a
// non-zero time in years 1-9999.
func (p RetentionAssignedV1) Validate() error {
	return firstError(p.EventType(),
		required("package", p.Package),
		required("class", p.Class),
		optionalTime("retain_until", p.RetainUntil))
}

// RetentionChangedV1 records that a package moved to another class or
// retain-until (subject: package). Nil times mean "never expires".
type RetentionChangedV1 struct {
	Package        string     `cbor:"package"`
	FromClass      string     `cbor:"from_class"`
	Class          string     `cbor:"class"`
	RetainUntil    *time.Time `cbor:"retain_until,omitempty"`
	PrevRetainTill *time.Time `cbor:"prev_retain_until,omitempty"`
	Reason         string     `cbor:"reason,omitempty"`
}

// EventType returns TypeRetentionChanged.
func (RetentionChangedV1) EventType() Type { return TypeRetentionChanged }

// PayloadVersion returns 1.
func (RetentionChangedV1) PayloadVersion() int { return 1 }

// Validate requires Package, FromClass and Class, and the times, when set,
// to be non-zero times in years 1-9999.
func (p RetentionChangedV1) Validate() error {
	return firstError(p.EventType(),
		required("package", p.Package),
		required("from_class", p.FromClass),
		required("class", p.Class),
		optionalTime("retain_until", p.RetainUntil),
		optionalTime("prev_retain_until", p.PrevRetainTill))
}

// LegalHoldSetV1 records that a legal hold now blocks expiry of the package
// (subject: package).
type LegalHoldSetV1 struct {
	Package string `cbor:"package"`
	Reason  string `cbor:"reason"`
}

// EventType returns TypeLegalHoldSet.
func (LegalHoldSetV1) EventType() Type { return TypeLegalHoldSet }

// PayloadVersion returns 1.
func (LegalHoldSetV1) PayloadVersion() int { return 1 }

// Validate requires Package and Reason: a hold without a stated reason
// cannot be reviewed or released on purpose.
func (p LegalHoldSetV1) Validate() error {
	return firstError(p.EventType(),
		required("package", p.Package),
		required("reason", p.Reason))
}

// LegalHoldReleasedV1 records that the package's legal hold was released
// (subject: package).
type LegalHoldReleasedV1 struct {
	Package string `cbor:"package"`
	Reason  string `cbor:"reason,omitempty"`
}

// EventType returns TypeLegalHoldReleased.
func (LegalHoldReleasedV1) EventType() Type { return TypeLegalHoldReleased }

// PayloadVersion returns 1.
func (LegalHoldReleasedV1) PayloadVersion() int { return 1 }

// Validate requires Package.
func (p LegalHoldReleasedV1) Validate() error {
	return firstError(p.EventType(), required("package", p.Package))
}

// ObjectVerifiedV1 records that a scrub re-read the bytes and that both
// digests and the size matched (subject: content address).
type ObjectVerifiedV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
	Size      int64          `cbor:"size"`
}

// EventType returns TypeObjectVerified.
func (ObjectVerifiedV1) EventType() Type { return TypeObjectVerified }

// PayloadVersion returns 1.
func (ObjectVerifiedV1) PayloadVersion() int { return 1 }

// Validate requires Address, BackendID and a non-negative Size.
func (p ObjectVerifiedV1) Validate() error {
	return firstError(p.EventType(),
		address("address", p.Address),
		required("backend_id", p.BackendID),
		nonNegative("size", p.Size))
}

// ObjectCorruptV1 records that a scrub found bytes whose digests or size
// differ (subject: content address). The actual values are what was read.
type ObjectCorruptV1 struct {
	Address      digest.Address `cbor:"address"`
	BackendID    string         `cbor:"backend_id"`
	ActualBLAKE3 []byte         `cbor:"actual_blake3"`
	ActualSHA256 []byte         `cbor:"actual_sha256"`
	ActualSize   int64          `cbor:"actual_size"`
	ExpectedSize int64          `cbor:"expected_size"`
}

// EventType returns TypeObjectCorrupt.
func (ObjectCorruptV1) EventType() Type { return TypeObjectCorrupt }

// PayloadVersion returns 1.
func (ObjectCorruptV1) PayloadVersion() int { return 1 }

// Validate requires Address, BackendID, both actual digests and
// non-negative sizes.
func (p ObjectCorruptV1) Validate() error {
	return firstError(p.EventType(),
		address("address", p.Address),
		required("backend_id", p.BackendID),
		digestBytes("actual_blake3", p.ActualBLAKE3),
		digestBytes("actual_sha256", p.ActualSHA256),
		nonNegative("actual_size", p.ActualSize),
		nonNegative("expected_size", p.ExpectedSize))
}

// ObjectMissingV1 records that a scrub found no bytes on the backend
// (subject: content address).
type ObjectMissingV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
}

// EventType returns TypeObjectMissing.
func (ObjectMissingV1) EventType() Type { return TypeObjectMissing }

// PayloadVersion returns 1.
func (ObjectMissingV1) PayloadVersion() int { return 1 }

// Validate requires Address and BackendID.
func (p ObjectMissingV1) Validate() error {
	return firstError(p.EventType(),
		address("address", p.Address),
		required("backend_id", p.BackendID))
}

// What was wrong with a repaired copy (ObjectRepairedV1.Was).
const (
	RepairedCorrupt = "corrupt"
	RepairedMissing = "missing"
)

// RepairSourceReupload is ObjectRepairedV1.Source when a producer put the
// content again; a copy taken from another backend is
// RepairSourceReplica(<backend id>).
const RepairSourceReupload = "reupload"

// RepairSourceReplica is ObjectRepairedV1.Source when the good bytes were
// copied from the verified copy on backend id: "replica:<id>".
func RepairSourceReplica(id string) string { return "replica:" + id }

// ObjectRepairedV1 records that the stored copy of an object on a backend
// was damaged or lost and that bytes verified against the address
// replaced it (subject: content address). Only this event and
// object.verified bring a corrupt or missing location back to ok.
type ObjectRepairedV1 struct {
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	BackendID string         `cbor:"backend_id"`
	// Was is what was wrong with the copy before: RepairedCorrupt
	// (bytes or tree did not match, or could not be read) or
	// RepairedMissing (the backend did not hold it).
	Was string `cbor:"was"`
	// Detail says what was found, in words.
	Detail string `cbor:"detail,omitempty"`
	// Source is where the good bytes came from: RepairSourceReupload, or
	// "replica:<backend id>".
	Source string `cbor:"source"`
	// CommandID is the command whose upload repaired the copy, when one
	// did.
	CommandID string `cbor:"command_id,omitempty"`
}

// EventType returns TypeObjectRepaired.
func (ObjectRepairedV1) EventType() Type { return TypeObjectRepaired }

// PayloadVersion returns 1.
func (ObjectRepairedV1) PayloadVersion() int { return 1 }

// Validate requires both digests, an Address that is the address of one
// of them, a non-negative Size, BackendID, a known Was and a Source.
func (p ObjectRepairedV1) Validate() error {
	var was error
	if p.Was != RepairedCorrupt && p.Was != RepairedMissing {
		was = fmt.Errorf("field %q is %q; it must be %q or %q", "was", p.Was, RepairedCorrupt, RepairedMissing)
	}
	return firstError(p.EventType(),
		objectDigests(p.Address, p.BLAKE3, p.SHA256),
		nonNegative("size", p.Size),
		required("backend_id", p.BackendID),
		was,
		required("source", p.Source))
}

// ObjectReplicatedV1 records that a further copy of an object was placed
// on a backend (subject: content address): the bytes were read from
// SourceBackendID and proven against the address on the way out, and
// written to BackendID through a put that checked both digests and the
// size. The projection gains (or revives) the location on BackendID, like
// object.stored.
type ObjectReplicatedV1 struct {
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	BackendID string         `cbor:"backend_id"`
	// SourceBackendID is the backend whose verified copy was read.
	SourceBackendID string `cbor:"source_backend_id"`
	// Deduplicated is true when BackendID already held the content (and
	// its copy passed the put's check).
	Deduplicated bool `cbor:"deduplicated,omitempty"`
	// Reason says why the copy was made (the policy's rule, in words).
	Reason string `cbor:"reason,omitempty"`
}

// EventType returns TypeObjectReplicated.
func (ObjectReplicatedV1) EventType() Type { return TypeObjectReplicated }

// PayloadVersion returns 1.
func (ObjectReplicatedV1) PayloadVersion() int { return 1 }

// Validate requires both digests, an Address that is the address of one
// of them, a non-negative Size, BackendID and a SourceBackendID other
// than BackendID.
func (p ObjectReplicatedV1) Validate() error {
	var same error
	if p.SourceBackendID != "" && p.SourceBackendID == p.BackendID {
		same = fmt.Errorf("field %q equals %q (%q): a replica is copied from another backend", "source_backend_id", "backend_id", p.BackendID)
	}
	return firstError(p.EventType(),
		objectDigests(p.Address, p.BLAKE3, p.SHA256),
		nonNegative("size", p.Size),
		required("backend_id", p.BackendID),
		required("source_backend_id", p.SourceBackendID),
		same)
}

// RetentionExpiredV1 records that the package's retain-until passed with no
// hold (subject: package).
type RetentionExpiredV1 struct {
	Package     string    `cbor:"package"`
	Class       string    `cbor:"class"`
	RetainUntil time.Time `cbor:"retain_until"`
}

// EventType returns TypeRetentionExpired.
func (RetentionExpiredV1) EventType() Type { return TypeRetentionExpired }

// PayloadVersion returns 1.
func (RetentionExpiredV1) PayloadVersion() int { return 1 }

// Validate requires Package, Class and a non-zero RetainUntil in years
// 1-9999.
func (p RetentionExpiredV1) Validate() error {
	return firstError(p.EventType(),
		required("package", p.Package),
		required("class", p.Class),
		requiredTime("retain_until", p.RetainUntil))
}

// ObjectDeletedV1 records that the reaper deleted bytes that nothing live
// referenced (subject: content address).
type ObjectDeletedV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
	Size      int64          `cbor:"size"`
	Reason    string         `cbor:"reason"`
}

// EventType returns TypeObjectDeleted.
func (ObjectDeletedV1) EventType() Type { return TypeObjectDeleted }

// PayloadVersion returns 1.
func (ObjectDeletedV1) PayloadVersion() int { return 1 }

// Validate requires Address, BackendID, a non-negative Size and Reason.
func (p ObjectDeletedV1) Validate() error {
	return firstError(p.EventType(),
		address("address", p.Address),
		required("backend_id", p.BackendID),
		nonNegative("size", p.Size),
		required("reason", p.Reason))
}

// IngestRejectedV1 records that an ingest command was refused and nothing
// was stored (subject: command id).
type IngestRejectedV1 struct {
	// CommandID is the refused command's id; empty only when the command
	// carried none (which is itself a reason to refuse it).
	CommandID string `cbor:"command_id"`
	Package   string `cbor:"package,omitempty"`
	Path      string `cbor:"path,omitempty"`
	// Code is a stable machine-readable reason, e.g. "digest_mismatch".
	Code string `cbor:"code"`
	// Reason is the human message sent to the producer.
	Reason string `cbor:"reason"`
}

// EventType returns TypeIngestRejected.
func (IngestRejectedV1) EventType() Type { return TypeIngestRejected }

// PayloadVersion returns 1.
func (IngestRejectedV1) PayloadVersion() int { return 1 }

// Validate requires Code and Reason.
func (p IngestRejectedV1) Validate() error {
	return firstError(p.EventType(),
		required("code", p.Code),
		required("reason", p.Reason))
}

// CommandRejectedV1 records that a command other than an ingest (a
// retention change, a hold, a release) was refused and changed nothing
// (subject: command id).
type CommandRejectedV1 struct {
	// CommandID is the refused command's id.
	CommandID string `cbor:"command_id"`
	// Command names what was asked, e.g. "retention.retain".
	Command string `cbor:"command"`
	Package string `cbor:"package,omitempty"`
	// Code is a stable machine-readable reason, e.g.
	// "retention_shorten_refused".
	Code string `cbor:"code"`
	// Reason is the human message sent to the requester.
	Reason string `cbor:"reason"`
}

// EventType returns TypeCommandRejected.
func (CommandRejectedV1) EventType() Type { return TypeCommandRejected }

// PayloadVersion returns 1.
func (CommandRejectedV1) PayloadVersion() int { return 1 }

// Validate requires CommandID, Command, Code and Reason.
func (p CommandRejectedV1) Validate() error {
	return firstError(p.EventType(),
		required("command_id", p.CommandID),
		required("command", p.Command),
		required("code", p.Code),
		required("reason", p.Reason))
}

// firstError returns the first non-nil check result, wrapped with
// ErrInvalidPayload and the event type.
func firstError(t Type, checks ...error) error {
	for _, err := range checks {
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalidPayload, t, err)
		}
	}
	return nil
}

func required(field, v string) error {
	if v == "" {
		return fmt.Errorf("field %q is empty; it is required", field)
	}
	return nil
}

func nonNegative(field string, n int64) error {
	if n < 0 {
		return fmt.Errorf("field %q is %d; it must not be negative", field, n)
	}
	return nil
}

func address(field string, a digest.Address) error {
	if a.IsZero() {
		return fmt.Errorf("field %q is the zero address; set a content address", field)
	}
	return nil
}

func digestBytes(field string, b []byte) error {
	if len(b) != digest.Size {
		return fmt.Errorf("field %q holds %d bytes; a digest has %d", field, len(b), digest.Size)
	}
	return nil
}

// objectDigests checks both digests of an object and that its address is
// the address of one of them under its algorithm.
func objectDigests(a digest.Address, b3, s256 []byte) error {
	if err := address("address", a); err != nil {
		return err
	}
	if err := digestBytes("blake3", b3); err != nil {
		return err
	}
	if err := digestBytes("sha256", s256); err != nil {
		return err
	}
	sum := a.Sum()
	want, field := b3, "blake3"
	if a.Algorithm() == digest.SHA256 {
		want, field = s256, "sha256"
	}
	if !bytes.Equal(sum[:], want) {
		return fmt.Errorf("address %s does not match field %q (%x)", a, field, want)
	}
	return nil
}

// requiredTime requires a non-zero time whose UTC year has four digits, the
// range RFC 3339 text (the wire form of times) can hold.
func requiredTime(field string, t time.Time) error {
	if t.IsZero() {
		return fmt.Errorf("field %q is the zero time; it is required", field)
	}
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("field %q is in year %d; it must be within years 1-9999", field, y)
	}
	return nil
}

func optionalTime(field string, t *time.Time) error {
	if t == nil {
		return nil
	}
	return requiredTime(field, *t)
}
