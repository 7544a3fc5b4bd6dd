// Package blaketree computes and checks the BLAKE3 tree of an object, as
// the Bao outboard encoding of lukechampine.com/blake3/bao (outboard mode,
// group Group): an 8-byte little-endian length followed by the chaining
// values of every parent node of the tree, 64 bytes per parent, in
// pre-order. The root of the tree is the object's BLAKE3-256 digest, so a
// tree is checked by its root alone, and any byte range of the object can
// be checked with the chunk groups it touches and the parent nodes on
// their paths up to the root.
//
// Three parts:
//
//   - [Builder] hashes a stream once and yields both the BLAKE3 digest and
//     the outboard, so that ingest computes the tree in the same pass that
//     hashes and writes the bytes. Its memory is bounded: the tree's
//     nodes beyond a limit go to an unlinked temp file.
//   - [Proof] reads, from a stored outboard, only the parent nodes a range
//     needs (the whole outboard for the whole object), in the order a
//     verifier consumes them.
//   - [Reader] streams a range of an object and releases each chunk group
//     only after it matched the tree; a mismatch is a *[MismatchError]
//     returned before any byte of the bad group.
//
// The group size is a trade-off measured by BenchmarkGroupSize (2 shared
// vCPUs, medians of 3 runs): from 2^3 chunks up, hashing runs at full
// SIMD speed whatever the group size (1.0-1.6 GB/s per busy vCPU), so
// the size only moves the cost of short ranges and the size of the tree.
// Checking an unaligned 1 MiB range takes 0.52 ms with 16 KiB groups,
// 0.60 ms with 64 KiB and 0.91 ms with 256 KiB; a 4 KiB range 24, 46 and
// 154 µs; the tree is 4 KiB, 1 KiB and 256 bytes per MiB. 64 KiB groups
// (Group 6) keep short ranges well under the cost of an HTTP request,
// make the tree 0.1% of the stored bytes, let a Builder keep the tree of
// a 1 GiB object in 1 MiB of memory, and spare objects of up to 64 KiB -
// most build and test evidence - a tree file altogether.
package blaketree

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"lukechampine.com/blake3/guts"
)

const (
	// Group is the Bao group parameter: a chunk group is 2^Group chunks
	// of 1 KiB. Stored trees depend on it; changing it means rebuilding
	// every stored tree.
	Group = 6
	// GroupSize is the size in bytes of a chunk group, the unit of
	// verification.
	GroupSize = guts.ChunkSize << Group

	// HeaderSize is the size of the outboard's length header.
	HeaderSize = 8
	// NodeSize is the size of one parent node in the outboard: the
	// chaining values of its two children.
	NodeSize = 64

	simdSize = guts.MaxSIMD * guts.ChunkSize
)

// ErrMismatch is wrapped by every *MismatchError.
var ErrMismatch = errors.New("bytes do not match their BLAKE3 tree")

// MismatchError says where a check against the tree failed: the chunk
// group (or, for a parent node, the whole subtree) at [Offset,
// Offset+Length) of the object.
type MismatchError struct {
	// Offset and Length delimit the bytes that could not be proven.
	Offset, Length int64
	// Node is true when a parent node of the tree failed its check, so
	// the damage is in the stored tree itself or in what it was read
	// from; false when the bytes of a chunk group failed.
	Node bool
	// Detail says what differed.
	Detail string
}

// Error describes the failed check.
func (e *MismatchError) Error() string {
	what := "chunk group"
	if e.Node {
		what = "tree node"
	}
	return fmt.Sprintf("%v: %s covering bytes %d-%d: %s", ErrMismatch, what, e.Offset, e.Offset+e.Length-1, e.Detail)
}

// Unwrap returns ErrMismatch.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// Groups returns the number of chunk groups of an object of size bytes; an
// empty object has one (empty) group.
func Groups(size int64) int64 {
	if size <= GroupSize {
		return 1
	}
	return (size + GroupSize - 1) / GroupSize
}

