// Package checkpoint signs the head of the event log's hash chain with an
// Ed25519 key and keeps the signed checkpoints outside the database (a
// JetStream stream) as well as in it (table event_checkpoints), so that a
// rewrite of the log is found as long as one checkpoint survives (DESIGN
// invariant 12).
//
// # Format
//
// A checkpoint is a signed note (golang.org/x/mod/sumdb/note, specified at
// https://c2sp.org/signed-note): a UTF-8 text of exactly four lines, each
// ending in "\n",
//
//	artifactstore event log checkpoint v1
//	sequence <decimal, the last event the checkpoint covers, > 0>
//	chain <64 lowercase hex digits: that event's chain digest>
//	time <UTC time of signing, RFC 3339, whole seconds, e.g. 2026-12-01T02:15:00Z>
//
// then an empty line, then one signature line per key:
//
//	— <key name> <base64 of: 4-byte key hash ‖ 64-byte Ed25519 signature of the text>
//
// where "—" is U+2014 followed by a space, the signed bytes are the four
// text lines including their final newline, and the key hash is the first
// four bytes (big-endian) of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ 32-byte public
// key). A public (verifier) key is written "<name>+<8 hex digits of the key
// hash>+<base64 of 0x01 ‖ 32-byte public key>".
//
// A checkpoint vouches for every event from 1 to its sequence: each event's
// chain digest covers its predecessor's (events.ChainDigestV2), so a
// log whose recomputed chain digest at that sequence equals the signed one
// holds exactly the events that were signed.
package checkpoint

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/artifactstore/artifactstore/events"
)

// Header is the first line of every checkpoint text.
const Header = "artifactstore event log checkpoint v1"

// ErrMalformed means a message is not a checkpoint of this format.
var ErrMalformed = errors.New("not a well-formed artifactstore checkpoint")

// ErrBadSignature means a checkpoint names the verifier's key but its
// signature does not verify: it was forged or altered.
var ErrBadSignature = errors.New("checkpoint signature does not verify: forged or altered")

// ErrOtherKey means a checkpoint is signed only by keys other than the
// verifier's.
var ErrOtherKey = errors.New("checkpoint is not signed by this key")

// Checkpoint is a signed statement of the chain head.
type Checkpoint struct {
	// Sequence is the last event covered.
	Sequence int64
	// Chain is the chain digest of the event at Sequence.
	Chain [32]byte
	// Time is when it was signed (UTC, whole seconds).
	Time time.Time
	// Signer is the signing key, "<name>+<key hash hex>".
	Signer string
	// Note is the signed note, verbatim: the evidence.
	Note []byte
}

// Anchor is the checkpoint as an anchor for events.Log.Audit.
func (c Checkpoint) Anchor() events.Anchor {
	return events.Anchor{Sequence: c.Sequence, Chain: c.Chain,
		Source: fmt.Sprintf("the checkpoint signed at %s by %s", c.Time.Format(time.RFC3339), c.Signer)}
}

// String is a one-line summary.
func (c Checkpoint) String() string {
	return fmt.Sprintf("sequence %d chain %x signed %s by %s", c.Sequence, c.Chain, c.Time.Format(time.RFC3339), c.Signer)
}

func text(seq int64, chain [32]byte, at time.Time) string {
	return fmt.Sprintf("%s\nsequence %d\nchain %x\ntime %s\n", Header, seq, chain, at.UTC().Format(time.RFC3339))
}

func signerID(name string, hash uint32) string { return fmt.Sprintf("%s+%08x", name, hash) }

// Sign signs the chain head (seq, chain) at time at with signer.
func Sign(signer note.Signer, seq int64, chain [32]byte, at time.Time) (Checkpoint, error) {
	if seq <= 0 {
		return Checkpoint{}, fmt.Errorf("sign checkpoint: sequence %d; an empty log has nothing to sign", seq)
	}
	at = at.UTC().Truncate(time.Second)
	msg, err := note.Sign(&note.Note{Text: text(seq, chain, at)}, signer)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	return Checkpoint{Sequence: seq, Chain: chain, Time: at, Signer: signerID(signer.Name(), signer.KeyHash()), Note: msg}, nil
}

