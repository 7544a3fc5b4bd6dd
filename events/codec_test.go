package events

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/digest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the fixtures")

// Fixed digests for fixtures: two distinct 32-byte values.
var (
	fixB3  = seq32(0x10)
	fixS2  = seq32(0xa0)
	fixB3b = seq32(0x40)
	fixS2b = seq32(0xc0)
)

func seq32(start byte) []byte {
	b := make([]byte, digest.Size)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func addr(alg digest.Algorithm, b []byte) digest.Address {
	return digest.New(alg, [digest.Size]byte(b))
}

func timePtr(t time.Time) *time.Time { return &t }

// goldenPayloads returns one fixed, fully populated value per v1 type: every
// field, including the optional ones, is set. Changing a value here changes
// a golden file; run `go test ./events -run Golden -update` and review the
// diff.
func goldenPayloads() []Payload {
	until := time.Date(2033, 6, 30, 12, 0, 0, 123456789, time.UTC)
	prev := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	return []Payload{
		PackageCreatedV1{
			Name:           "ci/artifactstore/run-4711",
			RetentionClass: "raw-evidence",
			Metadata:       map[string]string{"commit": "8e90f8a", "branch": "main", "runner": "linux-amd64", "ü": "ünïcode"},
		},
		PackageSealedV1{Name: "ci/artifactstore/run-4711"},
		FileAddedV1{
			Package:   "ci/artifactstore/run-4711",
			Path:      "reports/junit.xml",
			Address:   addr(digest.BLAKE3, fixB3),
			BLAKE3:    fixB3,
			SHA256:    fixS2,
			Size:      123456,
			MediaType: "application/xml",
		},
		ObjectStoredV1{
			Address:      addr(digest.SHA256, fixS2b),
			BLAKE3:       fixB3b,
			SHA256:       fixS2b,
			Size:         1 << 33,
			BackendID:    "local",
			Deduplicated: true,
		},
		RetentionAssignedV1{Package: "release/1.2.3", Class: "release-evidence", RetainUntil: timePtr(until)},
		RetentionChangedV1{
			Package:        "release/1.2.3",
			FromClass:      "summary-evidence",
			Class:          "release-evidence",
			RetainUntil:    timePtr(until),
			PrevRetainTill: timePtr(prev),
			Reason:         "promoted to release",
		},
		LegalHoldSetV1{Package: "release/1.2.3", Reason: "case 2026-17"},
		LegalHoldReleasedV1{Package: "release/1.2.3", Reason: "case 2026-17 closed"},
		ObjectVerifiedV1{Address: addr(digest.BLAKE3, fixB3), BackendID: "local", Size: 123456},
		ObjectCorruptV1{
			Address:      addr(digest.BLAKE3, fixB3),
			BackendID:    "local",
			ActualBLAKE3: fixB3b,
			ActualSHA256: fixS2b,
			ActualSize:   123455,
			ExpectedSize: 123456,
		},
		ObjectMissingV1{Address: addr(digest.BLAKE3, fixB3), BackendID: "local"},
		RetentionExpiredV1{Package: "ci/artifactstore/run-4711", Class: "raw-evidence", RetainUntil: prev},
		ObjectDeletedV1{Address: addr(digest.BLAKE3, fixB3), BackendID: "local", Size: 123456, Reason: "retention expired, unreferenced"},
		IngestRejectedV1{
			CommandID: "cmd-0001",
			Package:   "ci/artifactstore/run-4711",
			Path:      "reports/junit.xml",
			Code:      "digest_mismatch",
			Reason:    "claimed sha256 differs from the bytes received; re-upload the file",
		},
		CommandRejectedV1{
			CommandID: "cmd-0002",
			Command:   "retention.retain",
			Package:   "release/1.4.2",
			Code:      "retention_shorten_refused",
			Reason:    "release-evidence may be lengthened, never shortened",
		},
		ObjectRepairedV1{
			Address:   addr(digest.BLAKE3, fixB3),
			BLAKE3:    fixB3,
			SHA256:    fixS2,
			Size:      123456,
			BackendID: "local",
			Was:       RepairedCorrupt,
			Detail:    "bytes 65536-131071 of the stored copy do not match the address",
			Source:    RepairSourceReupload,
			CommandID: "cmd-0003",
		},
		ObjectReplicatedV1{
			Address:         addr(digest.BLAKE3, fixB3),
			BLAKE3:          fixB3,
			SHA256:          fixS2,
			Size:            123456,
			BackendID:       "s3",
			SourceBackendID: "local",
			Deduplicated:    true,
			Reason:          "class release-evidence asks for 1 further copy",
		},
	}
}

func goldenPath(p Payload) string {
	return filepath.Join("testdata", fmt.Sprintf("%s.v%d.cbor", p.EventType(), p.PayloadVersion()))
}

// TestGoldenPayloads pins the wire format: the encoding of every fixture is
// compared byte for byte with testdata/<type>.v<version>.cbor, and each
// golden file decodes to its fixture.
func TestGoldenPayloads(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	fixtures := goldenPayloads()
	want := map[string]bool{}
	for _, p := range fixtures {
		path := goldenPath(p)
		want[filepath.Base(path)] = true
		t.Run(string(p.EventType()), func(t *testing.T) {
			got, _, err := c.EncodePayload(p)
			if err != nil {
				t.Fatalf("EncodePayload(%#v): %v", p, err)
			}
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			golden, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file: %v (run `go test ./events -run Golden -update` to create it)", err)
			}
			if !bytes.Equal(got, golden) {
				t.Errorf("wire format of %s changed:\n got  %x\n want %x\nA payload struct is never changed in place: add a new version. If the change is intended and no event was ever written with the old format, run `go test ./events -run Golden -update`.", p.EventType(), got, golden)
			}
			dec, err := c.DecodePayload(p.EventType(), p.PayloadVersion(), golden)
			if err != nil {
				t.Fatalf("decode golden file: %v", err)
			}
			if !reflect.DeepEqual(dec, p) {
				t.Errorf("golden file decodes to\n %#v\nwant\n %#v", dec, p)
			}
		})
	}
	// Every known type has a fixture, and no golden file is left over from
	// a type that no longer exists.
	for _, p := range v1Payloads() {
		if !want[filepath.Base(goldenPath(p))] {
			t.Errorf("no golden fixture for %s v%d: add one to goldenPayloads", p.EventType(), p.PayloadVersion())
		}
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.cbor"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !want[filepath.Base(f)] {
			t.Errorf("golden file %s has no fixture", f)
		}
	}
	if len(files) != len(v1Payloads()) {
		t.Errorf("%d golden files, want %d (one per type and version)", len(files), len(v1Payloads()))
	}
}

