package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/mod/sumdb/note"
)

// NoteSource calls f with every checkpoint note it holds: (*Stream).Notes,
// (*Table).Notes, or a list of files.
type NoteSource struct {
	// Name says where the notes come from, for reports.
	Name string
	// Notes calls f with each note.
	Notes func(ctx context.Context, f func(msg []byte) error) error
}

// Collected is what Collect found.
type Collected struct {
	// Valid are the checkpoints signed by the key, one per sequence,
	// oldest first.
	Valid []Checkpoint
	// Forged lists notes that name the key but whose signature does not
	// verify, or that verify and are not well-formed checkpoints, with
	// where they were found. Any entry means someone forged or altered a
	// checkpoint.
	Forged []string
	// OtherKeys counts notes signed only by other keys (ignored).
	OtherKeys int
	// Unreadable counts messages that are not signed notes at all
	// (ignored: whoever can publish on the subject can add them, and
	// they prove nothing).
	Unreadable int
	// Conflicts lists sequences for which two valid checkpoints name
	// different chain digests: the key signed two histories.
	Conflicts []string
}

// Collect reads every source and verifies each note with verifier.
func Collect(ctx context.Context, verifier note.Verifier, sources ...NoteSource) (Collected, error) {
	var out Collected
	bySeq := map[int64]Checkpoint{}
	for _, src := range sources {
		err := src.Notes(ctx, func(msg []byte) error {
			c, err := Open(msg, verifier)
			switch {
			case errors.Is(err, ErrOtherKey):
				out.OtherKeys++
			case errors.Is(err, ErrBadSignature):
				out.Forged = append(out.Forged, fmt.Sprintf("%s: %v", src.Name, err))
			case errors.Is(err, ErrMalformed) && isSignedByKey(msg, verifier):
				out.Forged = append(out.Forged, fmt.Sprintf("%s: %v", src.Name, err))
			case err != nil:
				out.Unreadable++
			default:
				if prev, ok := bySeq[c.Sequence]; ok && prev.Chain != c.Chain {
					out.Conflicts = append(out.Conflicts, fmt.Sprintf("sequence %d: %x (%s) and %x (%s)", c.Sequence, prev.Chain, prev.Time, c.Chain, c.Time))
				}
				if _, ok := bySeq[c.Sequence]; !ok {
					bySeq[c.Sequence] = c
				}
			}
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("read checkpoints from %s: %w", src.Name, err)
		}
	}
	for _, c := range bySeq {
		out.Valid = append(out.Valid, c)
	}
	sort.Slice(out.Valid, func(i, j int) bool { return out.Valid[i].Sequence < out.Valid[j].Sequence })
	return out, nil
}

// isSignedByKey reports whether msg is a note validly signed by verifier
// (whatever its text).
func isSignedByKey(msg []byte, verifier note.Verifier) bool {
	_, err := note.Open(msg, note.VerifierList(verifier))
	return err == nil
}
