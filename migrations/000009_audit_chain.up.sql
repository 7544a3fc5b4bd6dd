-- The log is checkable from outside (DESIGN invariant 12, issue 14).
--
-- 1. Chain v2 covers every column of an event (see events/chain.go for the
--    encoding). Rows written before this migration keep their v1 chain
--    digest, which covers only the sequence, the type and the payload:
--    nothing in the events table is rewritten (a migration that recomputed
--    every digest would be indistinguishable from a forger, and would have
--    to switch the append-only trigger off). chain_version says which rule
--    links a row; v1 rows must be a prefix of the log, and
--    event_log_head.chain_v1_until records where that prefix ends.
--    Every row appended from now on is v2 and links onto the last v1
--    digest, so the first signed checkpoint anchors the whole log.
ALTER TABLE events ADD COLUMN chain_version smallint NOT NULL DEFAULT 1 CHECK (chain_version IN (1, 2));
ALTER TABLE events ALTER COLUMN chain_version SET DEFAULT 2;

ALTER TABLE event_log_head ADD COLUMN chain_v1_until bigint NOT NULL DEFAULT 0 CHECK (chain_v1_until >= 0);
UPDATE event_log_head SET chain_v1_until = last_sequence;

-- 2. Events enter only at the head. After every INSERT statement on events,
--    under the lock of the head row, the new rows must be exactly
--    head+1 .. head+n, all on chain v2, and the head moves to the last of
--    them. A row far beyond the head, or one that skips a sequence, is
--    refused, whoever inserts it; only a superuser who switches triggers
--    off (session_replication_role) gets past, and `artifactstore audit`
--    reports such rows.
CREATE FUNCTION artifactstore_events_append_at_head() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    n        bigint;
    lo       bigint;
    hi       bigint;
    hi_chain bytea;
BEGIN
    SELECT last_sequence INTO head_seq FROM event_log_head FOR UPDATE;
    SELECT count(*), min(sequence), max(sequence) INTO n, lo, hi FROM appended;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF lo <> head_seq + 1 OR hi <> head_seq + n THEN
        RAISE EXCEPTION 'artifactstore: events % to % do not follow the log head at %', lo, hi, head_seq
            USING ERRCODE = 'restrict_violation',
                  HINT = 'Events are appended by artifactstore only, at sequence head+1 and without gaps.';
    END IF;
    IF EXISTS (SELECT 1 FROM appended WHERE chain_version <> 2) THEN
        RAISE EXCEPTION 'artifactstore: new events must use chain version 2'
            USING ERRCODE = 'restrict_violation';
    END IF;
    SELECT chain_digest INTO hi_chain FROM appended WHERE sequence = hi;
    UPDATE event_log_head SET last_sequence = hi, last_chain_digest = hi_chain, updated_at = now();
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_append_at_head
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION artifactstore_events_append_at_head();

-- The head moves only with the events (from the trigger above, one trigger
-- level down); chain_v1_until never changes. An UPDATE that leaves them as
-- they are (e.g. of updated_at) is allowed.
CREATE FUNCTION artifactstore_head_moves_with_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.chain_v1_until IS DISTINCT FROM OLD.chain_v1_until
       OR (pg_trigger_depth() < 2 AND (NEW.last_sequence IS DISTINCT FROM OLD.last_sequence
                                       OR NEW.last_chain_digest IS DISTINCT FROM OLD.last_chain_digest)) THEN
        RAISE EXCEPTION 'artifactstore: the log head moves only when events are appended'
            USING ERRCODE = 'restrict_violation',
                  HINT = 'The head follows the events table; append events through artifactstore.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER event_log_head_moves_with_events
    BEFORE UPDATE ON event_log_head
    FOR EACH ROW EXECUTE FUNCTION artifactstore_head_moves_with_events();

-- 3. Signed checkpoints of the chain head (package checkpoint). The signed
--    note is kept verbatim: it is the evidence; the other columns are
--    parsed from it for queries. The same notes are published on the
--    JetStream checkpoints stream, which is the copy outside the database.
CREATE TABLE event_checkpoints (
    sequence     bigint      NOT NULL CHECK (sequence > 0),
    signer       text        NOT NULL CHECK (signer <> ''),
    chain_digest bytea       NOT NULL CHECK (octet_length(chain_digest) = 32),
    signed_at    timestamptz NOT NULL,
    note         text        NOT NULL,
    PRIMARY KEY (sequence, signer)
);

CREATE TRIGGER event_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON event_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION artifactstore_refuse_change('checkpoints are immutable');

-- 4. A projector that stopped on the log (altered, gapped or forged rows,
--    unknown events) says so here until it applies a batch again, so that
--    `status` and the metrics raise the alarm from any process.
ALTER TABLE projector_checkpoints
    ADD COLUMN stopped_at   timestamptz NULL,
    ADD COLUMN stop_reason  text        NULL,
    ADD COLUMN stop_message text        NULL;