// TestPayloadFixturesPopulated guards the golden fixtures themselves: a
// fixture with an unset field would not pin that field's encoding.
func TestPayloadFixturesPopulated(t *testing.T) {
	t.Parallel()
	for _, p := range goldenPayloads() {
		v := reflect.ValueOf(p)
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("%T fixture leaves field %s unset", p, v.Type().Field(i).Name)
			}
		}
	}
}

// TestPayloadRegistry checks that v1Payloads, KnownTypes and the decoder's
// dispatch agree and cover DESIGN's v1 list.
func TestPayloadRegistry(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	design := []Type{
		TypePackageCreated, TypePackageSealed, TypeFileAdded, TypeObjectStored,
		TypeRetentionAssigned, TypeRetentionChanged, TypeLegalHoldSet, TypeLegalHoldReleased,
		TypeObjectVerified, TypeObjectCorrupt, TypeObjectMissing, TypeRetentionExpired,
		TypeObjectDeleted, TypeIngestRejected, TypeCommandRejected, TypeObjectRepaired, TypeObjectReplicated,
	}
	if got := KnownTypes(); !reflect.DeepEqual(got, design) {
		t.Errorf("KnownTypes() = %v, want %v", got, design)
	}
	fixtures := map[reflect.Type]Payload{}
	for _, p := range goldenPayloads() {
		fixtures[reflect.TypeOf(p)] = p
	}
	for _, zero := range v1Payloads() {
		if _, ok := zero.(validatedPayload); !ok {
			t.Errorf("%T has no Validate method", zero)
		}
		p, ok := fixtures[reflect.TypeOf(zero)]
		if !ok {
			t.Errorf("%T has no fixture", zero)
			continue
		}
		b, _, err := c.EncodePayload(p)
		if err != nil {
			t.Fatalf("EncodePayload(%T): %v", p, err)
		}
		got, ok, err := c.decodePayload(zero.EventType(), zero.PayloadVersion(), b)
		if !ok || err != nil {
			t.Errorf("decodePayload(%s, %d): ok=%v err=%v; add a case for it", zero.EventType(), zero.PayloadVersion(), ok, err)
			continue
		}
		if reflect.TypeOf(got) != reflect.TypeOf(zero) {
			t.Errorf("decodePayload(%s) gave %T, want %T", zero.EventType(), got, zero)
		}
	}
}

