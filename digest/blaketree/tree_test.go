package blaketree

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"
)

// sizes covers the shapes of the tree: no data, part of a chunk, exactly
// one group, one byte into the next, powers of two of groups and one more,
// and a long uneven tail.
var sizes = []int{
	0, 1, 1023, 1024, 1025, GroupSize - 1, GroupSize, GroupSize + 1,
	2 * GroupSize, 2*GroupSize + 1, 3 * GroupSize, 4 * GroupSize, 5*GroupSize + 17,
	7 * GroupSize, 8 * GroupSize, 8*GroupSize + 1, 16*GroupSize + 5, 37*GroupSize + 4095,
}

func testData(n int, seed uint64) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// build writes p into a Builder in pieces of the given sizes (cycled).
func build(t testing.TB, p []byte, pieces []int, opts ...BuilderOption) *Builder {
	t.Helper()
	b := NewBuilder(opts...)
	t.Cleanup(func() { b.Close() })
	for i := 0; len(p) > 0; i++ {
		k := min(pieces[i%len(pieces)], len(p))
		if _, err := b.Write(p[:k]); err != nil {
			t.Fatal(err)
		}
		p = p[k:]
	}
	return b
}

func TestBuilderMatchesBao(t *testing.T) {
	t.Parallel()
	writes := map[string][]int{
		"one write":      {1 << 30},
		"1 MiB writes":   {1 << 20},
		"odd writes":     {1, 7, 1000, GroupSize - 3, 2*GroupSize + 11},
		"aligned writes": {GroupSize},
	}
	for _, n := range sizes {
		p := testData(n, 1)
		wantOB, wantRoot := bao.EncodeBuf(p, Group, true)
		if wantRoot != blake3.Sum256(p) {
			t.Fatalf("bao's root of %d bytes is not BLAKE3-256", n)
		}
		for name, pieces := range writes {
			for _, spill := range []bool{false, true} {
				var opts []BuilderOption
				if spill {
					// 3 nodes in memory: every larger tree goes to the file.
					opts = []BuilderOption{WithMemoryLimit(3 * cvSize), WithSpillDir(t.TempDir())}
				}
				b := build(t, p, pieces, opts...)
				if got := b.Sum(); got != wantRoot {
					t.Fatalf("%d bytes, %s, spill %v: Sum = %x, want %x", n, name, spill, got, wantRoot)
				}
				ob, err := b.Outboard().Bytes()
				if err != nil {
					t.Fatalf("%d bytes, %s, spill %v: %v", n, name, spill, err)
				}
				if !bytes.Equal(ob, wantOB) {
					t.Fatalf("%d bytes, %s, spill %v: outboard of %d bytes differs from bao.Encode's %d", n, name, spill, len(ob), len(wantOB))
				}
				if b.Outboard().Size() != int64(len(wantOB)) || OutboardSize(int64(n)) != int64(len(wantOB)) {
					t.Fatalf("%d bytes: OutboardSize %d, want %d", n, OutboardSize(int64(n)), len(wantOB))
				}
				if HasNodes(int64(n)) != (len(wantOB) > HeaderSize) {
					t.Fatalf("%d bytes: HasNodes = %v with an outboard of %d bytes", n, HasNodes(int64(n)), len(wantOB))
				}
				if !bao.VerifyBuf(p, ob, Group, wantRoot) {
					t.Fatalf("%d bytes: bao.VerifyBuf refuses our outboard", n)
				}
			}
		}
	}
}

// TestBuilderSumMidStream checks that Sum and Outboard leave the state
// alone: writing on gives the digest of the whole stream.
func TestBuilderSumMidStream(t *testing.T) {
	t.Parallel()
	p := testData(9*GroupSize+100, 2)
	b := NewBuilder()
	defer b.Close()
	for _, cut := range []int{0, 10, GroupSize, GroupSize + 5, 4 * GroupSize, 9*GroupSize + 100} {
		if _, err := b.Write(p[b.Size():cut]); err != nil {
			t.Fatal(err)
		}
		if got, want := b.Sum(), blake3.Sum256(p[:cut]); got != want {
			t.Fatalf("after %d bytes: Sum %x, want %x", cut, got, want)
		}
		ob, err := b.Outboard().Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := bao.EncodeBuf(p[:cut], Group, true); !bytes.Equal(ob, want) {
			t.Fatalf("after %d bytes: outboard differs from bao's", cut)
		}
	}
	b.Reset()
	if got, want := b.Sum(), blake3.Sum256(nil); got != want || b.Size() != 0 {
		t.Fatalf("after Reset: Sum %x size %d, want the empty digest", got, b.Size())
	}
}

