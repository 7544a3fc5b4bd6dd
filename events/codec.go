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
// beyond these is hostile or broken input.
const (
	// MaxPayloadBytes caps an encoded payload.
	MaxPayloadBytes = 1 << 20
	maxNested       = 8
	maxArray        = 4096
	maxMapPairs     = 1024
	maxByteString   = 64 << 10
)

// ErrMalformed is wrapped by every decoding error: the bytes are not a valid
// encoding of the expected struct. Such input is poison, never retried.
var ErrMalformed = errors.New("malformed CBOR")

// ErrUnknownType is wrapped when an event type or version has no payload struct.
var ErrUnknownType = errors.New("unknown event type")

// Codec is the project's deterministic, strict CBOR encoding: equal values
// give equal bytes, and decoding enforces explicit limits and rejects
// duplicate map keys, unknown fields and indefinite lengths.
type Codec struct {
	enc cbor.EncMode
	dec cbor.DecMode
}

// NewCodec builds the codec. Its options are fixed: they are the wire format.
func NewCodec() *Codec {
	encOpts := cbor.CoreDetEncOptions()
	encOpts.Time = cbor.TimeRFC3339Nano
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
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		TextUnmarshaler:   cbor.TextUnmarshalerTextString,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("events: invalid decoding options: %v", err))
	}
	return &Codec{enc: enc, dec: dec}
}

// Marshal encodes v deterministically.
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
	if err := c.checkByteStrings(b); err != nil {
		return err
	}
	rest, err := c.dec.UnmarshalFirst(b, v)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after the item", ErrMalformed, len(rest))
	}
	return nil
}

// Decode reads at most limit bytes from r and decodes them into v.
func (c *Codec) Decode(r io.Reader, limit int64, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return err
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("%w: more than %d bytes", ErrMalformed, limit)
	}
	return c.Unmarshal(b, v)
}

// checkByteStrings walks the item with the low-level decoder and refuses
// byte and text strings longer than maxByteString.
func (c *Codec) checkByteStrings(b []byte) error {
	var raw any
	if _, err := c.dec.UnmarshalFirst(b, &raw); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return walkStrings(raw)
}

func walkStrings(v any) error {
	switch x := v.(type) {
	case []byte:
		if len(x) > maxByteString {
			return fmt.Errorf("%w: byte string of %d bytes, more than %d", ErrMalformed, len(x), maxByteString)
		}
	case string:
		if len(x) > maxByteString {
			return fmt.Errorf("%w: text string of %d bytes, more than %d", ErrMalformed, len(x), maxByteString)
		}
	case []any:
		for _, e := range x {
			if err := walkStrings(e); err != nil {
				return err
			}
		}
	case map[any]any:
		for k, e := range x {
			if err := walkStrings(k); err != nil {
				return err
			}
			if err := walkStrings(e); err != nil {
				return err
			}
		}
	case cbor.Tag:
		return walkStrings(x.Content)
	}
	return nil
}

type payloadKey struct {
	t Type
	v int
}

// payloadTypes maps each event type and version to its struct.
var payloadTypes = func() map[payloadKey]reflect.Type {
	m := map[payloadKey]reflect.Type{}
	for _, p := range []Payload{
		PackageCreatedV1{}, PackageSealedV1{}, FileAddedV1{}, ObjectStoredV1{},
		RetentionAssignedV1{}, RetentionChangedV1{}, LegalHoldSetV1{}, LegalHoldReleasedV1{},
		ObjectVerifiedV1{}, ObjectCorruptV1{}, ObjectMissingV1{}, RetentionExpiredV1{},
		ObjectDeletedV1{}, IngestRejectedV1{},
	} {
		m[payloadKey{p.EventType(), p.PayloadVersion()}] = reflect.TypeOf(p)
	}
	return m
}()

// KnownTypes returns every event type with a payload struct.
func KnownTypes() []Type {
	seen := map[Type]bool{}
	var out []Type
	for k := range payloadTypes {
		if !seen[k.t] {
			seen[k.t] = true
			out = append(out, k.t)
		}
	}
	return out
}

// EncodePayload encodes p and returns the bytes and their digest.
func (c *Codec) EncodePayload(p Payload) ([]byte, [32]byte, error) {
	b, err := c.Marshal(p)
	if err != nil {
		return nil, [32]byte{}, err
	}
	return b, PayloadDigest(b), nil
}

// DecodePayload decodes the payload of an event of type t at version v.
func (c *Codec) DecodePayload(t Type, v int, b []byte) (Payload, error) {
	rt, ok := payloadTypes[payloadKey{t, v}]
	if !ok {
		return nil, fmt.Errorf("%w: %q version %d", ErrUnknownType, t, v)
	}
	ptr := reflect.New(rt)
	if err := c.Unmarshal(b, ptr.Interface()); err != nil {
		return nil, fmt.Errorf("decode %s v%d payload: %w", t, v, err)
	}
	return ptr.Elem().Interface().(Payload), nil
}

// DecodeEvent decodes the payload of e after checking its digest.
func (c *Codec) DecodeEvent(e Event) (Payload, error) {
	if PayloadDigest(e.Payload) != e.PayloadDigest {
		return nil, fmt.Errorf("event %d: %w", e.Sequence, ErrPayloadDigest)
	}
	return c.DecodePayload(e.Type, e.PayloadVersion, e.Payload)
}

// ErrPayloadDigest means an event's payload does not match its recorded
// digest: the log was altered.
var ErrPayloadDigest = errors.New("payload digest mismatch: the log was altered")

// PayloadDigest is BLAKE3-256 of an encoded payload.
func PayloadDigest(b []byte) [32]byte { return blake3.Sum256(b) }
