// Package digest owns the content address: an algorithm and a 32-byte
// digest, a strict parser that is the only way in from a string, and a dual
// hasher that computes BLAKE3-256 and SHA-256 in one pass over a stream,
// and with BLAKE3 the stream's BLAKE3 tree (package blaketree).
package digest

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Size is the length in bytes of every digest this package knows.
const Size = 32

// Algorithm names a digest algorithm. The zero value is invalid.
type Algorithm uint8

// The algorithms of a content address. BLAKE3 is the default primary.
const (
	BLAKE3 Algorithm = iota + 1
	SHA256
)

// Algorithms lists every known algorithm in a stable order.
var Algorithms = [...]Algorithm{BLAKE3, SHA256}

// String returns the algorithm's name as it appears in a content address.
func (a Algorithm) String() string {
	switch a {
	case BLAKE3:
		return "blake3"
	case SHA256:
		return "sha256"
	default:
		return fmt.Sprintf("Algorithm(%d)", uint8(a))
	}
}

// Valid reports whether a is a known algorithm.
func (a Algorithm) Valid() bool { return a == BLAKE3 || a == SHA256 }

// ErrInvalid is wrapped by every parse error of this package.
var ErrInvalid = errors.New("invalid content address")

// ParseAlgorithm parses "blake3" or "sha256"; nothing else is accepted.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "blake3":
		return BLAKE3, nil
	case "sha256":
		return SHA256, nil
	default:
		return 0, fmt.Errorf("%w: unknown algorithm %q (want blake3 or sha256)", ErrInvalid, truncate(s))
	}
}

// Address is a content address: an algorithm and its digest. It is a
// comparable value, usable as a map key. The zero Address is invalid and
// reports IsZero.
type Address struct {
	alg Algorithm
	sum [Size]byte
}

// New returns the address of sum under alg. It panics when alg is unknown,
// which is a programming error, never user input.
func New(alg Algorithm, sum [Size]byte) Address {
	if !alg.Valid() {
		panic(fmt.Sprintf("digest.New: unknown algorithm %d", alg))
	}
	return Address{alg: alg, sum: sum}
}

// Parse parses "<algorithm>:<64 lowercase hex digits>", exactly. It is the
// only way from a string to an Address: uppercase hex, another length,
// an unknown algorithm, separators, whitespace or any other byte are refused.
func Parse(s string) (Address, error) {
	const hexLen = 2 * Size
	var algName, hexPart string
	switch {
	case len(s) == len("blake3:")+hexLen && s[:len("blake3:")] == "blake3:":
		algName, hexPart = "blake3", s[len("blake3:"):]
	case len(s) == len("sha256:")+hexLen && s[:len("sha256:")] == "sha256:":
		algName, hexPart = "sha256", s[len("sha256:"):]
	default:
		return Address{}, fmt.Errorf("%w: %q is not <blake3|sha256>:<64 lowercase hex digits>", ErrInvalid, truncate(s))
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return Address{}, fmt.Errorf("%w: %q has a byte that is not a lowercase hex digit at offset %d", ErrInvalid, truncate(s), len(algName)+1+i)
		}
	}
	alg, _ := ParseAlgorithm(algName)
	var a Address
	a.alg = alg
	if _, err := hex.Decode(a.sum[:], []byte(hexPart)); err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return a, nil
}

// MustParse is Parse for constants in tests and examples; it panics on error.
func MustParse(s string) Address {
	a, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return a
}

// Algorithm returns the address's algorithm.
func (a Address) Algorithm() Algorithm { return a.alg }

// Sum returns the raw digest.
func (a Address) Sum() [Size]byte { return a.sum }

// Hex returns the digest as 64 lowercase hex digits.
func (a Address) Hex() string { return hex.EncodeToString(a.sum[:]) }

// IsZero reports whether a is the zero (invalid) Address.
func (a Address) IsZero() bool { return a.alg == 0 }

// String returns "<algorithm>:<hex>", the form Parse accepts.
func (a Address) String() string {
	if a.IsZero() {
		return ""
	}
	return a.alg.String() + ":" + a.Hex()
}

// MarshalText implements encoding.TextMarshaler (used by JSON).
func (a Address) MarshalText() ([]byte, error) {
	if a.IsZero() {
		return nil, fmt.Errorf("%w: zero address", ErrInvalid)
	}
	return []byte(a.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler through Parse.
func (a *Address) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*a = p
	return nil
}

// truncate keeps error messages short when hostile input is long.
func truncate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