// readRange reads [off, off+n) of p through a Reader over its stored
// outboard, as a server does.
func readRange(p, ob []byte, root [32]byte, off, n int64, opts ...ReaderOption) ([]byte, error) {
	start, end := AlignedRange(int64(len(p)), off, n)
	r := NewReader(bytes.NewReader(p[start:end]), Proof(bytes.NewReader(ob), int64(len(p)), off, n), root, int64(len(p)), off, n, opts...)
	defer r.Close()
	var out bytes.Buffer
	_, err := r.WriteTo(&out)
	return out.Bytes(), err
}

// ranges returns edge and random ranges of an object of size bytes.
func ranges(size int64, rnd *rand.Rand) [][2]int64 {
	if size == 0 {
		return [][2]int64{{0, 0}}
	}
	rs := [][2]int64{{0, size}, {0, 1}, {size - 1, 1}, {size / 2, 1}}
	if size > GroupSize {
		rs = append(rs, [2]int64{GroupSize - 1, 2}, [2]int64{GroupSize, GroupSize}, [2]int64{1, size - 2})
	}
	for range 6 {
		off := rnd.Int64N(size)
		rs = append(rs, [2]int64{off, 1 + rnd.Int64N(size-off)})
	}
	for i := range rs {
		rs[i][1] = min(rs[i][1], size-rs[i][0])
	}
	return rs
}

func TestReaderRanges(t *testing.T) {
	t.Parallel()
	rnd := rand.New(rand.NewPCG(3, 3))
	for _, n := range sizes {
		p := testData(n, 3)
		ob, root := bao.EncodeBuf(p, Group, true)
		for _, rg := range ranges(int64(n), rnd) {
			off, ln := rg[0], rg[1]
			for _, opts := range [][]ReaderOption{nil, {WithBatchGroups(1), WithParallelism(1)}, {WithBatchGroups(3), WithParallelism(3)}} {
				got, err := readRange(p, ob, root, off, ln, opts...)
				if err != nil {
					t.Fatalf("%d bytes, range %d+%d: %v", n, off, ln, err)
				}
				if !bytes.Equal(got, p[off:off+ln]) {
					t.Fatalf("%d bytes, range %d+%d: got %d bytes that differ", n, off, ln, len(got))
				}
			}
			checkProofIsBaos(t, p, ob, root, off, ln)
		}
	}
}

// checkProofIsBaos checks that a proof interleaved with the range's groups
// is byte for byte bao's slice encoding, and that bao accepts it.
func checkProofIsBaos(t *testing.T, p, ob []byte, root [32]byte, off, n int64) {
	t.Helper()
	size := int64(len(p))
	proof, err := io.ReadAll(Proof(bytes.NewReader(ob), size, off, n))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(proof)) != ProofSize(size, off, n) {
		t.Fatalf("proof of %d+%d has %d bytes, ProofSize says %d", off, n, len(proof), ProofSize(size, off, n))
	}
	if off == 0 && n == size && !bytes.Equal(proof, ob) {
		t.Fatal("the proof of the whole object is not its outboard")
	}
	var slice bytes.Buffer
	slice.Write(proof[:HeaderSize])
	proof = proof[HeaderSize:]
	w := newWalk(size, off, off+n)
	for {
		s, ok := w.next()
		if !ok {
			break
		}
		if s.size > GroupSize {
			slice.Write(proof[:NodeSize])
			proof = proof[NodeSize:]
		} else {
			slice.Write(p[s.pos : s.pos+s.size])
		}
	}
	if size == 0 {
		return // bao has no slice of an empty object
	}
	start, end := AlignedRange(size, off, n)
	var want bytes.Buffer
	if err := bao.ExtractSlice(&want, bytes.NewReader(p[start:end]), bytes.NewReader(ob), Group, uint64(off), uint64(n)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(slice.Bytes(), want.Bytes()) {
		t.Fatalf("range %d+%d: proof interleaved with data differs from bao.ExtractSlice", off, n)
	}
	got, ok := bao.VerifySlice(slice.Bytes(), Group, uint64(off), uint64(n), root)
	if !ok || !bytes.Equal(got, p[off:off+n]) {
		t.Fatalf("range %d+%d: bao.VerifySlice refuses the slice built from our proof", off, n)
	}
	if !bao.VerifyChunk(p[start:end], ob, Group, uint64(start), root) {
		t.Fatalf("range %d+%d: bao.VerifyChunk refuses the groups with our outboard", off, n)
	}
}

