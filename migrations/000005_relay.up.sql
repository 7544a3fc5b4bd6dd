-- The events relay publishes every committed event to the JetStream events
-- stream; its checkpoint is the last sequence the stream acknowledged.
CREATE TABLE relay_checkpoints (
    relay      text        PRIMARY KEY,
    sequence   bigint      NOT NULL DEFAULT 0 CHECK (sequence >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
