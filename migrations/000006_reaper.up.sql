-- The reaper's and the retention handler's command-side state.
--
-- ingest_packages gains the retention facts the reaper decides on: the
-- legal hold (set and released by retention commands) and the expiry
-- (set by the reaper). They are written in the same transaction as the
-- events that record them, under the ingest advisory lock, like the rest
-- of ingest_packages, so a reaper decision and a concurrent ingest always
-- agree on whether a package is live.
ALTER TABLE ingest_packages
    ADD COLUMN legal_hold        boolean     NOT NULL DEFAULT false,
    ADD COLUMN legal_hold_reason text        NULL,
    ADD COLUMN expired_at        timestamptz NULL,
    ADD CONSTRAINT ingest_packages_hold_reason_check CHECK (legal_hold = (legal_hold_reason IS NOT NULL));

-- The reaper's expiry scan: packages that may expire, by retain-until.
CREATE INDEX ingest_packages_expiry_idx ON ingest_packages (retain_until)
    WHERE expired_at IS NULL AND NOT legal_hold AND retain_until IS NOT NULL;

-- "Does any live package reference this content?" is asked per address.
CREATE INDEX ingest_files_content_address_idx ON ingest_files (content_address);

-- One control row per stored object (content address on a backend): the
-- garbage collector's record, and the row that an ingest finding existing
-- content and the reaper deleting it both lock (SELECT ... FOR UPDATE).
--
--   live:   the bytes are kept.
--   marked: nothing live referenced the content when the reaper looked at
--           marked_at; after the grace period the reaper re-checks under
--           the row lock, deletes the file, appends object.deleted and
--           deletes the row, in one transaction. An ingest that takes the
--           row first sets it live again (and rewrites the bytes when they
--           are already gone).
--
-- A file on a backend without a row here is an orphan: the reaper moves
-- it to quarantine, never deletes it at once. This is command-side state,
-- not a projection: rebuilding projections leaves it alone.
CREATE TABLE gc_objects (
    content_address text        NOT NULL CHECK (content_address <> ''),
    backend_id      text        NOT NULL CHECK (backend_id <> ''),
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    state           text        NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'marked')),
    marked_at       timestamptz NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (content_address, backend_id),
    CHECK ((state = 'marked') = (marked_at IS NOT NULL))
);

CREATE INDEX gc_objects_marked_idx ON gc_objects (marked_at) WHERE state = 'marked';

-- Objects stored before this migration: every location the projection
-- knows and that was not deleted.
INSERT INTO gc_objects (content_address, backend_id, size_bytes, state)
SELECT content_address, backend_id, size_bytes, 'live'
FROM storage_locations
WHERE state <> 'deleted'
ON CONFLICT DO NOTHING;

-- Holds and expiries recorded before this migration (from the projection).
UPDATE ingest_packages p
SET legal_hold = r.legal_hold,
    legal_hold_reason = CASE WHEN r.legal_hold THEN COALESCE(r.legal_hold_reason, '') END,
    expired_at = r.expired_at
FROM retention_state r
WHERE r.package = p.name AND (r.legal_hold OR r.expired_at IS NOT NULL);
