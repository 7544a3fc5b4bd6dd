package local

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
)

const emptyBLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

func TestObjectPathLayout(t *testing.T) {
	t.Parallel()
	a := digest.MustParse("blake3:" + emptyBLAKE3)
	want := "blake3/af/13/" + emptyBLAKE3
	if got := ObjectPath(a); got != want {
		t.Fatalf("ObjectPath = %q, want %q", got, want)
	}
}

// FuzzObjectPath checks the property that makes digest.Parse the only
// safe way from a string to a path of this backend: whatever parses builds
// a path that stays under the root and ends in the hex digest.
func FuzzObjectPath(f *testing.F) {
	f.Add("blake3:" + emptyBLAKE3)
	f.Add("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	f.Add("sha256:../" + emptyBLAKE3[3:])
	f.Add("blake3:" + strings.ToUpper(emptyBLAKE3))
	f.Fuzz(func(t *testing.T, s string) {
		a, err := digest.Parse(s)
		if err != nil {
			if !errors.Is(err, digest.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		root := filepath.FromSlash("/srv/objects")
		p := filepath.Join(root, filepath.FromSlash(ObjectPath(a)))
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
			t.Fatalf("path %q escapes root %q", p, root)
		}
		if filepath.Base(p) != a.Hex() {
			t.Fatalf("base of %q is not the hex digest", p)
		}
	})
}
