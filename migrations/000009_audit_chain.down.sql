-- Rolls 000008_audit_chain back. Events appended under chain v2 keep
-- their v2 digests, which the older audit (v1 rule) reports as altered:
-- roll back only a database that has appended nothing since.
ALTER TABLE projector_checkpoints
    DROP COLUMN IF EXISTS stopped_at,
    DROP COLUMN IF EXISTS stop_reason,
    DROP COLUMN IF EXISTS stop_message;
DROP TABLE IF EXISTS event_checkpoints;
DROP TRIGGER IF EXISTS event_log_head_moves_with_events ON event_log_head;
DROP FUNCTION IF EXISTS artifactstore_head_moves_with_events();
DROP TRIGGER IF EXISTS events_append_at_head ON events;
DROP FUNCTION IF EXISTS artifactstore_events_append_at_head();
ALTER TABLE event_log_head DROP COLUMN IF EXISTS chain_v1_until;
ALTER TABLE events DROP COLUMN IF EXISTS chain_version;
