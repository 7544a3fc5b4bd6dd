package events

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
)

// parseChainV2 reads back the fields of a v2 chain input as an outsider
// following ChainDigestV2's documentation would; it fails on any byte left
// over or missing. That every input parses back to the event it came from
// proves the encoding unambiguous: two different events never share an
// input.
func parseChainV2(t *testing.T, b []byte) (prev [32]byte, e Event, hasCommand bool) {
	t.Helper()
	take := func(n int) []byte {
		if len(b) < n {
			t.Fatalf("input ends early: want %d more bytes, have %d", n, len(b))
		}
		out := b[:n]
		b = b[n:]
		return out
	}
	integer := func() int64 { return int64(binary.BigEndian.Uint64(take(8))) }
	str := func() string {
		n := binary.BigEndian.Uint64(take(8))
		if n > uint64(len(b)) {
			t.Fatalf("length %d beyond the input", n)
		}
		return string(take(int(n)))
	}
	if tag := string(take(len(ChainV2Tag))); tag != ChainV2Tag {
		t.Fatalf("tag %q", tag)
	}
	copy(prev[:], take(32))
	if v := integer(); v != ChainV2 {
		t.Fatalf("chain version %d", v)
	}
	e.ChainVersion = ChainV2
	e.Sequence = integer()
	copy(e.EventID[:], take(16))
	e.OccurredAt = time.UnixMicro(integer()).UTC()
	e.Type = Type(str())
	e.PayloadVersion = int(integer())
	e.SubjectKind, e.SubjectID, e.Actor = str(), str(), str()
	switch flag := take(1)[0]; flag {
	case 0:
	case 1:
		hasCommand = true
		e.CommandID = str()
	default:
		t.Fatalf("command id flag %d", flag)
	}
	e.Payload = []byte(str())
	copy(e.PayloadDigest[:], take(32))
	if len(b) != 0 {
		t.Fatalf("%d bytes left over", len(b))
	}
	return prev, e, hasCommand
}

func FuzzChainV2Encoding(f *testing.F) {
	f.Add(int64(1), []byte("0123456789abcdef"), int64(1767225600000000), "package.created", int64(1), "package", "p", "test", "c1", true, []byte{0xa0}, []byte("prev"))
	f.Add(int64(2), []byte{}, int64(-1), "", int64(0), "", "", "", "", false, []byte{}, []byte{})
	f.Add(int64(3), []byte{1}, int64(0), "a", int64(1), "bc", "", "d", "", true, []byte("x"), []byte{})
	f.Fuzz(func(t *testing.T, seq int64, id []byte, micros int64, typ string, pv int64, sk, sid, actor, cmd string, hasCommand bool, payload, prevSeed []byte) {
		var prev [32]byte
		copy(prev[:], prevSeed)
		e := Event{
			Sequence: seq, OccurredAt: time.UnixMicro(micros).UTC(), Type: Type(typ), PayloadVersion: int(pv),
			SubjectKind: sk, SubjectID: sid, Actor: actor, Payload: payload, ChainVersion: ChainV2,
		}
		copy(e.EventID[:], id)
		e.PayloadDigest = PayloadDigest(payload)
		if hasCommand {
			e.CommandID = cmd
		}
		in := appendChainV2(nil, prev, e, hasCommand)
		gotPrev, got, gotHas := parseChainV2(t, in)
		if len(got.Payload) == 0 && len(e.Payload) == 0 {
			got.Payload = e.Payload
		}
		if gotPrev != prev || gotHas != hasCommand || !reflect.DeepEqual(got, e) {
			t.Fatalf("parsed back\n%+v (prev %x, command %v)\nwant\n%+v (prev %x, command %v)", got, gotPrev, gotHas, e, prev, hasCommand)
		}
		if d := chainV2(prev, e, hasCommand); d != ChainDigestV2(prev, e) && hasCommand == (cmd != "") {
			t.Fatal("ChainDigestV2 and chainV2 disagree")
		}
		// A NULL command id and an empty one are different inputs.
		if !hasCommand && bytes.Equal(in, appendChainV2(nil, prev, e, true)) {
			t.Fatal("NULL and empty command ids encode alike")
		}
	})
}

// TestChainV2Golden pins the encoding: an outside implementation of the
// documented rule must reproduce this digest.
func TestChainV2Golden(t *testing.T) {
	e := Event{
		Sequence: 7, EventID: uuid.MustParse("01890a5d-ac96-774b-bcce-b302099a8057"),
		OccurredAt: time.Date(2026, 1, 2, 3, 4, 5, 678901000, time.UTC), Type: "package.created", PayloadVersion: 1,
		SubjectKind: "package", SubjectID: "ci/run-42", Actor: "ingest", CommandID: "cmd-1",
		Payload: []byte{0xa1, 0x64, 0x6e, 0x61, 0x6d, 0x65, 0x61, 0x70}, ChainVersion: ChainV2,
	}
	e.PayloadDigest = PayloadDigest(e.Payload)
	var prev [32]byte
	prev[31] = 1
	got := ChainDigestV2(prev, e)
	const want = "16d9c3f18af557f725fbaed66a26c7056f4886c9077490cdd229b0dc2abfd1d7"
	if h := hex.EncodeToString(got[:]); h != want {
		t.Fatalf("ChainDigestV2 = %s, want %s", h, want)
	}
}

// BenchmarkChainDigestV2 is the cost of one link (appender, audit and
// projector pay it per event).
func BenchmarkChainDigestV2(b *testing.B) {
	e := Event{
		Sequence: 7, EventID: uuid.New(), OccurredAt: time.Now(), Type: "file.added", PayloadVersion: 1,
		SubjectKind: "package", SubjectID: "ci/run-42", Actor: "ingest", CommandID: "cmd-1",
		Payload: make([]byte, 220), ChainVersion: ChainV2,
	}
	var prev [32]byte
	for b.Loop() {
		prev = ChainDigestV2(prev, e)
	}
}
