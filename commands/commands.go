package commands

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// Version is the schema version of the commands and replies of this package.
const Version = 1

// Limits of a command. They bound what one message can make the ingester
// hold in memory.
const (
	// MaxInline is the largest blob that rides inline in an ingest
	// command; larger blobs go through the staging object store. It is the
	// codec's cap on one CBOR byte string.
	MaxInline = 64 << 10
	// MaxCommandBytes caps an encoded command (CBOR or JSON). A JSON
	// command carries inline bytes as base64, a third longer.
	MaxCommandBytes = 128 << 10
	// MaxCommandID caps the command id.
	MaxCommandID = 128
	// MaxPackageName caps a package name.
	MaxPackageName = 200
	// MaxPath caps a path inside a package.
	MaxPath = 1024
	// MaxMetadataPairs caps the number of metadata entries.
	MaxMetadataPairs = 128
	// MaxMetadataKey and MaxMetadataValue cap one metadata entry.
	MaxMetadataKey   = 128
	MaxMetadataValue = 4096
	// MaxExpect caps the number of claimed addresses.
	MaxExpect = 4
	// MaxShortText caps the retention class, media type, producer and
	// staged-object name.
	MaxShortText = 256
)

// DefaultRetentionClass is the class of a new package whose first ingest
// names none.
const DefaultRetentionClass = "raw-evidence"

// ContentTypeJSON is the Content-Type header value of a JSON command or reply.
const ContentTypeJSON = "application/json"

// HeaderContentType is the header that selects JSON.
const HeaderContentType = "Content-Type"

// Ingest asks the ingester to store one blob as a file of a package. See the
// package documentation for the meaning of each field.
type Ingest struct {
	V              int               `cbor:"v" json:"v"`
	CommandID      string            `cbor:"command_id" json:"command_id"`
	Package        string            `cbor:"package" json:"package"`
	Path           string            `cbor:"path" json:"path"`
	RetentionClass string            `cbor:"retention_class,omitempty" json:"retention_class,omitempty"`
	Metadata       map[string]string `cbor:"metadata,omitempty" json:"metadata,omitempty"`
	MediaType      string            `cbor:"media_type,omitempty" json:"media_type,omitempty"`
	// ExpectSize is the claimed size; nil means no claim.
	ExpectSize *int64           `cbor:"expect_size,omitempty" json:"expect_size,omitempty"`
	Expect     []digest.Address `cbor:"expect,omitempty" json:"expect,omitempty"`
	// Inline holds the blob; nil means the blob is staged. An empty blob is
	// a non-nil empty slice.
	Inline []byte `cbor:"inline" json:"inline"`
	Staged string `cbor:"staged,omitempty" json:"staged,omitempty"`
	// Upload, with Staged, says that the staged upload is still in
	// progress and names its chunk subject's token: the ingester reads
	// the chunks while they arrive instead of the finished object.
	Upload   string `cbor:"upload,omitempty" json:"upload,omitempty"`
	Producer string `cbor:"producer,omitempty" json:"producer,omitempty"`
}

// Seal asks the ingester to close a package: no file may be added after it.
type Seal struct {
	V         int    `cbor:"v" json:"v"`
	CommandID string `cbor:"command_id" json:"command_id"`
	Package   string `cbor:"package" json:"package"`
	Producer  string `cbor:"producer,omitempty" json:"producer,omitempty"`
}

// Rejection codes: the stable, machine-readable reasons of a rejection.
const (
	CodeMalformed          = "malformed"
	CodeUnsupportedVersion = "unsupported_version"
	CodeInvalidCommandID   = "invalid_command_id"
	CodeInvalidPackage     = "invalid_package"
	CodeInvalidPath        = "invalid_path"
	CodeInvalidMetadata    = "invalid_metadata"
	CodeUnknownClass       = "unknown_retention_class"
	CodeClassConflict      = "retention_class_conflict"
	CodeMetadataConflict   = "metadata_conflict"
	CodeDigestMismatch     = "digest_mismatch"
	CodeSizeMismatch       = "size_mismatch"
	CodeTooLarge           = "too_large"
	CodeStagedMissing      = "staged_object_missing"
	CodeStagedDigest       = "staged_digest_mismatch"
	CodeUploadAbandoned    = "staged_upload_abandoned"
	CodePackageSealed      = "package_sealed"
	CodePackageExpired     = "package_expired"
	CodePathConflict       = "path_conflict"
	CodeSchemaViolation    = "metadata_schema_violation"
	CodeUnknownPackage     = "unknown_package"
)

