package events

import (
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/fxamacker/cbor/v2"
	"lukechampine.com/blake3"
)

// Decoding limits. Payloads and commands are small, flat structs; anything
// beyond these is hostile or broken input. They are part of the wire
// format: lowering one can make stored events undecodable.
const (
	// MaxPayloadBytes caps an encoded payload (and any item Unmarshal reads).
	MaxPayloadBytes = 1 << 20
	// maxNested caps nesting of arrays, maps and tags. A payload is a map
	// holding at most one level of maps (metadata).
	maxNested = 8
	// maxArray caps the element count of one array.
	maxArray = 4096
	// maxMapPairs caps the pair count of one map (struct fields, metadata).
	maxMapPairs = 1024
	// maxString caps one byte or text string. fxamacker/cbor v2.10 has no
	// option for it, so scanHeads enforces it.
	maxString = 64 << 10
)

// ErrMalformed is wrapped by every decoding error: the bytes are not a valid
// encoding of the expected struct. Such input is poison, never retried.
var ErrMalformed = errors.New("malformed CBOR")

// ErrUnknownType is wrapped when an event type or version has no payload struct.
var ErrUnknownType = errors.New("unknown event type")

// ErrInvalidPayload is wrapped when a payload struct breaks a rule of its
// type (a required field is empty, an address is zero, a digest has the
// wrong length). EncodePayload refuses such a payload; DecodePayload
// reports it wrapped together with ErrMalformed.
var ErrInvalidPayload = errors.New("invalid payload")

// ErrPayloadDigest means an event's payload does not match its recorded
// digest: the log was altered.
var ErrPayloadDigest = errors.New("payload digest mismatch: the log was altered")

// Codec is the project's deterministic, strict CBOR encoding: equal values
// give equal bytes, and decoding enforces explicit limits and rejects
// duplicate map keys, unknown fields, tags and indefinite lengths.
//
// Times are encoded as RFC 3339 text with nanoseconds, always in UTC, so
// the same instant gives the same bytes whatever its location; they decode
// in UTC and compare equal with time.Time.Equal. A digest.Address is
// encoded as its text form and decoded through digest.Parse.
//
// A Codec holds no mutable state and is safe for concurrent use.
type Codec struct {
	enc cbor.EncMode
	dec cbor.DecMode
}

// NewCodec builds the codec. Its options are fixed: they are the wire
// format, pinned by the golden files in testdata/.
func NewCodec() *Codec {
	encOpts := cbor.CoreDetEncOptions()
	encOpts.Time = cbor.TimeRFC3339NanoUTC
	encOpts.TimeTag = cbor.EncTagNone
	encOpts.TextMarshaler = cbor.TextMarshalerTextString
	enc, err := encOpts.EncMode()
	if err != nil {
		panic(fmt.Sprintf("events: invalid encoding options: %v", err))
	}
	dec, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   maxNested,
		MaxArrayElements:  maxArray,
		MaxMapPairs:       maxMapPairs,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		TextUnmarshaler:   cbor.TextUnmarshalerTextString,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("events: invalid decoding options: %v", err))
	}
	return &Codec{enc: enc, dec: dec}
}

