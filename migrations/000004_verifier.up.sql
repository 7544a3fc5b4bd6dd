-- The scrub scheduler's memory of what it queued and when. A row says that
-- a verify request for (content_address, backend_id) was published at
-- queued_at under request_id; the scheduler queues that location again
-- only once queued_at is older than the scrub interval, even while the
-- projector has not yet recorded the verification in storage_locations.
-- This is scheduler state, not a projection: rebuilding projections from
-- the event log leaves it alone, and deleting it only makes the next scrub
-- pass queue everything that is due once more (harmless: verification is
-- idempotent by request id).
CREATE TABLE scrub_queue (
    content_address text        NOT NULL,
    backend_id      text        NOT NULL,
    queued_at       timestamptz NOT NULL,
    request_id      text        NOT NULL CHECK (request_id <> ''),
    PRIMARY KEY (content_address, backend_id)
);

CREATE INDEX scrub_queue_queued_at_idx ON scrub_queue (queued_at);