// TestReaderDamagedGroup flips one byte of the object in the middle and in
// the last group: every read that touches it fails with the group's
// offset, after exactly the bytes before that group; reads that do not
// touch it succeed.
func TestReaderDamagedGroup(t *testing.T) {
	t.Parallel()
	const size = 40*GroupSize + 777
	p := testData(size, 4)
	ob, root := bao.EncodeBuf(p, Group, true)
	for _, at := range []int64{size / 2, size - 1, 0, GroupSize} {
		bad := bytes.Clone(p)
		bad[at] ^= 0x20
		group := at / GroupSize * GroupSize
		for _, rg := range [][2]int64{{0, size}, {at, 1}, {group, GroupSize}, {max(0, at-3*GroupSize), 6 * GroupSize}} {
			off, n := rg[0], min(rg[1], size-rg[0])
			got, err := readRange(bad, ob, root, off, n)
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrMismatch) {
				t.Fatalf("damage at %d, range %d+%d: err = %v, want a *MismatchError", at, off, n, err)
			}
			if me.Offset != group || me.Node {
				t.Fatalf("damage at %d, range %d+%d: mismatch %+v, want the group at %d", at, off, n, me, group)
			}
			if want := p[off:max(off, group)]; !bytes.Equal(got, want) {
				t.Fatalf("damage at %d, range %d+%d: released %d bytes, want the %d before the bad group", at, off, n, len(got), len(want))
			}
		}
		// A range that does not touch the damaged group is proven.
		if group >= 2*GroupSize {
			if got, err := readRange(bad, ob, root, 0, GroupSize); err != nil || !bytes.Equal(got, p[:GroupSize]) {
				t.Fatalf("damage at %d: first group: %v", at, err)
			}
		}
	}
}

// TestReaderDamagedTree flips bytes of the outboard: a read that needs the
// node fails, and never releases a byte it did not prove.
func TestReaderDamagedTree(t *testing.T) {
	t.Parallel()
	const size = 33*GroupSize + 5
	p := testData(size, 5)
	ob, root := bao.EncodeBuf(p, Group, true)
	for _, at := range []int{0, 3, HeaderSize, HeaderSize + 40, len(ob) / 2, len(ob) - 1} {
		bad := bytes.Clone(ob)
		bad[at] ^= 1
		got, err := readRange(p, bad, root, 0, size)
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("tree byte %d flipped: err = %v, want ErrMismatch", at, err)
		}
		if !bytes.Equal(got, p[:len(got)]) {
			t.Fatalf("tree byte %d flipped: released bytes that are not the object's", at)
		}
	}
	// A truncated tree, and a tree of another length.
	if _, err := readRange(p, ob[:len(ob)-64], root, 0, size); !errors.Is(err, ErrMismatch) {
		t.Fatalf("truncated tree: err = %v", err)
	}
	other, _ := bao.EncodeBuf(p[:size-1], Group, true)
	if _, err := readRange(p, other, root, 0, size); !errors.Is(err, ErrMismatch) {
		t.Fatalf("tree of another length: err = %v", err)
	}
	// A wrong root refuses even a one-group object.
	small := testData(100, 6)
	sob, _ := bao.EncodeBuf(small, Group, true)
	if _, err := readRange(small, sob, blake3.Sum256([]byte("x")), 0, 100); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong root: err = %v", err)
	}
}

