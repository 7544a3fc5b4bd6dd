package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
)

// DefaultSampleGroups is how many randomly chosen chunk groups, besides
// the first and the last, a put proves of a stored copy before it
// deduplicates against it.
//
// The check reads at most 2+DefaultSampleGroups groups of 64 KiB (256
// KiB) and the tree nodes above them, whatever the object's size, so it
// costs a re-put about what hashing 256 KiB costs: nothing next to the
// put itself, which has already read and hashed the whole object. An
// object of up to four groups (256 KiB), most build and test evidence, is
// checked whole; a 4 KiB object is one group, read once. A bigger object
// is sampled: damage confined to one group of an n-group object is found
// with probability 4/n (always when it is in the first or last group, and
// always when the stored size or tree changed). Damage the verifier
// recorded does not depend on the sample: PutOptions.Condition reports
// it and the copy is replaced whatever the sample says.
const DefaultSampleGroups = 2

// judge decides how a put commits addr on b: over a stored copy that is
// damaged or lost (with the repair that says what was wrong), or keeping
// a stored copy that passed the check. The caller's records are asked
// before the backend, so that "recorded but absent" means the copy was
// lost, not that a concurrent put stored it after the question.
func (p *Putter) judge(ctx context.Context, b Backend, addr digest.Address, d digest.Digests, opts PutOptions) (CommitMode, *Repair, error) {
	if p.noCheck {
		return CommitKeep, nil, nil
	}
	var cond Condition
	if opts.Condition != nil {
		c, err := opts.Condition(ctx, b.ID(), addr)
		if err != nil {
			return 0, nil, fmt.Errorf("look up what is recorded of %s on %q: %w", addr, b.ID(), err)
		}
		cond = c
	}
	info, err := b.Head(ctx, addr)
	switch {
	case errors.Is(err, ErrNotFound):
		if cond.Recorded || cond.Damage != "" {
			return CommitKeep, &Repair{Was: DamageMissing, Detail: "the backend no longer held the object"}, nil
		}
		return CommitKeep, nil, nil
	case err != nil:
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return CommitReplace, &Repair{Was: DamageCorrupt, Detail: fmt.Sprintf("the stored copy could not be looked at: %v", err)}, nil
	case cond.Damage != "":
		detail := cond.Detail
		if detail == "" {
			detail = "recorded " + cond.Damage
		}
		return CommitReplace, &Repair{Was: cond.Damage, Detail: detail}, nil
	}
	rep, err := p.check(ctx, b, addr, d, info.Size)
	if err != nil {
		return 0, nil, err
	}
	if rep != nil {
		return CommitReplace, rep, nil
	}
	return CommitKeep, nil, nil
}

// check proves the stored copy of addr against the digests d of the bytes
// just put: its size, and a sample of its chunk groups (the first, the
// last and sampleN others, see DefaultSampleGroups), each against the
// stored tree and d's BLAKE3 root. It returns nil when every check held
// and a Repair saying what failed otherwise: any doubt (a size that
// differs, a group or tree node that fails, a tree missing or of the
// wrong length, a read error) condemns the copy. Only ctx's end is an
// error.
func (p *Putter) check(ctx context.Context, b Backend, addr digest.Address, d digest.Digests, stored int64) (*Repair, error) {
	if stored != d.Size {
		return corrupt("the stored copy has %d bytes, not %d", stored, d.Size), nil
	}
	var tree TreeReader
	if blaketree.HasNodes(d.Size) {
		tr, err := b.Tree(ctx, addr)
		switch {
		case errors.Is(err, ErrNotFound):
			return &Repair{Was: DamageMissing, Detail: "the stored copy vanished while it was checked"}, nil
		case errors.Is(err, ErrNoTree):
			return corrupt("the stored copy has no tree"), nil
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return corrupt("the stored copy's tree could not be read: %v", err), nil
		}
		defer tr.Close()
		if want := blaketree.OutboardSize(d.Size); tr.Size() != want {
			return corrupt("the stored tree has %d bytes, not %d", tr.Size(), want), nil
		}
		tree = tr
	}
	for _, g := range p.sample(d.Size) {
		rep, err := p.proveGroup(ctx, b, addr, tree, d, g)
		if rep != nil || err != nil {
			return rep, err
		}
	}
	return nil, nil
}

func corrupt(format string, args ...any) *Repair {
	return &Repair{Was: DamageCorrupt, Detail: fmt.Sprintf(format, args...)}
}

// sample returns the chunk groups check proves of an object of size
// bytes, in ascending order: all of them when they are few, else the
// first, the last and sampleN distinct others.
func (p *Putter) sample(size int64) []int64 {
	n := blaketree.Groups(size)
	if n <= int64(p.sampleN)+2 {
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	out := []int64{0, n - 1}
	for len(out) < p.sampleN+2 {
		g := p.intN(n-2) + 1
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	slices.Sort(out)
	return out
}

// proveGroup reads chunk group g of the stored copy and proves it against
// tree (nil: the object is one group, proven against the root alone) and
// d's BLAKE3 root.
func (p *Putter) proveGroup(ctx context.Context, b Backend, addr digest.Address, tree TreeReader, d digest.Digests, g int64) (*Repair, error) {
	off := g * blaketree.GroupSize
	n := min(int64(blaketree.GroupSize), d.Size-off)
	var proof io.Reader
	if tree != nil {
		proof = blaketree.Proof(tree, d.Size, off, n)
	} else {
		h := blaketree.Header(d.Size)
		proof = bytes.NewReader(h[:])
	}
	var rng *Range
	if d.Size > 0 {
		rng = &Range{Start: off, End: off + n - 1}
	}
	rc, err := b.Get(ctx, addr, rng)
	switch {
	case errors.Is(err, ErrNotFound):
		return &Repair{Was: DamageMissing, Detail: "the stored copy vanished while it was checked"}, nil
	case errors.Is(err, ErrInvalidRange):
		return corrupt("the stored copy is shorter than its %d bytes", d.Size), nil
	case err != nil:
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return corrupt("bytes %d-%d of the stored copy could not be read: %v", off, off+n-1, err), nil
	}
	defer rc.Close()
	r := blaketree.NewReader(rc, proof, d.BLAKE3, d.Size, off, n,
		blaketree.WithBatchGroups(1), blaketree.WithParallelism(1), blaketree.WithBufferPool(&p.bufs))
	defer r.Close()
	_, err = r.WriteTo(io.Discard)
	var me *blaketree.MismatchError
	switch {
	case err == nil:
		return nil, nil
	case errors.As(err, &me) && me.Node:
		return corrupt("a node of the stored tree over bytes %d-%d does not match (%s)", me.Offset, me.Offset+me.Length-1, me.Detail), nil
	case errors.As(err, &me):
		return corrupt("bytes %d-%d of the stored copy do not match the address (%s)", me.Offset, me.Offset+me.Length-1, me.Detail), nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		return corrupt("bytes %d-%d of the stored copy could not be read: %v", off, off+n-1, err), nil
	}
}
