package events

import (
	"time"

	"github.com/artifactstore/artifactstore/digest"
)

// Payload is implemented by every versioned payload struct. Each struct is
// the wire format of one event type at one version: a field is never removed
// or retyped; a change that would need that is a new version.
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
)

// PackageCreatedV1: a package came into being (subject: package name).
type PackageCreatedV1 struct {
	Name           string            `cbor:"name"`
	RetentionClass string            `cbor:"retention_class"`
	Metadata       map[string]string `cbor:"metadata,omitempty"`
}

// PackageSealedV1: no file may be added or replaced any more (subject: package).
type PackageSealedV1 struct {
	Name string `cbor:"name"`
}

// FileAddedV1: a path inside a package now names an object (subject: package).
type FileAddedV1 struct {
	Package   string         `cbor:"package"`
	Path      string         `cbor:"path"`
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	MediaType string         `cbor:"media_type,omitempty"`
}

// ObjectStoredV1: bytes of an object were placed on a backend (subject:
// content address).
type ObjectStoredV1 struct {
	Address   digest.Address `cbor:"address"`
	BLAKE3    []byte         `cbor:"blake3"`
	SHA256    []byte         `cbor:"sha256"`
	Size      int64          `cbor:"size"`
	BackendID string         `cbor:"backend_id"`
	// Deduplicated is true when the bytes were already on the backend.
	Deduplicated bool `cbor:"deduplicated,omitempty"`
}

// RetentionAssignedV1: a package's retention class and retain-until were set
// at creation (subject: package). RetainUntil is nil for classes that never
// expire.
type RetentionAssignedV1 struct {
	Package     string     `cbor:"package"`
	Class       string     `cbor:"class"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty"`
}

// RetentionChangedV1: a package moved to another class or retain-until
// (subject: package).
type RetentionChangedV1 struct {
	Package        string     `cbor:"package"`
	FromClass      string     `cbor:"from_class"`
	Class          string     `cbor:"class"`
	RetainUntil    *time.Time `cbor:"retain_until,omitempty"`
	PrevRetainTill *time.Time `cbor:"prev_retain_until,omitempty"`
	Reason         string     `cbor:"reason,omitempty"`
}

// LegalHoldSetV1: a legal hold now blocks expiry of the package (subject: package).
type LegalHoldSetV1 struct {
	Package string `cbor:"package"`
	Reason  string `cbor:"reason"`
}

// LegalHoldReleasedV1: the package's legal hold was released (subject: package).
type LegalHoldReleasedV1 struct {
	Package string `cbor:"package"`
	Reason  string `cbor:"reason,omitempty"`
}

// ObjectVerifiedV1: a scrub re-read the bytes and both digests and the size
// matched (subject: content address).
type ObjectVerifiedV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
	Size      int64          `cbor:"size"`
}

// ObjectCorruptV1: a scrub found bytes whose digests or size differ
// (subject: content address). The actual values are what was read.
type ObjectCorruptV1 struct {
	Address      digest.Address `cbor:"address"`
	BackendID    string         `cbor:"backend_id"`
	ActualBLAKE3 []byte         `cbor:"actual_blake3"`
	ActualSHA256 []byte         `cbor:"actual_sha256"`
	ActualSize   int64          `cbor:"actual_size"`
	ExpectedSize int64          `cbor:"expected_size"`
}

// ObjectMissingV1: a scrub found no bytes on the backend (subject: content address).
type ObjectMissingV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
}

// RetentionExpiredV1: the package's retain-until passed with no hold
// (subject: package).
type RetentionExpiredV1 struct {
	Package     string    `cbor:"package"`
	Class       string    `cbor:"class"`
	RetainUntil time.Time `cbor:"retain_until"`
}

// ObjectDeletedV1: the reaper deleted bytes that nothing live referenced
// (subject: content address).
type ObjectDeletedV1 struct {
	Address   digest.Address `cbor:"address"`
	BackendID string         `cbor:"backend_id"`
	Size      int64          `cbor:"size"`
	Reason    string         `cbor:"reason"`
}

// IngestRejectedV1: an ingest command was refused; nothing was stored
// (subject: command id).
type IngestRejectedV1 struct {
	CommandID string `cbor:"command_id"`
	Package   string `cbor:"package,omitempty"`
	Path      string `cbor:"path,omitempty"`
	// Code is a stable machine-readable reason, e.g. "digest_mismatch".
	Code string `cbor:"code"`
	// Reason is the human message sent to the producer.
	Reason string `cbor:"reason"`
}

func (PackageCreatedV1) EventType() Type    { return TypePackageCreated }
func (PackageSealedV1) EventType() Type     { return TypePackageSealed }
func (FileAddedV1) EventType() Type         { return TypeFileAdded }
func (ObjectStoredV1) EventType() Type      { return TypeObjectStored }
func (RetentionAssignedV1) EventType() Type { return TypeRetentionAssigned }
func (RetentionChangedV1) EventType() Type  { return TypeRetentionChanged }
func (LegalHoldSetV1) EventType() Type      { return TypeLegalHoldSet }
func (LegalHoldReleasedV1) EventType() Type { return TypeLegalHoldReleased }
func (ObjectVerifiedV1) EventType() Type    { return TypeObjectVerified }
func (ObjectCorruptV1) EventType() Type     { return TypeObjectCorrupt }
func (ObjectMissingV1) EventType() Type     { return TypeObjectMissing }
func (RetentionExpiredV1) EventType() Type  { return TypeRetentionExpired }
func (ObjectDeletedV1) EventType() Type     { return TypeObjectDeleted }
func (IngestRejectedV1) EventType() Type    { return TypeIngestRejected }

func (PackageCreatedV1) PayloadVersion() int    { return 1 }
func (PackageSealedV1) PayloadVersion() int     { return 1 }
func (FileAddedV1) PayloadVersion() int         { return 1 }
func (ObjectStoredV1) PayloadVersion() int      { return 1 }
func (RetentionAssignedV1) PayloadVersion() int { return 1 }
func (RetentionChangedV1) PayloadVersion() int  { return 1 }
func (LegalHoldSetV1) PayloadVersion() int      { return 1 }
func (LegalHoldReleasedV1) PayloadVersion() int { return 1 }
func (ObjectVerifiedV1) PayloadVersion() int    { return 1 }
func (ObjectCorruptV1) PayloadVersion() int     { return 1 }
func (ObjectMissingV1) PayloadVersion() int     { return 1 }
func (RetentionExpiredV1) PayloadVersion() int  { return 1 }
func (ObjectDeletedV1) PayloadVersion() int     { return 1 }
func (IngestRejectedV1) PayloadVersion() int    { return 1 }
