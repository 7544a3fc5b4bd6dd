-- Rolls 000010_location_repairs back: the repair columns go. The
-- object.repaired events stay in the log, and a projector older than
-- this migration stops at the first of them (unknown event type): roll
-- back only a database that has recorded no repair.
ALTER TABLE storage_locations
    DROP COLUMN IF EXISTS repair_count,
    DROP COLUMN IF EXISTS repaired_at;