// Error is a command the ingester refuses, with its code and a message for
// the producer that says what was wrong and what to do. Failed marks a
// command the pipeline could not handle (StatusFailed) rather than one it
// refused.
type Error struct {
	Code   string
	Reason string
	Failed bool
}

// ErrRejected is wrapped by every *Error of a refused command.
var ErrRejected = errors.New("command rejected")

// ErrFailed is wrapped by every *Error of a command the pipeline could not
// handle (Failed).
var ErrFailed = errors.New("command failed")

// Error returns "<code>: <reason>".
func (e *Error) Error() string { return e.Code + ": " + e.Reason }

// Unwrap returns ErrFailed or ErrRejected.
func (e *Error) Unwrap() error {
	if e.Failed {
		return ErrFailed
	}
	return ErrRejected
}

// Rejectf builds an *Error.
func Rejectf(code, format string, args ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// IsJSON reports whether a Content-Type header value selects JSON.
func IsJSON(contentType string) bool {
	ct, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(ct), ContentTypeJSON)
}

// Decoder decodes and validates commands. It is safe for concurrent use.
type Decoder struct {
	codec *events.Codec
	// uncapped is the codec's strictness without its cap on one string;
	// see rejectUncapped.
	uncapped cbor.DecMode
}

// NewDecoder returns a decoder that reads CBOR with codec.
func NewDecoder(codec *events.Codec) *Decoder {
	uncapped, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   4,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		TextUnmarshaler:   cbor.TextUnmarshalerTextString,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("commands: invalid CBOR decoding options: %v", err))
	}
	return &Decoder{codec: codec, uncapped: uncapped}
}

// decode reads one command into v from data, as JSON when isJSON.
func (d *Decoder) decode(data []byte, isJSON bool, v any) error {
	if len(data) > MaxCommandBytes {
		return Rejectf(CodeMalformed, "command of %d bytes is larger than the limit of %d; stage large blobs in the object store instead of sending them inline", len(data), MaxCommandBytes)
	}
	if isJSON {
		err := decodeJSON(data, v)
		switch {
		case errors.Is(err, errTrailingJSON):
			return Rejectf(CodeMalformed, "the JSON command has data after its object; send exactly one JSON object")
		case err != nil:
			return Rejectf(CodeMalformed, "the JSON command does not decode: %v; see the command schema in the commands package documentation", err)
		}
		return nil
	}
	if err := d.codec.Unmarshal(data, v); err != nil {
		return Rejectf(CodeMalformed, "the CBOR command does not decode: %v; send deterministic CBOR with the documented fields, or JSON with Content-Type: application/json", err)
	}
	return nil
}

// errTrailingJSON reports data after a JSON command's object.
var errTrailingJSON = errors.New("data after the JSON object")

// decodeJSON decodes exactly one JSON object into v and refuses unknown
// fields: a command the handler does not fully understand is refused,
// never half-applied.
func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errTrailingJSON
	}
	return nil
}

// DecodeIngest decodes and validates an ingest command. Every failure is an
// *Error with a rejection code.
func (d *Decoder) DecodeIngest(data []byte, isJSON bool) (Ingest, error) {
	return decodeValid[Ingest](d, data, isJSON)
}

// DecodeSeal decodes and validates a seal command.
func (d *Decoder) DecodeSeal(data []byte, isJSON bool) (Seal, error) {
	return decodeValid[Seal](d, data, isJSON)
}

// command is a command type: it validates itself, and returns the copy of
// itself a rejection may echo (see recordable).
type command[C any] interface {
	Validate() error
	forRejection() C
}

// decodeValid decodes a command of type C and validates it. On a decoding
// error it returns the zero C; on a validation error the decoded command,
// so that the rejection can name its id, package and path (those that are
// recordable text).
func decodeValid[C command[C]](d *Decoder, data []byte, isJSON bool) (C, error) {
	var c C
	if err := d.decode(data, isJSON, &c); err != nil {
		if !isJSON && len(data) <= MaxCommandBytes {
			if c, verr := rejectUncapped[C](d, data); verr != nil {
				return c, verr
			}
		}
		var zero C
		return zero, err
	}
	if err := c.Validate(); err != nil {
		return c.forRejection(), err
	}
	return c, nil
}