func TestReaderTruncatedObject(t *testing.T) {
	t.Parallel()
	const size = 5*GroupSize + 10
	p := testData(size, 7)
	ob, root := bao.EncodeBuf(p, Group, true)
	r := NewReader(bytes.NewReader(p[:3*GroupSize+7]), Proof(bytes.NewReader(ob), size, 0, size), root, size, 0, size)
	defer r.Close()
	got, err := io.ReadAll(r)
	var me *MismatchError
	if !errors.As(err, &me) || me.Offset != 3*GroupSize {
		t.Fatalf("truncated object: err = %v, want a mismatch of the group at %d", err, 3*GroupSize)
	}
	if !bytes.Equal(got, p[:3*GroupSize]) {
		t.Fatalf("truncated object: released %d bytes, want %d", len(got), 3*GroupSize)
	}
}

func TestReaderPrimeAndClose(t *testing.T) {
	t.Parallel()
	const size = 50 * GroupSize
	p := testData(size, 8)
	ob, root := bao.EncodeBuf(p, Group, true)
	bad := bytes.Clone(p)
	bad[10] ^= 1
	r := NewReader(bytes.NewReader(bad), Proof(bytes.NewReader(ob), size, 0, size), root, size, 0, size)
	if err := r.Prime(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Prime over a bad first group: %v", err)
	}
	r.Close()
	// Close before the end stops the read-ahead; twice is fine.
	r = NewReader(bytes.NewReader(p), Proof(bytes.NewReader(ob), size, 0, size), root, size, 0, size)
	if err := r.Prime(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := r.Read(buf); err != nil || !bytes.Equal(buf[:n], p[:n]) {
		t.Fatalf("Read after Prime: %d, %v", n, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(buf); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

// FuzzReader checks the property every read relies on: whatever is
// damaged, a Reader releases only a prefix of the true range, and all of
// it when nothing it needs is damaged.
func FuzzReader(f *testing.F) {
	f.Add(uint32(10*GroupSize+3), uint32(5), uint32(GroupSize*3), uint32(GroupSize*4+1), false)
	f.Add(uint32(GroupSize+1), uint32(0), uint32(GroupSize+1), uint32(9), true)
	f.Add(uint32(3), uint32(1), uint32(1), uint32(1), false)
	f.Fuzz(func(t *testing.T, size, off, n, flip uint32, inTree bool) {
		size %= 24*GroupSize + 1
		if size == 0 {
			return
		}
		off %= size
		n = 1 + n%(size-off)
		p := testData(int(size), uint64(size))
		ob, root := bao.EncodeBuf(p, Group, true)
		data, tree := p, ob
		damaged := false
		if flip != 0 {
			if inTree {
				tree = bytes.Clone(ob)
				tree[int(flip)%len(tree)] ^= 0x80
			} else {
				data = bytes.Clone(p)
				data[int(flip)%len(data)] ^= 0x80
			}
			damaged = true
		}
		got, err := readRange(data, tree, root, int64(off), int64(n))
		want := p[off : off+n]
		if !bytes.HasPrefix(want, got) {
			t.Fatalf("released bytes that are not a prefix of the range (err %v)", err)
		}
		if err != nil && !errors.Is(err, ErrMismatch) {
			t.Fatalf("error %v is not a mismatch", err)
		}
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("no error but %d of %d bytes", len(got), len(want))
		}
		if !damaged && err != nil {
			t.Fatalf("undamaged: %v", err)
		}
		if damaged && !inTree {
			at := int64(int(flip) % len(data))
			start, end := AlignedRange(int64(size), int64(off), int64(n))
			if at >= start && at < end && err == nil {
				t.Fatalf("damage at %d inside the groups read [%d, %d) went unnoticed", at, start, end)
			}
		}
	})
}

func ExampleBuilder() {
	b := NewBuilder()
	defer b.Close()
	fmt.Fprint(b, "hello")
	sum := b.Sum()
	fmt.Printf("%x %d\n", sum[:4], b.Outboard().Size())
	// Output: ea8f163d 8
}
