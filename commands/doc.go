// Package commands is the wire format of the commands producers send to
// artifactstore over NATS JetStream, and of the replies they get back.
//
// # Commands
//
// A command is one message on the commands stream. Its subject says what it
// is (see package bus: the ingest and seal subjects); its body is one
// [Ingest] or [Seal] struct, encoded as deterministic CBOR (events.Codec) or,
// when the message carries the header "Content-Type: application/json", as
// JSON. The header "Nats-Msg-Id" should carry the command id, so that
// JetStream drops a duplicate publish inside its window; when both the header
// and the body carry one they must be equal.
//
// Every command has a schema version field "v"; this package reads version
// [Version] (1). A command of another version is rejected with code
// "unsupported_version" rather than guessed at.
//
// Field names are the same in CBOR and JSON. Unknown fields are refused in
// both encodings, and in CBOR duplicate map keys too: a command that the
// ingester does not fully understand is rejected, never half-applied.
//
// Ingest (version 1):
//
//	field            type                    required  meaning
//	v                int                     yes       schema version, 1
//	command_id       text (1..128 bytes)     yes       idempotency key: a redelivery or re-send with the
//	                                                   same id has exactly one effect
//	package          text                    yes       package name, [A-Za-z0-9][A-Za-z0-9._:@+/=-]* up to 200 bytes
//	                                                   (command_id: printable ASCII without space, '.', '*', '>')
//	path             text                    yes       path inside the package: clean, relative, slash-separated,
//	                                                   no "..", no ".", no NUL or control bytes, no backslash
//	retention_class  text                    no        class of a new package (default "raw-evidence"); for an
//	                                                   existing package it must be empty or equal to its class
//	metadata         map text→text           no        package metadata, recorded when the package is created;
//	                                                   for an existing package it must be empty or equal
//	media_type       text                    no        e.g. "text/plain"
//	expect_size      uint                    no        claimed size in bytes; a wrong claim rejects
//	expect           [text]                  no        claimed content addresses ("blake3:<hex>", "sha256:<hex>");
//	                                                   a wrong claim rejects
//	inline           bytes (JSON: base64)    one of    the blob itself, at most MaxInline bytes
//	staged           text                    one of    name of the object in the staging object-store bucket
//	upload           text                    no        with staged: the upload is still being written, on chunk
//	                                                   subject $O.<bucket>.C.<upload>; the ingester reads the
//	                                                   chunks as they arrive (see package staging)
//	producer         text                    no        who sends it, recorded as the events' actor
//
// Exactly one of inline and staged must be present (an empty blob is
// inline: an empty byte string).
//
// Every text field is UTF-8 without NUL bytes or control characters
// (CheckText); metadata values may hold tabs and line breaks. A command
// that breaks this is rejected with its field's code (invalid_package,
// invalid_path, invalid_metadata, or malformed for the others), never
// handed to the database. An inline blob over MaxInline is too_large in
// both encodings.
//
// JSON example (the blob "hello\n" inline, base64):
//
//	{"v":1,"command_id":"0f8e3c1e-cli-demo-1","package":"ci/run-42",
//	 "path":"logs/hello.txt","retention_class":"raw-evidence",
//	 "metadata":{"git_commit":"4b825dc"},"expect_size":6,"inline":"aGVsbG8K"}
//
// Sent with the nats CLI: JetStream does not hand a publisher's reply
// subject to consumers, so the reply subject travels in the
// Artifactstore-Reply-To header; subscribe to it first:
//
//	nats sub demo.replies &
//	nats pub artifacts.cmd.ingest.file \
//	  -H Content-Type:application/json -H Nats-Msg-Id:0f8e3c1e-cli-demo-1 \
//	  -H Artifactstore-Reply-To:demo.replies \
//	  '{"v":1,"command_id":"0f8e3c1e-cli-demo-1","package":"ci/run-42","path":"logs/hello.txt","inline":"aGVsbG8K"}'
//
// (`nats request` instead of `nats pub` prints JetStream's publish
// acknowledgement: the command is queued, not yet stored.)
//
// Seal (version 1): {"v":1,"command_id":"...","package":"ci/run-42"}. After
// a seal no file can be added to the package, except the very same object
// at a path that already holds it (which changes nothing).
//
// Ingest batch (version 1), on the batch subject (bus.CmdIngestBatch,
// "artifacts.cmd.ingest.batch"): several small files in one message,
// {"v":1,"command_id":"<batch id>","files":[<Ingest>, ...]}, each file a
// complete inline Ingest command with its own command id (1 to
// MaxBatchFiles files, at most MaxBatchBytes in all). The ingester stores
// them with one grouped commit; each file gets its own events, its own
// reply and its own rejection (a bad file rejects that file only), and is
// exactly-once by its own command id. The batch's command_id is its
// Nats-Msg-Id and the id of its reply, whose status is "batch" and whose
// "files" holds the reply of each file in order. See [IngestBatch].
//
// # Replies
//
// When a command carries the Artifactstore-Reply-To header (package
// producer and bus.Requester set it), the ingester answers on that subject
// with one
// [Reply], encoded like the command (JSON for a JSON command, else CBOR)
// and only after the outcome is durable: the object fsynced and the events
// committed, or the rejection event committed.
//
// Every command is answered. Besides "stored", "sealed" and "rejected" (a
// decision, recorded as an event), a reply may say "failed": the pipeline
// could not handle the command and nothing was recorded. Its code is
// "unavailable" (a dependency, named in the reason, failed on every attempt
// for longer than the retry budget), "insufficient_storage" (the backend has
// no room; the reason gives the bytes needed and free) or "internal"; the
// command may be sent again later.
package commands