// rejectUncapped gives a CBOR command the code its JSON twin gets. The
// codec caps every CBOR string at 64 KiB (a limit of the event wire
// format), so a command whose only fault is a longer string, such as an
// inline blob over MaxInline, would be "malformed" in CBOR but
// "too_large" (or the field's code) in JSON, where strings have no cap.
// Decoded again without that cap (the whole command is capped at
// MaxCommandBytes), it is refused by Validate like the JSON one, and
// that rejection is returned. The error is nil when the command does not
// decode even so, or validates: the codec refused it for another reason.
func rejectUncapped[C command[C]](d *Decoder, data []byte) (C, error) {
	var c C
	if err := d.uncapped.Unmarshal(data, &c); err != nil {
		return c, nil
	}
	if err := c.Validate(); err != nil {
		return c.forRejection(), err
	}
	return c, nil
}

// Encode encodes a command or reply as CBOR with codec, or JSON when isJSON.
func Encode(codec *events.Codec, v any, isJSON bool) ([]byte, error) {
	if isJSON {
		return json.Marshal(v)
	}
	return codec.Marshal(v)
}

// Validate checks every field of an ingest command and returns an *Error.
func (c Ingest) Validate() error {
	if c.V != Version {
		return Rejectf(CodeUnsupportedVersion, "command schema version %d is not supported; this ingester reads version %d (field \"v\")", c.V, Version)
	}
	if err := ValidateCommandID(c.CommandID); err != nil {
		return err
	}
	if err := ValidatePackage(c.Package); err != nil {
		return err
	}
	if err := ValidatePath(c.Path); err != nil {
		return err
	}
	if err := validateShort("retention_class", c.RetentionClass); err != nil {
		return err
	}
	if err := validateShort("media_type", c.MediaType); err != nil {
		return err
	}
	if err := validateShort("producer", c.Producer); err != nil {
		return err
	}
	if err := ValidateMetadata(c.Metadata); err != nil {
		return err
	}
	if c.ExpectSize != nil && *c.ExpectSize < 0 {
		return Rejectf(CodeMalformed, "expect_size %d is negative; leave it out to make no claim", *c.ExpectSize)
	}
	if len(c.Expect) > MaxExpect {
		return Rejectf(CodeMalformed, "%d claimed addresses, more than %d; claim at most one per algorithm", len(c.Expect), MaxExpect)
	}
	for i, a := range c.Expect {
		if a.IsZero() {
			return Rejectf(CodeMalformed, "claimed address #%d is empty; use <blake3|sha256>:<64 lowercase hex digits>", i)
		}
	}
	switch {
	case c.Inline != nil && c.Staged != "":
		return Rejectf(CodeMalformed, "both inline and staged are set; send the blob one way only")
	case c.Inline == nil && c.Staged == "":
		return Rejectf(CodeMalformed, "neither inline nor staged is set; put the blob in inline (at most %d bytes) or stage it and name it in staged", MaxInline)
	case len(c.Inline) > MaxInline:
		return Rejectf(CodeTooLarge, "inline blob of %d bytes is larger than %d; stage it in the object store instead", len(c.Inline), MaxInline)
	}
	if c.Upload != "" {
		if c.Staged == "" {
			return Rejectf(CodeMalformed, "upload is set without staged; name the staged object in staged and its upload in upload")
		}
		if !ValidUpload(c.Upload) {
			return Rejectf(CodeMalformed, "upload %q is not an upload id (1 to 64 letters, digits, - or _)", recordable(c.Upload))
		}
	}
	return validateShort("staged", c.Staged)
}