// TestRoundTrip encodes and decodes every fixture, and a minimal value of
// every type (optional fields unset).
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	minimal := []Payload{
		PackageCreatedV1{Name: "p", RetentionClass: "transient"},
		RetentionAssignedV1{Package: "p", Class: "permanent-record"},
		RetentionChangedV1{Package: "p", FromClass: "transient", Class: "permanent-record"},
		LegalHoldReleasedV1{Package: "p"},
		IngestRejectedV1{Code: "missing_command_id", Reason: "the command has no Nats-Msg-Id header; set one"},
		FileAddedV1{Package: "p", Path: "empty", Address: addr(digest.SHA256, fixS2), BLAKE3: fixB3, SHA256: fixS2},
		ObjectRepairedV1{Address: addr(digest.SHA256, fixS2), BLAKE3: fixB3, SHA256: fixS2, BackendID: "s3", Was: RepairedMissing, Source: "replica:local"},
	}
	for _, p := range append(goldenPayloads(), minimal...) {
		b, sum, err := c.EncodePayload(p)
		if err != nil {
			t.Fatalf("EncodePayload(%#v): %v", p, err)
		}
		if sum != PayloadDigest(b) {
			t.Errorf("%s: EncodePayload digest differs from PayloadDigest", p.EventType())
		}
		got, err := c.DecodePayload(p.EventType(), p.PayloadVersion(), b)
		if err != nil {
			t.Fatalf("DecodePayload(%s): %v", p.EventType(), err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("round trip of %s:\n got  %#v\n want %#v", p.EventType(), got, p)
		}
		ev := Event{Sequence: 7, Type: p.EventType(), PayloadVersion: p.PayloadVersion(), Payload: b, PayloadDigest: sum}
		if got, err := c.DecodeEvent(ev); err != nil || !reflect.DeepEqual(got, p) {
			t.Errorf("DecodeEvent(%s) = %#v, %v", p.EventType(), got, err)
		}
	}
}

