package events

import (
	"context"
	"encoding/binary"
	"fmt"

	"lukechampine.com/blake3"
)

// auditBatch is how many events Audit reads per query.
const auditBatch = 2000

// ChainDigest is the hash chain link of an event: BLAKE3-256 of the previous
// event's chain digest (32 zero bytes before the first event), the sequence
// as 8 big-endian bytes, the event type and the payload digest. Every field
// but the type has a fixed size, so the concatenation is unambiguous.
func ChainDigest(prev [32]byte, seq int64, t Type, payloadDigest [32]byte) [32]byte {
	buf := make([]byte, 0, 32+8+len(t)+32)
	buf = append(buf, prev[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(seq))
	buf = append(buf, t...)
	buf = append(buf, payloadDigest[:]...)
	return blake3.Sum256(buf)
}

// AuditReport is the outcome of an Audit.
type AuditReport struct {
	// Events is how many events were checked, up to and including FirstBad.
	Events int64
	// FirstBad is the sequence of the first event that failed a check, 0
	// when the whole log passed.
	FirstBad int64
	// Reason says what failed at FirstBad; empty when the log passed.
	Reason string
}

// OK reports whether the audit found nothing wrong.
func (r AuditReport) OK() bool { return r.FirstBad == 0 && r.Reason == "" }

// Audit walks the log from sequence 1 up to the head committed when it
// starts, in batches, and checks that sequences are contiguous from 1, that
// each payload matches its payload digest, that each chain digest is the
// chain link of its event, and that the head row names the last event and
// its chain digest. It stops at the first event that fails and reports it;
// an error means the audit could not run, not that the log is bad. progress,
// if not nil, is called with the last sequence checked after each batch.
func (l *Log) Audit(ctx context.Context, progress func(seq int64)) (AuditReport, error) {
	var (
		rep       AuditReport
		headSeq   int64
		headChain []byte
	)
	if err := l.pool.QueryRow(ctx, `SELECT last_sequence, last_chain_digest FROM event_log_head`).
		Scan(&headSeq, &headChain); err != nil {
		return rep, translate("audit: read log head", err)
	}
	var prev [32]byte
	last := int64(0)
	for last < headSeq {
		rows, err := l.pool.Query(ctx, `SELECT sequence, event_type, payload, payload_digest, chain_digest
			FROM events WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3`,
			last, headSeq, auditBatch)
		if err != nil {
			return rep, translate("audit", err)
		}
		n := 0
		for rows.Next() {
			var (
				seq                 int64
				typ                 string
				payload, pdig, cdig []byte
			)
			if err := rows.Scan(&seq, &typ, &payload, &pdig, &cdig); err != nil {
				rows.Close()
				return rep, fmt.Errorf("audit: scan event after %d: %w", last, err)
			}
			n++
			rep.Events++
			if bad := check(seq, last, Type(typ), payload, pdig, cdig, &prev); bad != "" {
				rows.Close()
				rep.FirstBad, rep.Reason = seq, bad
				if seq != last+1 {
					rep.FirstBad = last + 1
				}
				return rep, nil
			}
			last = seq
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return rep, translate("audit", err)
		}
		if progress != nil && n > 0 {
			progress(last)
		}
		if n == 0 {
			break
		}
	}
	switch {
	case last != headSeq:
		rep.FirstBad = last + 1
		rep.Reason = fmt.Sprintf("the log head says %d events, but the events table ends at %d", headSeq, last)
	case string(headChain) != string(prev[:]):
		rep.FirstBad = max(last, 1)
		rep.Reason = fmt.Sprintf("the log head's chain digest differs from that of event %d", last)
	}
	return rep, nil
}

// check verifies one event against its predecessor and advances prev to its
// recorded chain digest. It returns why the event is bad, or "".
func check(seq, last int64, t Type, payload, pdig, cdig []byte, prev *[32]byte) string {
	if seq != last+1 {
		return fmt.Sprintf("sequence %d is missing: the next event is %d", last+1, seq)
	}
	recordedPayload, err := digest32(pdig, "payload_digest")
	if err != nil {
		return err.Error()
	}
	recordedChain, err := digest32(cdig, "chain_digest")
	if err != nil {
		return err.Error()
	}
	if PayloadDigest(payload) != recordedPayload {
		return "payload does not match its payload digest: the payload was altered"
	}
	if ChainDigest(*prev, seq, t, recordedPayload) != recordedChain {
		return "chain digest does not match the previous chain digest, sequence, type and payload digest: the event or its predecessor was altered"
	}
	*prev = recordedChain
	return ""
}