// OutboardSize returns the size of the outboard of an object of size
// bytes, as bao.EncodedSize(size, Group, true).
func OutboardSize(size int64) int64 {
	return HeaderSize + NodeSize*(Groups(size)-1)
}

// HasNodes reports whether the tree of an object of size bytes has any
// parent node. When it has none (one group), its outboard is the length
// header alone and the object is checked against its digest directly, so
// a store need not keep a tree for it.
func HasNodes(size int64) bool { return size > GroupSize }

// Header returns the outboard header of an object of size bytes.
func Header(size int64) [HeaderSize]byte {
	var h [HeaderSize]byte
	binary.LittleEndian.PutUint64(h[:], uint64(size))
	return h
}

// AlignedRange returns the bytes [start, end) of an object of size bytes
// that a check of the range [off, off+n) must read: whole chunk groups.
func AlignedRange(size, off, n int64) (start, end int64) {
	start = off / GroupSize * GroupSize
	end = min((off+n+GroupSize-1)/GroupSize*GroupSize, size)
	return start, end
}

// groupNode returns the node of the chunk group p, whose first chunk has
// index counter, without the root flag. It is bao's compressGroup, hashing
// full 16-chunk blocks in place rather than copying them.
func groupNode(p []byte, counter uint64) guts.Node {
	var stack [Group + 1][8]uint32
	var sc uint64
	for len(p) > simdSize {
		cv := guts.ChainingValue(guts.CompressBuffer((*[simdSize]byte)(p[:simdSize]), simdSize, &guts.IV, counter+sc*guts.MaxSIMD, 0))
		i := 0
		for sc&(1<<i) != 0 {
			cv = guts.ChainingValue(guts.ParentNode(stack[i], cv, &guts.IV, 0))
			i++
		}
		stack[i] = cv
		sc++
		p = p[simdSize:]
	}
	var n guts.Node
	if len(p) == simdSize {
		n = guts.CompressBuffer((*[simdSize]byte)(p), simdSize, &guts.IV, counter+sc*guts.MaxSIMD, 0)
	} else {
		var buf [simdSize]byte
		copy(buf[:], p)
		n = guts.CompressBuffer(&buf, len(p), &guts.IV, counter+sc*guts.MaxSIMD, 0)
	}
	for i := bits.TrailingZeros64(sc); i < bits.Len64(sc); i++ {
		if sc&(1<<i) != 0 {
			n = guts.ParentNode(stack[i], guts.ChainingValue(n), &guts.IV, 0)
		}
	}
	return n
}

// groupCV returns the chaining value of the group p at byte offset pos,
// with flags (FlagRoot for the only group of an object).
func groupCV(p []byte, pos int64, flags uint32) [8]uint32 {
	n := groupNode(p, uint64(pos)/guts.ChunkSize)
	n.Flags |= flags
	return guts.ChainingValue(n)
}

func parentCV(l, r [8]uint32, flags uint32) [8]uint32 {
	return guts.ChainingValue(guts.ParentNode(l, r, &guts.IV, flags))
}

// leftSize returns the size of the left subtree of a parent over n > GroupSize
// bytes: the largest power of two below n, as Bao splits.
func leftSize(n int64) int64 { return 1 << (bits.Len64(uint64(n-1)) - 1) }

// nodesWithin returns the number of parent nodes of a subtree over n bytes.
func nodesWithin(n int64) int64 { return Groups(n) - 1 }

func cvToBytes(cv [8]uint32, b []byte) {
	for i, w := range cv {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
}

func bytesToCV(b []byte) (cv [8]uint32) {
	for i := range cv {
		cv[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return cv
}

// RootCV converts a BLAKE3-256 digest to the chaining value a tree's root
// must have.
func rootCV(sum [32]byte) [8]uint32 { return bytesToCV(sum[:]) }
