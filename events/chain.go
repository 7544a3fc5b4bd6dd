package events

import (
	"encoding/binary"
	"fmt"

	"lukechampine.com/blake3"
)

// Chain versions: which rule links an event to its predecessor (column
// events.chain_version).
const (
	// ChainV1 covers the previous chain digest, the sequence, the type and
	// the payload digest only. Rows written before migration 8 keep it;
	// they form a prefix of the log (event_log_head.chain_v1_until).
	ChainV1 = 1
	// ChainV2 covers every column of the event; see [ChainDigestV2].
	ChainV2 = 2
	// CurrentChain is the version every new event is appended with.
	CurrentChain = ChainV2
)

// ChainV2Tag starts the input of every v2 chain link (domain separation:
// no other BLAKE3 input of artifactstore starts with it).
const ChainV2Tag = "artifactstore/events/chain/v2\n"

// chainedColumns are the columns of the events table, in table order. Each
// is covered by the v2 chain link (chain_digest being its output); Audit
// refuses a table with any other column, because the chain would not
// cover it.
var chainedColumns = []string{
	"sequence", "event_id", "occurred_at", "event_type", "payload_version",
	"subject_kind", "subject_id", "actor", "command_id", "payload",
	"payload_digest", "chain_digest", "chain_version",
}

// ChainDigestV1 is the v1 chain link of an event: BLAKE3-256 of the
// previous event's chain digest (32 zero bytes before the first event),
// the sequence as 8 big-endian bytes, the event type and the payload
// digest. It leaves the other columns uncovered; it is kept only to check
// rows written before chain v2.
func ChainDigestV1(prev [32]byte, seq int64, t Type, payloadDigest [32]byte) [32]byte {
	buf := make([]byte, 0, 32+8+len(t)+32)
	buf = append(buf, prev[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(seq))
	buf = append(buf, t...)
	buf = append(buf, payloadDigest[:]...)
	return blake3.Sum256(buf)
}

// ChainDigestV2 is the v2 chain link of e: BLAKE3-256 of this encoding,
// in which every integer is 8 bytes big-endian (two's complement), every
// text or byte string is its length in bytes (8 bytes big-endian) followed
// by its bytes, and digests and the event id are their raw bytes:
//
//	ChainV2Tag                 the 30 ASCII bytes "artifactstore/events/chain/v2\n"
//	prev                       32 bytes: chain digest of the previous event (zeros before the first)
//	chain_version              integer, 2
//	sequence                   integer
//	event_id                   16 bytes (the UUID's bytes in RFC 9562 order)
//	occurred_at                integer: microseconds since 1970-01-01T00:00:00Z
//	event_type                 string
//	payload_version            integer
//	subject_kind               string
//	subject_id                 string
//	actor                      string
//	command_id                 one byte 0x00 when NULL; else 0x01 then the string
//	payload                    byte string (the CBOR bytes)
//	payload_digest             32 bytes
//
// Each field has a fixed size or says its length, so no two different rows
// give the same input. e.ChainVersion is not read: the encoding is v2's.
func ChainDigestV2(prev [32]byte, e Event) [32]byte {
	return chainV2(prev, e, e.CommandID != "")
}

// chainV2 is ChainDigestV2 with the command id's NULL-ness given apart, so
// that the audit encodes an empty non-NULL command id (which the schema
// forbids, but a superuser could write) differently from NULL.
func chainV2(prev [32]byte, e Event, hasCommand bool) [32]byte {
	var buf [512]byte
	return blake3.Sum256(appendChainV2(buf[:0], prev, e, hasCommand))
}

func appendChainV2(b []byte, prev [32]byte, e Event, hasCommand bool) []byte {
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		return append(b, s...)
	}
	b = append(b, ChainV2Tag...)
	b = append(b, prev[:]...)
	b = binary.BigEndian.AppendUint64(b, ChainV2)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Sequence))
	b = append(b, e.EventID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.OccurredAt.UnixMicro()))
	b = str(b, string(e.Type))
	b = binary.BigEndian.AppendUint64(b, uint64(int64(e.PayloadVersion)))
	b = str(b, e.SubjectKind)
	b = str(b, e.SubjectID)
	b = str(b, e.Actor)
	if hasCommand {
		b = append(b, 1)
		b = str(b, e.CommandID)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(e.Payload)))
	b = append(b, e.Payload...)
	return append(b, e.PayloadDigest[:]...)
}

// ChainLink returns the chain digest e must have after prev, by the rule of
// e.ChainVersion.
func ChainLink(prev [32]byte, e Event) ([32]byte, error) {
	switch e.ChainVersion {
	case ChainV1:
		return ChainDigestV1(prev, e.Sequence, e.Type, e.PayloadDigest), nil
	case ChainV2:
		return ChainDigestV2(prev, e), nil
	default:
		return [32]byte{}, fmt.Errorf("event %d has chain version %d, which this release does not know", e.Sequence, e.ChainVersion)
	}
}
