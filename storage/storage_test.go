package storage_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

func TestRangeResolve(t *testing.T) {
	t.Parallel()
	ok := []struct {
		r      storage.Range
		size   int64
		off, n int64
	}{
		{storage.Range{Start: 0, End: 0}, 10, 0, 1},
		{storage.Range{Start: 9, End: 9}, 10, 9, 1},
		{storage.Range{Start: 9, End: -1}, 10, 9, 1},
		{storage.Range{Start: 2, End: 100}, 10, 2, 8},
		{storage.Range{Start: 0, End: -1}, 10, 0, 10},
	}
	for _, c := range ok {
		off, n, err := c.r.Resolve(c.size)
		if err != nil || off != c.off || n != c.n {
			t.Errorf("%v of %d = %d, %d, %v; want %d, %d", c.r, c.size, off, n, err, c.off, c.n)
		}
	}
	bad := []struct {
		r    storage.Range
		size int64
	}{
		{storage.Range{Start: -1, End: 3}, 10},
		{storage.Range{Start: 5, End: 4}, 10},
		{storage.Range{Start: 10, End: -1}, 10},
		{storage.Range{Start: 0, End: -1}, 0},
		{storage.Range{Start: 0, End: 0}, 0},
	}
	for _, c := range bad {
		if _, _, err := c.r.Resolve(c.size); !errors.Is(err, storage.ErrInvalidRange) {
			t.Errorf("%v of %d: err = %v, want ErrInvalidRange", c.r, c.size, err)
		}
	}
}

func TestCheckClaims(t *testing.T) {
	t.Parallel()
	d, err := digest.Compute(strings.NewReader("abc"), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := digest.Compute(strings.NewReader("abd"), nil)
	if err := storage.CheckClaims(storage.PutOptions{Expect: []digest.Address{d.Address(digest.SHA256)}, ExpectSize: 3}, d); err != nil {
		t.Fatalf("right claims: %v", err)
	}
	if err := storage.CheckClaims(storage.PutOptions{ExpectSize: storage.NoSizeClaim}, d); err != nil {
		t.Fatalf("no claims: %v", err)
	}
	err = storage.CheckClaims(storage.PutOptions{Expect: []digest.Address{other.Address(digest.BLAKE3)}, ExpectSize: 4}, d)
	if !errors.Is(err, storage.ErrDigestMismatch) || !errors.Is(err, storage.ErrSizeMismatch) {
		t.Fatalf("both wrong: %v, want both sentinels", err)
	}
	msg := err.Error()
	for _, want := range []string{other.Address(digest.BLAKE3).String(), d.Address(digest.BLAKE3).String(), d.Address(digest.SHA256).String(), "claimed 4 bytes but read 3"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	err = storage.CheckClaims(storage.PutOptions{ExpectSize: 0}, d)
	if errors.Is(err, storage.ErrDigestMismatch) || !errors.Is(err, storage.ErrSizeMismatch) {
		t.Fatalf("size 0 claim: %v, want only ErrSizeMismatch", err)
	}
}

func TestValidateOptions(t *testing.T) {
	t.Parallel()
	if alg, err := storage.ValidateOptions(storage.PutOptions{}); err != nil || alg != digest.BLAKE3 {
		t.Fatalf("default primary = %v, %v", alg, err)
	}
	for _, o := range []storage.PutOptions{
		{Primary: 7},
		{Expect: []digest.Address{{}}},
		{MaxSize: -1},
	} {
		if _, err := storage.ValidateOptions(o); err == nil {
			t.Errorf("ValidateOptions(%+v) accepted", o)
		}
	}
}

type fakeBackend struct {
	storage.Backend
	id string
}

func (f fakeBackend) ID() string { return f.id }

func TestRegistry(t *testing.T) {
	t.Parallel()
	r := storage.NewRegistry()
	for _, id := range []string{"b", "a"} {
		if err := r.Register(fakeBackend{id: id}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Register(fakeBackend{id: "a"}); err == nil {
		t.Fatal("duplicate id registered")
	}
	if err := r.Register(fakeBackend{id: ""}); err == nil {
		t.Fatal("empty id registered")
	}
	if err := r.Register(nil); err == nil {
		t.Fatal("nil backend registered")
	}
	if got := r.IDs(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("IDs = %v", got)
	}
	if b, err := r.Get("b"); err != nil || b.ID() != "b" {
		t.Fatalf("Get(b) = %v, %v", b, err)
	}
	if _, err := r.Get("s3"); !errors.Is(err, storage.ErrUnknownBackend) || !strings.Contains(err.Error(), `"s3"`) {
		t.Fatalf("Get(s3) = %v, want ErrUnknownBackend naming it", err)
	}
}