// TestEqualPayloadsEqualBytes: map insertion order and a time's location do
// not reach the bytes.
func TestEqualPayloadsEqualBytes(t *testing.T) {
	t.Parallel()
	c := NewCodec()

	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%03d-%c", (i*37)%200, 'a'+i%26)
	}
	build := func(order []int) []byte {
		m := map[string]string{}
		for _, i := range order {
			m[keys[i]] = "v" + keys[i]
		}
		b, _, err := c.EncodePayload(PackageCreatedV1{Name: "p", RetentionClass: "transient", Metadata: m})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	forward, backward, strided := make([]int, len(keys)), make([]int, len(keys)), make([]int, 0, len(keys))
	for i := range keys {
		forward[i], backward[i] = i, len(keys)-1-i
	}
	for s := range 7 {
		for i := s; i < len(keys); i += 7 {
			strided = append(strided, i)
		}
	}
	want := build(forward)
	for n := range 20 { // Go randomises map iteration; repeat to catch order leaks.
		for name, order := range map[string][]int{"backward": backward, "strided": strided, "forward": forward} {
			if got := build(order); !bytes.Equal(got, want) {
				t.Fatalf("run %d, %s insertion order gives other bytes", n, name)
			}
		}
	}

	instant := time.Date(2030, 3, 4, 5, 6, 7, 890, time.UTC)
	var encodings [][]byte
	for _, name := range []string{"UTC", "Local", "America/New_York", "Asia/Kolkata", "fixed+13:45"} {
		var loc *time.Location
		switch name {
		case "UTC":
			loc = time.UTC
		case "Local":
			loc = time.Local
		case "fixed+13:45":
			loc = time.FixedZone("odd", 13*3600+45*60)
		default:
			var err error
			if loc, err = time.LoadLocation(name); err != nil {
				loc = time.FixedZone(name, -5*3600) // no tzdata on this machine: a fixed offset tests the same thing
			}
		}
		p := RetentionExpiredV1{Package: "p", Class: "transient", RetainUntil: instant.In(loc)}
		b, _, err := c.EncodePayload(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		encodings = append(encodings, b)
		got, err := c.DecodePayload(TypeRetentionExpired, 1, b)
		if err != nil {
			t.Fatal(err)
		}
		rt := got.(RetentionExpiredV1).RetainUntil
		if !rt.Equal(instant) || rt.Location() != time.UTC {
			t.Errorf("%s: decoded %v (%v), want %v in UTC", name, rt, rt.Location(), instant)
		}
	}
	for i, b := range encodings[1:] {
		if !bytes.Equal(b, encodings[0]) {
			t.Errorf("location %d gives %x, UTC gives %x", i+1, b, encodings[0])
		}
	}
	if !bytes.Contains(encodings[0], []byte("2030-03-04T05:06:07.00000089Z")) {
		t.Errorf("time not encoded as RFC 3339 UTC text with nanoseconds: %x", encodings[0])
	}

	// A monotonic clock reading does not reach the bytes either.
	now := time.Now()
	a, _, err := c.EncodePayload(RetentionExpiredV1{Package: "p", Class: "c", RetainUntil: now})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := c.EncodePayload(RetentionExpiredV1{Package: "p", Class: "c", RetainUntil: now.Round(0).UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("a monotonic clock reading changes the encoding")
	}

	// A pointer to a payload encodes as the payload.
	fa := goldenPayloads()[2].(FileAddedV1)
	vb, _, err := c.EncodePayload(fa)
	if err != nil {
		t.Fatal(err)
	}
	pb, _, err := c.EncodePayload(&fa)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(vb, pb) {
		t.Error("*FileAddedV1 encodes differently from FileAddedV1")
	}
}

// Raw CBOR builders for hostile input.

func head(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return []byte{m | 25, byte(n >> 8), byte(n)}
	case n <= 0xffffffff:
		return []byte{m | 26, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	default:
		return []byte{m | 27, byte(n >> 56), byte(n >> 48), byte(n >> 40), byte(n >> 32), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
}

func text(s string) []byte  { return append(head(3, uint64(len(s))), s...) }
func bstr(b []byte) []byte  { return append(head(2, uint64(len(b))), b...) }
func uint_(n uint64) []byte { return head(0, n) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// cmap builds a definite-length map from alternating keys and values,
// keeping the given order and duplicates.
func cmap(kv ...[]byte) []byte { return cat(head(5, uint64(len(kv)/2)), cat(kv...)) }

// nestedArrays is depth arrays, each holding the next, around 0.
func nestedArrays(depth int) []byte {
	return append(bytes.Repeat([]byte{0x81}, depth), 0x00)
}

func metadataPairs(n int) []byte {
	kv := make([][]byte, 0, 2*n)
	for i := range n {
		kv = append(kv, text(fmt.Sprintf("k%05d", i)), text("v"))
	}
	return cmap(kv...)
}

func packageCreated(metadata []byte) []byte {
	return cmap(text("name"), text("p"), text("retention_class"), text("transient"), text("metadata"), metadata)
}

func fileAdded(address []byte) []byte {
	return cmap(text("package"), text("p"), text("path"), text("f"), text("address"), address,
		text("blake3"), bstr(fixB3), text("sha256"), bstr(fixS2), text("size"), uint_(1))
}

// TestDecodeRefusesHostileInput checks each limit and rule: the input is
// refused with ErrMalformed and a message naming the rule, and where a
// limit is numeric, input exactly at the limit is accepted.
func TestDecodeRefusesHostileInput(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	blakeText := addr(digest.BLAKE3, fixB3).String()
	valid := fileAdded(text(blakeText))
	if _, err := c.DecodePayload(TypeFileAdded, 1, valid); err != nil {
		t.Fatalf("the hand-built FileAddedV1 is refused, so the cases below prove nothing: %v", err)
	}

	cases := []struct {
		name string
		typ  Type       // decode as this payload type, or into `any` when empty
		in   []byte     // the input
		ok   []byte     // optional: input just inside the limit, must be accepted
		msg  string     // substring the error must contain
		also []error    // further sentinels the error must wrap
		into func() any // target for Unmarshal when typ is empty
	}{
		{name: "deep nesting", in: nestedArrays(maxNested + 1), ok: nestedArrays(maxNested), msg: "exceeded max nested level"},
		{name: "deep nesting in a payload", typ: TypePackageCreated, in: packageCreated(cmap(text("k"), nestedArrays(maxNested))), msg: "exceeded max nested level"},
		{name: "huge array count", in: cat(head(4, maxArray+1), bytes.Repeat([]byte{0}, maxArray+1)), ok: cat(head(4, maxArray), bytes.Repeat([]byte{0}, maxArray)), msg: "exceeded max number of elements"},
		{name: "array count beyond the input", in: cat(head(4, 1<<62), []byte{0}), msg: "runs past the end"},
		{name: "huge map count", typ: TypePackageCreated, in: packageCreated(metadataPairs(maxMapPairs + 1)), ok: packageCreated(metadataPairs(maxMapPairs)), msg: "exceeded max number of key-value pairs"},
		{name: "map count beyond the input", in: cat(head(5, 1<<40), text("k")), msg: "runs past the end"},
		{name: "oversize byte string", in: bstr(make([]byte, maxString+1)), ok: bstr(make([]byte, maxString)), msg: "more than the limit"},
		{name: "oversize text string in a payload", typ: TypePackageSealed, in: cmap(text("name"), text(strings.Repeat("n", maxString+1))), ok: cmap(text("name"), text(strings.Repeat("n", maxString))), msg: "more than the limit"},
		{name: "string length beyond the input", in: cat(head(2, 1<<63), []byte("abc")), msg: "more than the limit"},
		{name: "string length beyond the input, under the cap", in: cat(head(3, 100), []byte("abc")), msg: "runs past the end"},
		{name: "duplicate field", typ: TypePackageSealed, in: cmap(text("name"), text("a"), text("name"), text("b")), msg: "duplicate map key"},
		{name: "duplicate metadata key", typ: TypePackageCreated, in: packageCreated(cmap(text("k"), text("1"), text("k"), text("2"))), msg: "duplicate map key"},
		{name: "indefinite-length map", typ: TypePackageSealed, in: cat([]byte{0xbf}, text("name"), text("a"), []byte{0xff}), msg: "indefinite length"},
		{name: "indefinite-length text", typ: TypePackageSealed, in: cat(head(5, 1), text("name"), []byte{0x7f}, text("a"), []byte{0xff}), msg: "indefinite length"},
		{name: "stray break", in: []byte{0xff}, msg: "indefinite length or break"},
		{name: "reserved head", in: []byte{0x1c}, msg: "reserved additional information"},
		{name: "truncated head", in: []byte{0x19, 0x01}, msg: "unexpected end"},
		{name: "empty input", typ: TypePackageSealed, in: nil, msg: "unexpected end"},
		{name: "trailing bytes", typ: TypeFileAdded, in: append(append([]byte{}, valid...), 0x00), msg: "trailing bytes"},
		{name: "oversized input", typ: TypePackageSealed, in: make([]byte, MaxPayloadBytes+1), msg: "more than the limit of 1048576"},
		{name: "unknown field", typ: TypePackageSealed, in: cmap(text("name"), text("a"), text("owner"), text("b")), msg: "unknown field"},
		{name: "field name in other case", typ: TypePackageSealed, in: cmap(text("Name"), text("a")), msg: "unknown field"},
		{name: "wrong type: int for string", typ: TypePackageSealed, in: cmap(text("name"), uint_(7)), msg: "cannot unmarshal"},
		{name: "wrong type: text for int", typ: TypeObjectVerified, in: cmap(text("address"), text(blakeText), text("backend_id"), text("local"), text("size"), text("12")), msg: "cannot unmarshal"},
		{name: "wrong type: byte string for text", typ: TypePackageSealed, in: cmap(text("name"), bstr([]byte("a"))), msg: "cannot unmarshal"},
		{name: "wrong type: array for payload", typ: TypePackageSealed, in: cat(head(4, 1), text("a")), msg: "cannot unmarshal"},
		{name: "tag", typ: TypeRetentionExpired, in: cmap(text("package"), text("p"), text("class"), text("c"), text("retain_until"), cat([]byte{0xc0}, text("2030-01-01T00:00:00Z"))), msg: "tag"},
		{name: "invalid UTF-8", typ: TypePackageSealed, in: cmap(text("name"), cat(head(3, 2), []byte{0xc3, 0x28})), msg: "invalid UTF-8"},
		{name: "address in upper case", typ: TypeFileAdded, in: fileAdded(text(strings.ToUpper(blakeText))), msg: "invalid content address", also: []error{digest.ErrInvalid}},
		{name: "address with traversal", typ: TypeFileAdded, in: fileAdded(text("sha256:../../../etc/passwd")), msg: "invalid content address", also: []error{digest.ErrInvalid}},
		{name: "address as bytes", typ: TypeFileAdded, in: fileAdded(bstr([]byte(blakeText))), msg: "cannot unmarshal"},
		{name: "address of other digest", typ: TypeFileAdded, in: fileAdded(text(addr(digest.BLAKE3, fixS2).String())), msg: "does not match", also: []error{ErrInvalidPayload}},
		{name: "empty map", typ: TypePackageSealed, in: cmap(), msg: `"name" is empty`, also: []error{ErrInvalidPayload}},
		{name: "null", typ: TypeObjectMissing, in: []byte{0xf6}, msg: "zero address", also: []error{ErrInvalidPayload}},
		{name: "short digest", typ: TypeObjectCorrupt, in: cmap(text("address"), text(blakeText), text("backend_id"), text("l"), text("actual_blake3"), bstr(fixB3[:31]), text("actual_sha256"), bstr(fixS2), text("actual_size"), uint_(1), text("expected_size"), uint_(2)), msg: "holds 31 bytes", also: []error{ErrInvalidPayload}},
		{name: "negative size", typ: TypeObjectVerified, in: cmap(text("address"), text(blakeText), text("backend_id"), text("local"), text("size"), head(1, 0)), msg: "must not be negative", also: []error{ErrInvalidPayload}},
		{name: "time before year 1", typ: TypeRetentionExpired, in: cmap(text("package"), text("p"), text("class"), text("c"), text("retain_until"), head(1, 1<<40)), msg: "within years 1-9999", also: []error{ErrInvalidPayload}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			decode := func(b []byte) error {
				if tc.typ == "" {
					var v any
					return c.Unmarshal(b, &v)
				}
				_, err := c.DecodePayload(tc.typ, 1, b)
				return err
			}
			err := decode(tc.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want an error wrapping ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q: refused for another reason than the one tested", err, tc.msg)
			}
			for _, s := range tc.also {
				if !errors.Is(err, s) {
					t.Errorf("error %q does not wrap %v", err, s)
				}
			}
			if tc.ok != nil {
				if err := decode(tc.ok); err != nil {
					t.Errorf("input at the limit refused: %v", err)
				}
			}
		})
	}
}

func TestDecodeLimitsReader(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	in := cmap(text("name"), text("abc"))
	var p PackageSealedV1
	if err := c.Decode(bytes.NewReader(in), int64(len(in)), &p); err != nil || p.Name != "abc" {
		t.Fatalf("Decode at the limit: %+v, %v", p, err)
	}
	err := c.Decode(bytes.NewReader(in), int64(len(in)-1), &p)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "more than") {
		t.Errorf("Decode over the limit: %v, want ErrMalformed", err)
	}
	// A limit above MaxPayloadBytes does not lift the cap.
	big := make([]byte, MaxPayloadBytes+10)
	if err := c.Decode(bytes.NewReader(big), 1<<62, &p); !errors.Is(err, ErrMalformed) {
		t.Errorf("Decode of %d bytes with a huge limit: %v, want ErrMalformed", len(big), err)
	}
	readErr := errors.New("disk on fire")
	if err := c.Decode(errReader{readErr}, 100, &p); !errors.Is(err, readErr) || errors.Is(err, ErrMalformed) {
		t.Errorf("Decode with a failing reader: %v, want the read error, not ErrMalformed", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestUnknownType(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	b, _, err := c.EncodePayload(PackageSealedV1{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		t Type
		v int
	}{{"package.exploded", 1}, {TypePackageSealed, 2}, {TypePackageSealed, 0}, {"", 1}} {
		if _, err := c.DecodePayload(tc.t, tc.v, b); !errors.Is(err, ErrUnknownType) {
			t.Errorf("DecodePayload(%q, %d): %v, want ErrUnknownType", tc.t, tc.v, err)
		}
	}
	if _, _, err := c.EncodePayload(fakePayload{}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("EncodePayload(unregistered struct): %v, want ErrUnknownType", err)
	}
	if _, _, err := c.EncodePayload(impostor{Name: "p"}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("EncodePayload(struct claiming a known type): %v, want ErrUnknownType", err)
	}
}

type fakePayload struct{}

func (fakePayload) EventType() Type     { return "fake.happened" }
func (fakePayload) PayloadVersion() int { return 1 }

type impostor struct{ Name string }

func (impostor) EventType() Type     { return TypePackageSealed }
func (impostor) PayloadVersion() int { return 1 }
func (impostor) Validate() error     { return nil }

func TestEncodeRefusesInvalidPayloads(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	fa := goldenPayloads()[2].(FileAddedV1)
	mut := func(f func(*FileAddedV1)) FileAddedV1 {
		p := fa
		f(&p)
		return p
	}
	bigMeta := map[string]string{}
	for i := range maxMapPairs + 1 {
		bigMeta[fmt.Sprint(i)] = ""
	}
	cases := []struct {
		name string
		p    Payload
		msg  string
	}{
		{"nil", nil, "nil payload"},
		{"nil pointer", (*FileAddedV1)(nil), "nil *events.FileAddedV1"},
		{"empty package", mut(func(p *FileAddedV1) { p.Package = "" }), `"package" is empty`},
		{"zero address", mut(func(p *FileAddedV1) { p.Address = digest.Address{} }), "zero address"},
		{"address of other digest", mut(func(p *FileAddedV1) { p.Address = addr(digest.SHA256, fixB3) }), "does not match"},
		{"short sha256", mut(func(p *FileAddedV1) { p.SHA256 = fixS2[:4] }), "holds 4 bytes"},
		{"negative size", mut(func(p *FileAddedV1) { p.Size = -1 }), "must not be negative"},
		{"year 10000", RetentionExpiredV1{Package: "p", Class: "c", RetainUntil: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, "within years"},
		{"zero required time", RetentionExpiredV1{Package: "p", Class: "c"}, "zero time"},
		{"pointer to zero time", RetentionAssignedV1{Package: "p", Class: "c", RetainUntil: &time.Time{}}, "zero time"},
		{"legal hold without reason", LegalHoldSetV1{Package: "p"}, `"reason" is empty`},
		{"repair of an unknown damage", ObjectRepairedV1{Address: addr(digest.BLAKE3, fixB3), BLAKE3: fixB3, SHA256: fixS2, BackendID: "local", Was: "tired", Source: RepairSourceReupload}, `"was" is "tired"`},
		{"replica onto its source", ObjectReplicatedV1{Address: addr(digest.BLAKE3, fixB3), BLAKE3: fixB3, SHA256: fixS2, BackendID: "local", SourceBackendID: "local"}, `equals`},
		{"replica without a source", ObjectReplicatedV1{Address: addr(digest.BLAKE3, fixB3), BLAKE3: fixB3, SHA256: fixS2, BackendID: "s3"}, `"source_backend_id" is empty`},
		{"repair without a source", ObjectRepairedV1{Address: addr(digest.BLAKE3, fixB3), BLAKE3: fixB3, SHA256: fixS2, BackendID: "local", Was: RepairedMissing}, `"source" is empty`},
		{"too many metadata pairs", PackageCreatedV1{Name: "p", RetentionClass: "c", Metadata: bigMeta}, "would not decode"},
		{"string over the cap", PackageSealedV1{Name: strings.Repeat("x", maxString+1)}, "would not decode"},
		{"invalid UTF-8", PackageCreatedV1{Name: "p", RetentionClass: "c", Metadata: map[string]string{"k": "\xff"}}, "would not decode"},
		{"over MaxPayloadBytes", PackageCreatedV1{Name: "p", RetentionClass: "c", Metadata: func() map[string]string {
			m := map[string]string{}
			for i := range 20 {
				m[fmt.Sprint(i)] = strings.Repeat("v", maxString)
			}
			return m
		}()}, "more than the limit"},
	}
	for _, tc := range cases {
		_, _, err := c.EncodePayload(tc.p)
		if !errors.Is(err, ErrInvalidPayload) || !strings.Contains(fmt.Sprint(err), tc.msg) {
			t.Errorf("%s: EncodePayload: %v, want ErrInvalidPayload mentioning %q", tc.name, err, tc.msg)
		}
		if errors.Is(err, ErrMalformed) {
			t.Errorf("%s: an encoding error wraps ErrMalformed: %v", tc.name, err)
		}
	}
}

func TestDecodeEventChecksDigest(t *testing.T) {
	t.Parallel()
	c := NewCodec()
	b, sum, err := c.EncodePayload(LegalHoldSetV1{Package: "p", Reason: "case 1"})
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Sequence: 42, Type: TypeLegalHoldSet, PayloadVersion: 1, Payload: b, PayloadDigest: sum}
	if _, err := c.DecodeEvent(ev); err != nil {
		t.Fatalf("untampered event: %v", err)
	}

	tampered := ev
	tampered.Payload = bytes.Replace(b, []byte("case 1"), []byte("case 2"), 1)
	if bytes.Equal(tampered.Payload, b) {
		t.Fatal("test did not tamper with the payload")
	}
	if _, err := c.DecodePayload(TypeLegalHoldSet, 1, tampered.Payload); err != nil {
		t.Fatalf("the tampered payload must still be valid CBOR for this test to mean anything: %v", err)
	}
	_, err = c.DecodeEvent(tampered)
	if !errors.Is(err, ErrPayloadDigest) || !strings.Contains(err.Error(), "event 42") {
		t.Errorf("tampered payload: %v, want ErrPayloadDigest naming event 42", err)
	}

	tampered = ev
	tampered.PayloadDigest[0] ^= 1
	if _, err := c.DecodeEvent(tampered); !errors.Is(err, ErrPayloadDigest) {
		t.Errorf("tampered digest: %v, want ErrPayloadDigest", err)
	}

}

// TestScanHeadsAgreesWithDecoder checks the head scanner on the golden
// files: it must read exactly each item.
func TestScanHeadsAgreesWithDecoder(t *testing.T) {
	t.Parallel()
	for _, p := range goldenPayloads() {
		b, err := os.ReadFile(goldenPath(p))
		if err != nil {
			t.Fatalf("%v (run `go test ./events -run Golden -update`)", err)
		}
		n, err := scanHeads(b, maxString)
		if err != nil || n != len(b) {
			t.Errorf("%s: scanHeads = %d, %v; want %d, nil", p.EventType(), n, err, len(b))
		}
	}
}

func BenchmarkEncodeDecode(b *testing.B) {
	c := NewCodec()
	p := goldenPayloads()[2].(FileAddedV1)
	b.ReportAllocs()
	for b.Loop() {
		enc, sum, err := c.EncodePayload(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.DecodeEvent(Event{Type: TypeFileAdded, PayloadVersion: 1, Payload: enc, PayloadDigest: sum}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodePayload(b *testing.B) {
	c := NewCodec()
	p := goldenPayloads()[2].(FileAddedV1)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := c.EncodePayload(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodePayload(b *testing.B) {
	c := NewCodec()
	enc, _, err := c.EncodePayload(goldenPayloads()[2])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.DecodePayload(TypeFileAdded, 1, enc); err != nil {
			b.Fatal(err)
		}
	}
}
