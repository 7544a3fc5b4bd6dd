-- Command-side state of the ingester: what it must know to decide an
-- ingest or a seal (is the package new? sealed? which object does this
-- path name?). It is written in the same transaction as the events that
-- the decision appends, under the ingesters' advisory lock, so it always
-- agrees with the log. It is not a projection (the projector owns those):
-- it holds only what the command handlers need, and a rebuild of the
-- projections leaves it alone.
CREATE TABLE ingest_packages (
    name            text        PRIMARY KEY CHECK (name <> ''),
    retention_class text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    retain_until    timestamptz NULL,
    created_seq     bigint      NOT NULL CHECK (created_seq > 0),
    sealed_at       timestamptz NULL,
    sealed_seq      bigint      NULL,
    CHECK ((sealed_at IS NULL) = (sealed_seq IS NULL))
);

CREATE TABLE ingest_files (
    package         text   NOT NULL REFERENCES ingest_packages (name),
    path            text   NOT NULL CHECK (path <> ''),
    content_address text   NOT NULL,
    added_seq       bigint NOT NULL CHECK (added_seq > 0),
    PRIMARY KEY (package, path)
);