// Marshal encodes v deterministically. It does not check the limits that
// Unmarshal enforces; EncodePayload does.
func (c *Codec) Marshal(v any) ([]byte, error) {
	b, err := c.enc.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal decodes exactly one CBOR item from b into v, enforcing the
// limits. Trailing bytes, oversized input and every decoding error wrap
// ErrMalformed.
func (c *Codec) Unmarshal(b []byte, v any) error {
	if len(b) > MaxPayloadBytes {
		return fmt.Errorf("%w: %d bytes, more than the limit of %d", ErrMalformed, len(b), MaxPayloadBytes)
	}
	// The head scan runs first: it refuses long strings before the decoder
	// allocates them, and it reads no value, so nothing is decoded twice.
	n, err := scanHeads(b, maxString)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("%w: %d trailing bytes after the item", ErrMalformed, len(b)-n)
	}
	if err := c.dec.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// Decode reads at most limit bytes from r and decodes them into v. A limit
// that is not positive or is above MaxPayloadBytes means MaxPayloadBytes,
// which Unmarshal enforces anyway. A read error is returned as is; more
// bytes than the limit wrap ErrMalformed.
func (c *Codec) Decode(r io.Reader, limit int64, v any) error {
	if limit <= 0 || limit > MaxPayloadBytes {
		limit = MaxPayloadBytes
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return fmt.Errorf("read CBOR item: %w", err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("%w: more than %d bytes", ErrMalformed, limit)
	}
	return c.Unmarshal(b, v)
}

// scanHeads reads the heads of the first CBOR item in b and the items
// nested in it, skipping string contents without looking at them, and
// returns the item's length. It refuses byte and text strings longer than
// maxStr bytes, indefinite lengths, reserved head values and truncated input.
// It neither allocates nor recurses: it counts the items still to read.
// Everything else (nesting, counts, duplicate keys, simple values) is left
// to the decoder.
func scanHeads(b []byte, maxStr uint64) (int, error) {
	off := 0
	for pending := uint64(1); pending > 0; pending-- {
		if off >= len(b) {
			return 0, fmt.Errorf("%w: unexpected end of input at offset %d", ErrMalformed, off)
		}
		head := off
		major, info := b[off]>>5, b[off]&0x1f
		off++
		var arg uint64
		switch {
		case info < 24:
			arg = uint64(info)
		case info <= 27:
			size := 1 << (info - 24)
			if len(b)-off < size {
				return 0, fmt.Errorf("%w: unexpected end of input in the head at offset %d", ErrMalformed, head)
			}
			for _, x := range b[off : off+size] {
				arg = arg<<8 | uint64(x)
			}
			off += size
		case info == 31:
			return 0, fmt.Errorf("%w: indefinite length or break at offset %d; only definite lengths are accepted", ErrMalformed, head)
		default:
			return 0, fmt.Errorf("%w: reserved additional information %d at offset %d", ErrMalformed, info, head)
		}
		rest := uint64(len(b) - off)
		switch major {
		case 2, 3: // byte string, text string
			if arg > maxStr {
				return 0, fmt.Errorf("%w: string of %d bytes at offset %d, more than the limit of %d", ErrMalformed, arg, head, maxStr)
			}
			if arg > rest {
				return 0, fmt.Errorf("%w: string of %d bytes at offset %d runs past the end of input", ErrMalformed, arg, head)
			}
			off += int(arg)
		case 4: // array: every element takes at least one byte
			if arg > rest {
				return 0, fmt.Errorf("%w: array of %d elements at offset %d runs past the end of input", ErrMalformed, arg, head)
			}
			pending += arg
		case 5: // map: every pair takes at least two bytes
			if arg > rest/2 {
				return 0, fmt.Errorf("%w: map of %d pairs at offset %d runs past the end of input", ErrMalformed, arg, head)
			}
			pending += 2 * arg
		case 6: // tag: one item follows
			pending++
		}
	}
	return off, nil
}

// v1Payloads lists the zero value of every payload struct, one per event
// type and version. It is the registry of payload types: decodePayload
// below must have a case for each entry (a test checks it).
func v1Payloads() []Payload {
	return []Payload{
		PackageCreatedV1{}, PackageSealedV1{}, FileAddedV1{}, ObjectStoredV1{},
		RetentionAssignedV1{}, RetentionChangedV1{}, LegalHoldSetV1{}, LegalHoldReleasedV1{},
		ObjectVerifiedV1{}, ObjectCorruptV1{}, ObjectMissingV1{}, RetentionExpiredV1{},
		ObjectDeletedV1{}, IngestRejectedV1{}, CommandRejectedV1{}, ObjectRepairedV1{},
		ObjectReplicatedV1{},
	}
}

// KnownTypes returns every event type with a payload struct, in a stable
// order.
func KnownTypes() []Type {
	ps := v1Payloads()
	out := make([]Type, 0, len(ps))
	seen := make(map[Type]bool, len(ps))
	for _, p := range ps {
		if t := p.EventType(); !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// validatedPayload is what every registered payload struct implements.
type validatedPayload interface {
	Payload
	Validate() error
}

// decodeAs decodes b into a P and validates it.
func decodeAs[P validatedPayload](c *Codec, b []byte) (Payload, error) {
	var p P
	if err := c.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return p, nil
}

// decodePayload dispatches on the type and version; ok is false when the
// pair has no payload struct.
func (c *Codec) decodePayload(t Type, v int, b []byte) (p Payload, ok bool, err error) {
	if v != 1 {
		return nil, false, nil
	}
	switch t {
	case TypePackageCreated:
		p, err = decodeAs[PackageCreatedV1](c, b)
	case TypePackageSealed:
		p, err = decodeAs[PackageSealedV1](c, b)
	case TypeFileAdded:
		p, err = decodeAs[FileAddedV1](c, b)
	case TypeObjectStored:
		p, err = decodeAs[ObjectStoredV1](c, b)
	case TypeRetentionAssigned:
		p, err = decodeAs[RetentionAssignedV1](c, b)
	case TypeRetentionChanged:
		p, err = decodeAs[RetentionChangedV1](c, b)
	case TypeLegalHoldSet:
		p, err = decodeAs[LegalHoldSetV1](c, b)
	case TypeLegalHoldReleased:
		p, err = decodeAs[LegalHoldReleasedV1](c, b)
	case TypeObjectVerified:
		p, err = decodeAs[ObjectVerifiedV1](c, b)
	case TypeObjectCorrupt:
		p, err = decodeAs[ObjectCorruptV1](c, b)
	case TypeObjectMissing:
		p, err = decodeAs[ObjectMissingV1](c, b)
	case TypeRetentionExpired:
		p, err = decodeAs[RetentionExpiredV1](c, b)
	case TypeObjectDeleted:
		p, err = decodeAs[ObjectDeletedV1](c, b)
	case TypeIngestRejected:
		p, err = decodeAs[IngestRejectedV1](c, b)
	case TypeCommandRejected:
		p, err = decodeAs[CommandRejectedV1](c, b)
	case TypeObjectRepaired:
		p, err = decodeAs[ObjectRepairedV1](c, b)
	case TypeObjectReplicated:
		p, err = decodeAs[ObjectReplicatedV1](c, b)
	default:
		return nil, false, nil
	}
	return p, true, err
}

// EncodePayload validates p, encodes it and returns the bytes and their
// digest. It refuses a payload of an unknown type or version
// (ErrUnknownType), one that breaks a rule of its type (ErrInvalidPayload),
// and one whose encoding DecodePayload would refuse (too large, a string
// over the limit, invalid UTF-8), so that everything appended can be read
// back.
func (c *Codec) EncodePayload(p Payload) ([]byte, [32]byte, error) {
	if p == nil {
		return nil, [32]byte{}, fmt.Errorf("%w: nil payload", ErrInvalidPayload)
	}
	if rv := reflect.ValueOf(p); rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, [32]byte{}, fmt.Errorf("%w: nil %T", ErrInvalidPayload, p)
		}
		if q, ok := rv.Elem().Interface().(Payload); ok {
			p = q
		}
	}
	vp, ok := p.(validatedPayload)
	if !ok || !isRegistered(p) {
		return nil, [32]byte{}, fmt.Errorf("%w: %T (%q version %d) is not a registered payload struct", ErrUnknownType, p, p.EventType(), p.PayloadVersion())
	}
	if err := vp.Validate(); err != nil {
		return nil, [32]byte{}, err
	}
	b, err := c.Marshal(p)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	if len(b) > MaxPayloadBytes {
		return nil, [32]byte{}, fmt.Errorf("%w: %s payload encodes to %d bytes, more than the limit of %d; shorten its metadata or strings", ErrInvalidPayload, p.EventType(), len(b), MaxPayloadBytes)
	}
	// Decoding what was just encoded is cheap next to an append, and it
	// proves the event readable: a string over the limit, invalid UTF-8 or
	// too many metadata pairs is refused here rather than found in the log.
	if _, _, err := c.decodePayload(p.EventType(), p.PayloadVersion(), b); err != nil {
		return nil, [32]byte{}, fmt.Errorf("%w: the encoded %s payload would not decode (%v); shorten or fix its strings and metadata", ErrInvalidPayload, p.EventType(), err)
	}
	return b, PayloadDigest(b), nil
}

// isRegistered reports whether p's dynamic type is the registered struct of
// its event type and version.
func isRegistered(p Payload) bool {
	rt := reflect.TypeOf(p)
	for _, q := range v1Payloads() {
		if reflect.TypeOf(q) == rt {
			return q.EventType() == p.EventType() && q.PayloadVersion() == p.PayloadVersion()
		}
	}
	return false
}

// DecodePayload decodes the payload of an event of type t at version v and
// validates it. It returns the payload struct as a value (e.g. FileAddedV1,
// not *FileAddedV1). An unknown type or version wraps ErrUnknownType; bytes
// that are not a valid payload of that type wrap ErrMalformed (and also
// ErrInvalidPayload when they decode but break a rule of the type).
func (c *Codec) DecodePayload(t Type, v int, b []byte) (Payload, error) {
	p, ok, err := c.decodePayload(t, v, b)
	if !ok {
		return nil, fmt.Errorf("%w: %q version %d has no payload struct; is this binary older than the log?", ErrUnknownType, t, v)
	}
	if err != nil {
		return nil, fmt.Errorf("decode %s v%d payload: %w", t, v, err)
	}
	return p, nil
}

// DecodeEvent decodes the payload of e after checking it against e's
// payload digest.
func (c *Codec) DecodeEvent(e Event) (Payload, error) {
	if PayloadDigest(e.Payload) != e.PayloadDigest {
		return nil, fmt.Errorf("event %d (%s): %w", e.Sequence, e.Type, ErrPayloadDigest)
	}
	p, err := c.DecodePayload(e.Type, e.PayloadVersion, e.Payload)
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", e.Sequence, err)
	}
	return p, nil
}

// PayloadDigest is BLAKE3-256 of an encoded payload.
func PayloadDigest(b []byte) [32]byte { return blake3.Sum256(b) }
