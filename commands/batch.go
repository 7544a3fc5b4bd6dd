package commands

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Limits of a batch command.
const (
	// MaxBatchBytes caps an encoded batch command (CBOR or JSON); it is
	// the codec's cap on one decoded item. A producer packs below it and
	// below what its connection and the commands stream take (see
	// bus.CommandLimit).
	MaxBatchBytes = 1 << 20
	// MaxBatchFiles caps the files of one batch: a batch is committed in
	// one group, and the group's transaction holds the log's lock.
	MaxBatchFiles = 256
)

// IngestBatch carries several small files in one message, so that a
// directory of many small files costs one message and one grouped commit
// per batch instead of one of each per file. Each file is a complete
// Ingest with its own command id, and keeps every per-file guarantee: its
// own events, its own reply (Reply.Files, in order) and its own rejection
// (one bad file in a batch rejects that file only), and exactly-once by
// its command id (a redelivered or re-sent batch answers the files already
// in the log from the log).
//
// CommandID names the batch itself: it is the message's Nats-Msg-Id (so
// that JetStream drops a duplicate publish) and the id of the reply; it
// appends no event of its own. Files must be inline (at most MaxInline
// bytes each): a large blob is staged and sent as its own ingest command.
type IngestBatch struct {
	V         int      `cbor:"v" json:"v"`
	CommandID string   `cbor:"command_id" json:"command_id"`
	Files     []Ingest `cbor:"files" json:"files"`
}

// BatchFile is one file of a decoded batch: its command, or why it is
// refused (Err). A refused file's Ingest holds what could be read of it
// (its id, package and path when they are recordable), for its rejection.
type BatchFile struct {
	Ingest Ingest
	Err    *Error
}

// batchCBOR and batchJSON are the batch as read: the envelope decoded,
// each file left raw so that one bad file refuses that file only.
type batchCBOR struct {
	V         int               `cbor:"v"`
	CommandID string            `cbor:"command_id"`
	Files     []cbor.RawMessage `cbor:"files"`
}

type batchJSON struct {
	V         int               `json:"v"`
	CommandID string            `json:"command_id"`
	Files     []json.RawMessage `json:"files"`
}

// DecodeIngestBatch decodes a batch command. A batch whose envelope is
// unusable (it does not decode, a wrong version or command id, no files or
// too many, too large) is refused whole: err is an *Error, and id the
// batch's command id when one could be read. Otherwise every file is
// decoded and validated on its own: a file that fails gets its Err and the
// others are unaffected.
func (d *Decoder) DecodeIngestBatch(data []byte, isJSON bool) (id string, files []BatchFile, err error) {
	if len(data) > MaxBatchBytes {
		return "", nil, Rejectf(CodeTooLarge, "batch command of %d bytes is larger than the limit of %d; send fewer files per batch", len(data), MaxBatchBytes)
	}
	var (
		v   int
		raw [][]byte
	)
	if isJSON {
		var b batchJSON
		derr := decodeJSON(data, &b)
		switch {
		case errors.Is(derr, errTrailingJSON):
			return "", nil, Rejectf(CodeMalformed, "the JSON batch has data after its object; send exactly one JSON object")
		case derr != nil:
			return "", nil, Rejectf(CodeMalformed, "the JSON batch does not decode: %v; see the batch schema in the commands package documentation", derr)
		}
		v, id = b.V, b.CommandID
		for _, f := range b.Files {
			raw = append(raw, f)
		}
	} else {
		var b batchCBOR
		if derr := d.codec.Unmarshal(data, &b); derr != nil {
			return "", nil, Rejectf(CodeMalformed, "the CBOR batch does not decode: %v; send deterministic CBOR with the documented fields, or JSON with Content-Type: application/json", derr)
		}
		v, id = b.V, b.CommandID
		for _, f := range b.Files {
			raw = append(raw, f)
		}
	}
	if v != Version {
		return id, nil, Rejectf(CodeUnsupportedVersion, "batch schema version %d is not supported; this ingester reads version %d (field \"v\")", v, Version)
	}
	if err := ValidateCommandID(id); err != nil {
		return id, nil, err
	}
	switch {
	case len(raw) == 0:
		return id, nil, Rejectf(CodeMalformed, "the batch has no files; send at least one")
	case len(raw) > MaxBatchFiles:
		return id, nil, Rejectf(CodeTooLarge, "the batch has %d files, more than %d; split it", len(raw), MaxBatchFiles)
	}
	files = make([]BatchFile, len(raw))
	for i, r := range raw {
		c, ferr := decodeValid[Ingest](d, r, isJSON)
		files[i].Ingest = c
		var rej *Error
		switch {
		case errors.As(ferr, &rej):
			rej.Reason = fmt.Sprintf("file #%d of batch %s: %s", i, id, rej.Reason)
			files[i].Err = rej
		case ferr != nil:
			files[i].Err = Rejectf(CodeMalformed, "file #%d of batch %s: %v", i, id, ferr)
		case c.Inline == nil:
			files[i].Err = Rejectf(CodeMalformed, "file #%d of batch %s (%s) is staged; a batch carries inline files only: send a staged blob as its own ingest command", i, id, trunc(c.Path))
		}
	}
	return id, files, nil
}

// Validate checks a batch before it is sent: its envelope, and every file
// (each must be inline). It returns the first problem as an *Error.
func (b IngestBatch) Validate() error {
	if b.V != Version {
		return Rejectf(CodeUnsupportedVersion, "batch schema version %d is not supported; this package writes version %d", b.V, Version)
	}
	if err := ValidateCommandID(b.CommandID); err != nil {
		return err
	}
	if len(b.Files) == 0 || len(b.Files) > MaxBatchFiles {
		return Rejectf(CodeMalformed, "a batch holds 1 to %d files, not %d", MaxBatchFiles, len(b.Files))
	}
	for i, f := range b.Files {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("file #%d: %w", i, err)
		}
		if f.Inline == nil {
			return Rejectf(CodeMalformed, "file #%d (%s) is staged; a batch carries inline files only", i, trunc(f.Path))
		}
	}
	return nil
}
