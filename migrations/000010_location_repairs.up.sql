-- Repairs of stored copies (event object.repaired): when the copy of an
-- object on a backend was last replaced by bytes verified against its
-- address after it was found corrupt or missing, and how many times.
-- Projection columns like the rest of storage_locations: the projector
-- writes them, a rebuild computes them from the log. ADD COLUMN with a
-- constant default rewrites no row.
ALTER TABLE storage_locations
    ADD COLUMN IF NOT EXISTS repaired_at  timestamptz NULL,
    ADD COLUMN IF NOT EXISTS repair_count bigint      NOT NULL DEFAULT 0 CHECK (repair_count >= 0);