// ValidUpload reports whether id can be an upload id: the token of the
// staging chunk subject $O.<bucket>.C.<id> (1 to 64 letters, digits, - or
// _). The staging package checks ids with it too.
func ValidUpload(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Validate checks every field of a seal command and returns an *Error.
func (c Seal) Validate() error {
	if c.V != Version {
		return Rejectf(CodeUnsupportedVersion, "command schema version %d is not supported; this ingester reads version %d (field \"v\")", c.V, Version)
	}
	if err := ValidateCommandID(c.CommandID); err != nil {
		return err
	}
	if err := ValidatePackage(c.Package); err != nil {
		return err
	}
	return validateShort("producer", c.Producer)
}

func (c Ingest) forRejection() Ingest {
	c.Package, c.Path, c.Staged = recordable(c.Package), recordable(c.Path), recordable(c.Staged)
	return c
}

func (c Seal) forRejection() Seal {
	c.Package = recordable(c.Package)
	return c
}

// ValidateCommandID checks a command id: 1..MaxCommandID printable ASCII
// bytes without spaces, '.', '*' or '>' (it is also a NATS header value
// and the last token of the reply subject).
func ValidateCommandID(id string) error {
	if id == "" {
		return Rejectf(CodeInvalidCommandID, "command_id is empty; give every command a unique id (a UUID is fine)")
	}
	if len(id) > MaxCommandID {
		return Rejectf(CodeInvalidCommandID, "command_id is %d bytes, more than %d", len(id), MaxCommandID)
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' || id[i] == '.' || id[i] == '*' || id[i] == '>' {
			return Rejectf(CodeInvalidCommandID, "command_id has %q at offset %d; use printable ASCII without spaces, '.', '*' or '>' (a UUID is fine)", id[i], i)
		}
	}
	return nil
}

// ValidatePackage checks a package name: it starts with a letter or digit
// and holds only letters, digits and ._:@+/=- ; at most MaxPackageName bytes.
func ValidatePackage(name string) error {
	if name == "" {
		return Rejectf(CodeInvalidPackage, "package name is empty; name the package, e.g. ci/run-42")
	}
	if len(name) > MaxPackageName {
		return Rejectf(CodeInvalidPackage, "package name is %d bytes, more than %d", len(name), MaxPackageName)
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		if i == 0 && !alnum {
			return Rejectf(CodeInvalidPackage, "package name %q must start with a letter or digit", trunc(name))
		}
		if !alnum && !strings.ContainsRune("._:@+/=-", rune(b)) {
			return Rejectf(CodeInvalidPackage, "package name %q has %q at offset %d; use letters, digits and ._:@+/=-", trunc(name), b, i)
		}
	}
	return nil
}

// ValidatePath checks a path inside a package: a clean, relative,
// slash-separated path of text (CheckText, one line) with no "." or ".."
// component, no empty component and no backslash; at most MaxPath bytes.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return Rejectf(CodeInvalidPath, "path is empty; give the file's path inside the package, e.g. logs/build.txt")
	case strings.HasPrefix(p, "/"):
		return Rejectf(CodeInvalidPath, "path %q is absolute; give a path relative to the package root", trunc(p))
	}
	if err := ValidateText(CodeInvalidPath, "path", p, MaxPath, Line); err != nil {
		return err
	}
	if i := strings.IndexByte(p, '\\'); i >= 0 {
		return Rejectf(CodeInvalidPath, "path %q has a backslash at byte offset %d; separate components with '/'", trunc(p), i)
	}
	for _, comp := range strings.Split(p, "/") {
		if comp == ".." {
			return Rejectf(CodeInvalidPath, "path %q has a \"..\" component; paths may not leave the package", trunc(p))
		}
	}
	if path.Clean(p) != p || p == "." {
		return Rejectf(CodeInvalidPath, "path %q is not clean (empty, \".\" or repeated-slash components, or a trailing slash); use %q", trunc(p), path.Clean(p))
	}
	return nil
}

// ValidateMetadata checks package metadata: at most MaxMetadataPairs
// entries, keys of one line, values of text that may hold line breaks.
func ValidateMetadata(m map[string]string) error {
	if len(m) > MaxMetadataPairs {
		return Rejectf(CodeInvalidMetadata, "%d metadata entries, more than %d", len(m), MaxMetadataPairs)
	}
	for k, v := range m {
		if k == "" {
			return Rejectf(CodeInvalidMetadata, "a metadata key is empty; name every entry")
		}
		if err := ValidateText(CodeInvalidMetadata, "metadata key", k, MaxMetadataKey, Line); err != nil {
			return err
		}
		if err := ValidateText(CodeInvalidMetadata, fmt.Sprintf("metadata value of %q", trunc(k)), v, MaxMetadataValue, Lines); err != nil {
			return err
		}
	}
	return nil
}

func validateShort(field, s string) error {
	return ValidateText(CodeMalformed, field, s, MaxShortText, Line)
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
