-- artifactstore schema v1: the event log, its head, command idempotency,
-- the projections, and the configuration tables.
--
-- Plain SQL without explicit transaction control: golang-migrate sends the
-- whole file as one simple-protocol query, which PostgreSQL runs as a single
-- implicit transaction, so a failure leaves nothing half-created.

-- The event log. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.
-- sequence is assigned by the append path under the lock of the single
-- event_log_head row, which makes commit order equal sequence order and the
-- log gap-free for a reader tailing by sequence (see events/log.go).
CREATE TABLE events (
    sequence        bigint      PRIMARY KEY CHECK (sequence > 0),
    event_id        uuid        NOT NULL UNIQUE,
    occurred_at     timestamptz NOT NULL,
    event_type      text        NOT NULL CHECK (event_type <> ''),
    payload_version smallint    NOT NULL CHECK (payload_version > 0),
    subject_kind    text        NOT NULL,
    subject_id      text        NOT NULL,
    actor           text        NOT NULL,
    command_id      text        NULL CHECK (command_id <> ''),
    payload         bytea       NOT NULL,
    payload_digest  bytea       NOT NULL CHECK (octet_length(payload_digest) = 32),
    chain_digest    bytea       NOT NULL CHECK (octet_length(chain_digest) = 32)
);

CREATE INDEX events_subject_idx ON events (subject_kind, subject_id);
CREATE INDEX events_type_sequence_idx ON events (event_type, sequence);
CREATE INDEX events_command_id_idx ON events (command_id) WHERE command_id IS NOT NULL;

CREATE FUNCTION artifactstore_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'artifactstore: % on table % is refused: %', TG_OP, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'restrict_violation',
              HINT = 'The event log is append-only; record a correction by appending a new event.';
END;
$$;

-- Statement-level, so even an UPDATE or DELETE that matches no row is refused.
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION artifactstore_refuse_change('events are immutable');

