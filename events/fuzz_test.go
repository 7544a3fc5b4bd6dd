package events

import (
	"bytes"
	"errors"
	"math"
	"os"
	"reflect"
	"testing"
)

// fuzzSeeds adds the golden files and a few hostile inputs to the corpus.
func fuzzSeeds(f *testing.F) {
	f.Helper()
	for _, p := range goldenPayloads() {
		b, err := os.ReadFile(goldenPath(p))
		if err != nil {
			f.Fatalf("%v (run `go test ./events -run Golden -update`)", err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xf6})
	f.Add(nestedArrays(maxNested + 1))
	f.Add(cat(head(4, 1<<62), []byte{0}))
	f.Add(cat([]byte{0xbf}, text("name"), text("a"), []byte{0xff}))
	f.Add(cmap(text("name"), text("a"), text("name"), text("b")))
	f.Add(cmap(text("package"), text("p"), text("class"), text("c"), text("retain_until"), head(1, 1<<40)))
	f.Add(cmap(text("package"), text("p"), text("class"), text("c"), text("retain_until"), []byte{0xfb, 0x41, 0xd9, 0, 0, 0, 0, 0, 0}))
}

// FuzzDecodePayload decodes arbitrary bytes as every known payload type.
// It must never panic; each attempt either fails with ErrMalformed or gives
// a value that EncodePayload accepts and whose encoding decodes to an equal
// value (equal struct, and the same canonical bytes again).
func FuzzDecodePayload(f *testing.F) {
	fuzzSeeds(f)
	c := NewCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, zero := range v1Payloads() {
			typ, ver := zero.EventType(), zero.PayloadVersion()
			p, err := c.DecodePayload(typ, ver, data)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("%s: decode error does not wrap ErrMalformed: %v", typ, err)
				}
				continue
			}
			if reflect.TypeOf(p) != reflect.TypeOf(zero) {
				t.Fatalf("%s: decoded %T, want %T", typ, p, zero)
			}
			b1, sum, err := c.EncodePayload(p)
			if err != nil {
				t.Fatalf("%s: decoded %#v but cannot encode it: %v", typ, p, err)
			}
			if sum != PayloadDigest(b1) {
				t.Fatalf("%s: digest mismatch", typ)
			}
			p2, err := c.DecodePayload(typ, ver, b1)
			if err != nil {
				t.Fatalf("%s: re-encoding %x does not decode: %v", typ, b1, err)
			}
			b2, _, err := c.EncodePayload(p2)
			if err != nil {
				t.Fatalf("%s: second encode: %v", typ, err)
			}
			// p and p2 are equal: they have the same canonical encoding
			// (p may hold times in another location, decoded from integer
			// seconds, so it is not compared field by field).
			if !bytes.Equal(b1, b2) {
				t.Fatalf("%s: encoding is not stable:\n %x\n %x", typ, b1, b2)
			}
			p3, err := c.DecodePayload(typ, ver, b2)
			if err != nil {
				t.Fatalf("%s: third decode: %v", typ, err)
			}
			if !reflect.DeepEqual(p2, p3) {
				t.Fatalf("%s: round trip changed the value:\n %#v\n %#v", typ, p2, p3)
			}
		}
	})
}

// FuzzScanHeads compares the head scanner with the decoder: whatever the
// decoder reads as one item (into any), the scanner must accept, with the
// same length, when strings are not capped; whatever the scanner refuses,
// the decoder must refuse too. The codec relies on this to check the string
// cap without decoding twice.
func FuzzScanHeads(f *testing.F) {
	fuzzSeeds(f)
	c := NewCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > MaxPayloadBytes {
			return
		}
		n, scanErr := scanHeads(data, math.MaxUint64)
		if scanErr == nil && (n <= 0 || n > len(data)) {
			t.Fatalf("scanHeads returned length %d for %d bytes", n, len(data))
		}
		if scanErr != nil && !errors.Is(scanErr, ErrMalformed) {
			t.Fatalf("scan error does not wrap ErrMalformed: %v", scanErr)
		}
		var v any
		rest, decErr := c.dec.UnmarshalFirst(data, &v)
		switch {
		case decErr == nil && scanErr != nil:
			t.Fatalf("decoder reads %x, scanner refuses it: %v", data, scanErr)
		case decErr == nil && n != len(data)-len(rest):
			t.Fatalf("decoder reads %d bytes of %x, scanner %d", len(data)-len(rest), data, n)
		}
		// Through Unmarshal, the capped scan and the decoder together.
		if err := c.Unmarshal(data, &v); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("Unmarshal error does not wrap ErrMalformed: %v", err)
		}
	})
}