// Open checks msg's signature with verifier and parses it. It fails with
// ErrBadSignature when the verifier's key signed it and the signature does
// not verify, ErrOtherKey when only other keys signed it, and ErrMalformed
// when it is not a checkpoint.
func Open(msg []byte, verifier note.Verifier) (Checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(verifier))
	var invalid *note.InvalidSignatureError
	var unverified *note.UnverifiedNoteError
	switch {
	case errors.As(err, &invalid):
		return Checkpoint{}, fmt.Errorf("%w (key %s+%08x)", ErrBadSignature, invalid.Name, invalid.Hash)
	case errors.As(err, &unverified):
		return Checkpoint{}, fmt.Errorf("%w: %s", ErrOtherKey, signersOf(unverified.Note))
	case err != nil:
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	c, err := parseText(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	c.Signer = signerID(verifier.Name(), verifier.KeyHash())
	c.Note = bytes.Clone(msg)
	return c, nil
}

func signersOf(n *note.Note) string {
	var ids []string
	for _, s := range n.UnverifiedSigs {
		ids = append(ids, signerID(s.Name, s.Hash))
	}
	return "signed by " + strings.Join(ids, ", ")
}

// parseText parses the four lines strictly: the text must be exactly what
// Sign would write for the values it holds.
func parseText(t string) (Checkpoint, error) {
	bad := func(why string) (Checkpoint, error) {
		return Checkpoint{}, fmt.Errorf("%w: %s", ErrMalformed, why)
	}
	lines := strings.Split(strings.TrimSuffix(t, "\n"), "\n")
	if len(lines) != 4 || lines[0] != Header {
		return bad("want 4 lines starting with " + strconv.Quote(Header))
	}
	var c Checkpoint
	seq, ok := strings.CutPrefix(lines[1], "sequence ")
	if !ok {
		return bad("line 2 is not 'sequence N'")
	}
	var err error
	if c.Sequence, err = strconv.ParseInt(seq, 10, 64); err != nil || c.Sequence <= 0 {
		return bad("line 2: sequence is not a positive decimal")
	}
	chain, ok := strings.CutPrefix(lines[2], "chain ")
	b, err := hex.DecodeString(chain)
	if !ok || err != nil || len(b) != 32 {
		return bad("line 3 is not 'chain <64 hex digits>'")
	}
	copy(c.Chain[:], b)
	ts, ok := strings.CutPrefix(lines[3], "time ")
	if c.Time, err = time.Parse(time.RFC3339, ts); !ok || err != nil {
		return bad("line 4 is not 'time <RFC 3339>'")
	}
	if text(c.Sequence, c.Chain, c.Time) != t {
		return bad("not in canonical form")
	}
	return c, nil
}

// GenerateKey returns a new Ed25519 key pair named name, in note's text
// encodings: the private (signer) key and the public (verifier) key.
func GenerateKey(name string) (private, public string, err error) {
	private, public, err = note.GenerateKey(rand.Reader, name)
	if err != nil {
		return "", "", fmt.Errorf("generate key %q (a name must be non-empty, without spaces or '+'): %w", name, err)
	}
	return private, public, nil
}

// LoadSigner reads a private key file written by GenerateKey.
func LoadSigner(path string) (note.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the checkpoint key: %w", err)
	}
	s, err := note.NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s is not a checkpoint private key (create one with 'artifactstore checkpoint keygen'): %w", path, err)
	}
	return s, nil
}

// LoadVerifier reads a public key file written by GenerateKey (or the key
// itself, "<name>+<hash>+<key>").
func LoadVerifier(path string) (note.Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the checkpoint public key: %w", err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s is not a checkpoint public key (the .pub file of 'artifactstore checkpoint keygen'): %w", path, err)
	}
	return v, nil
}

// Verifier returns the public key of a private key, as a verifier and in
// its text encoding.
func Verifier(private string) (note.Verifier, string, error) {
	// The private encoding is PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>.
	parts := strings.SplitN(strings.TrimSpace(private), "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return nil, "", errors.New("not a checkpoint private key")
	}
	s, err := note.NewSigner(strings.TrimSpace(private))
	if err != nil {
		return nil, "", err
	}
	pub, err := publicKey(parts[4])
	if err != nil {
		return nil, "", err
	}
	vkey, err := note.NewEd25519VerifierKey(s.Name(), pub)
	if err != nil {
		return nil, "", err
	}
	v, err := note.NewVerifier(vkey)
	return v, vkey, err
}

// publicKey derives the Ed25519 public key from the base64 of 0x01 ‖ seed.
func publicKey(b64 string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != 1+ed25519.SeedSize || b[0] != 1 {
		return nil, errors.New("not an Ed25519 checkpoint private key")
	}
	return ed25519.NewKeyFromSeed(b[1:]).Public().(ed25519.PublicKey), nil
}