-- The head of the log: exactly one row, holding the last sequence and the
-- last chain digest. Every append locks this row first (SELECT ... FOR
-- UPDATE), which serialises appenders.
CREATE TABLE event_log_head (
    singleton         boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    last_sequence     bigint      NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    last_chain_digest bytea       NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
                                  CHECK (octet_length(last_chain_digest) = 32),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

INSERT INTO event_log_head DEFAULT VALUES;

CREATE TRIGGER event_log_head_keep_row
    BEFORE DELETE OR TRUNCATE ON event_log_head
    FOR EACH STATEMENT EXECUTE FUNCTION artifactstore_refuse_change('the log head row must stay');

-- Idempotency by command id: one row per command whose events were appended.
-- The primary key is the last line of defence against a second set of events.
CREATE TABLE commands (
    command_id     text        PRIMARY KEY CHECK (command_id <> ''),
    first_sequence bigint      NOT NULL,
    last_sequence  bigint      NOT NULL CHECK (last_sequence >= first_sequence),
    appended_at    timestamptz NOT NULL
);

-- Configuration: retention classes (seeded, editable).
CREATE TABLE retention_classes (
    name             text     PRIMARY KEY CHECK (name <> ''),
    default_duration interval NULL,
    may_shorten      boolean  NOT NULL DEFAULT true,
    never_expires    boolean  NOT NULL DEFAULT false,
    description      text     NOT NULL DEFAULT '',
    CHECK (never_expires = (default_duration IS NULL)),
    CHECK (NOT (never_expires AND may_shorten))
);

INSERT INTO retention_classes (name, default_duration, may_shorten, never_expires, description) VALUES
    ('transient',        interval '7 days',    true,  false, 'Short-lived build output; kept for a week.'),
    ('raw-evidence',     interval '90 days',   true,  false, 'Raw logs and test output.'),
    ('summary-evidence', interval '365 days',  true,  false, 'Summaries and reports.'),
    ('release-evidence', interval '2557 days', false, false, 'Evidence of a release, kept 7 years; retention may be lengthened, never shortened.'),
    ('permanent-record', NULL,                 false, true,  'Never expires and is never reaped.');

-- Configuration: JSON Schemas that package metadata must satisfy, either for
-- one retention class or (retention_class NULL) for every package.
CREATE TABLE metadata_schemas (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    retention_class text        NULL REFERENCES retention_classes (name) ON UPDATE CASCADE,
    schema          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX metadata_schemas_class_idx ON metadata_schemas (retention_class);

-- Projections: derived from the event log alone, rebuilt from sequence 0.
-- Retention class names are plain text here (no foreign key): a projection
-- records what the log says, even if a class row was later edited.

CREATE TABLE artifact_packages (
    name            text        PRIMARY KEY,
    retention_class text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL,
    sealed_at       timestamptz NULL,
    file_count      bigint      NOT NULL DEFAULT 0 CHECK (file_count >= 0),
    total_bytes     bigint      NOT NULL DEFAULT 0 CHECK (total_bytes >= 0),
    -- open, sealed, expired, reaped: the projector owns the vocabulary.
    state           text        NOT NULL DEFAULT 'open'
);

CREATE TABLE artifact_files (
    package          text        NOT NULL,
    path             text        NOT NULL,
    content_address  text        NOT NULL,
    digest_algorithm text        NOT NULL CHECK (digest_algorithm IN ('blake3', 'sha256')),
    digest_primary   bytea       NOT NULL CHECK (octet_length(digest_primary) = 32),
    digest_blake3    bytea       NOT NULL CHECK (octet_length(digest_blake3) = 32),
    digest_sha256    bytea       NOT NULL CHECK (octet_length(digest_sha256) = 32),
    size_bytes       bigint      NOT NULL CHECK (size_bytes >= 0),
    media_type       text        NULL,
    added_at         timestamptz NOT NULL,
    PRIMARY KEY (package, path)
);

CREATE INDEX artifact_files_content_address_idx ON artifact_files (content_address);

CREATE TABLE storage_locations (
    content_address    text        NOT NULL,
    backend_id         text        NOT NULL,
    digest_algorithm   text        NOT NULL CHECK (digest_algorithm IN ('blake3', 'sha256')),
    digest_blake3      bytea       NOT NULL CHECK (octet_length(digest_blake3) = 32),
    digest_sha256      bytea       NOT NULL CHECK (octet_length(digest_sha256) = 32),
    size_bytes         bigint      NOT NULL CHECK (size_bytes >= 0),
    state              text        NOT NULL DEFAULT 'ok'
                                   CHECK (state IN ('ok', 'corrupt', 'missing', 'deleted')),
    stored_at          timestamptz NOT NULL,
    last_verified_at   timestamptz NULL,
    verification_count bigint      NOT NULL DEFAULT 0 CHECK (verification_count >= 0),
    retrieval_tier     text        NOT NULL DEFAULT 'hot',
    restore_status     text        NULL,
    PRIMARY KEY (content_address, backend_id)
);

CREATE INDEX storage_locations_backend_state_idx ON storage_locations (backend_id, state);
CREATE INDEX storage_locations_last_verified_idx ON storage_locations (last_verified_at NULLS FIRST);

CREATE TABLE retention_state (
    package           text        PRIMARY KEY,
    retention_class   text        NOT NULL,
    retain_until      timestamptz NULL,
    legal_hold        boolean     NOT NULL DEFAULT false,
    legal_hold_reason text        NULL,
    expired_at        timestamptz NULL,
    reaped_at         timestamptz NULL
);

CREATE INDEX retention_state_retain_until_idx ON retention_state (retain_until)
    WHERE NOT legal_hold AND expired_at IS NULL;

-- Projector checkpoints: the last sequence each projector has applied,
-- committed in the same transaction as the rows it covers.
CREATE TABLE projector_checkpoints (
    projector  text        PRIMARY KEY CHECK (projector <> ''),
    sequence   bigint      NOT NULL DEFAULT 0 CHECK (sequence >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
