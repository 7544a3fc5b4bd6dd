package digest

import (
	"errors"
	"strings"
	"testing"
)

const (
	emptyBLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

func TestParse(t *testing.T) {
	t.Parallel()
	valid := []string{
		"blake3:" + emptyBLAKE3,
		"sha256:" + emptySHA256,
		"sha256:" + strings.Repeat("0", 64),
	}
	for _, s := range valid {
		a, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if a.String() != s {
			t.Errorf("Parse(%q).String() = %q", s, a.String())
		}
	}

	invalid := map[string]string{
		"empty":            "",
		"no colon":         "blake3" + emptyBLAKE3,
		"uppercase hex":    "blake3:" + strings.ToUpper(emptyBLAKE3),
		"uppercase alg":    "BLAKE3:" + emptyBLAKE3,
		"short":            "blake3:" + emptyBLAKE3[:63],
		"long":             "blake3:" + emptyBLAKE3 + "0",
		"unknown alg":      "md5:" + emptyBLAKE3,
		"sha512":           "sha512:" + emptySHA256,
		"traversal":        "sha256:../../../../etc/passwd" + strings.Repeat("0", 36),
		"dotdot in hex":    "sha256:" + strings.Repeat("0", 62) + "..",
		"slash":            "sha256:" + strings.Repeat("0", 31) + "/" + strings.Repeat("0", 32),
		"nul":              "sha256:" + strings.Repeat("0", 63) + "\x00",
		"space":            "sha256: " + strings.Repeat("0", 63),
		"trailing newline": "sha256:" + emptySHA256 + "\n",
		"leading space":    " sha256:" + emptySHA256,
		"non-hex letter":   "sha256:" + strings.Repeat("g", 64),
		"backslash":        "sha256:" + strings.Repeat("0", 31) + "\\" + strings.Repeat("0", 32),
	}
	for name, s := range invalid {
		if a, err := Parse(s); err == nil {
			t.Errorf("%s: Parse(%q) = %v, want error", name, s, a)
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error %v does not wrap ErrInvalid", name, err)
		}
	}
}

func TestTextRoundTrip(t *testing.T) {
	t.Parallel()
	a := MustParse("sha256:" + emptySHA256)
	b, err := a.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var back Address
	if err := back.UnmarshalText(b); err != nil {
		t.Fatal(err)
	}
	if back != a {
		t.Fatalf("round trip: %v != %v", back, a)
	}
	if err := back.UnmarshalText([]byte("sha256:nope")); err == nil {
		t.Fatal("UnmarshalText accepted garbage")
	}
	if _, err := (Address{}).MarshalText(); err == nil {
		t.Fatal("MarshalText of the zero address succeeded")
	}
}

// FuzzParse checks that whatever parses round-trips to the same string and
// that every failure wraps ErrInvalid. (The backends' layouts are fuzzed
// with the addresses Parse accepts: storage/local's FuzzObjectPath.)
func FuzzParse(f *testing.F) {
	f.Add("blake3:" + emptyBLAKE3)
	f.Add("sha256:" + emptySHA256)
	f.Add("sha256:../" + emptySHA256[3:])
	f.Add("blake3:" + strings.ToUpper(emptyBLAKE3))
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if a.String() != s {
			t.Fatalf("round trip: Parse(%q).String() = %q", s, a.String())
		}
	})
}
