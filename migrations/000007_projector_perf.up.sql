-- Projector write path (see projector/ and its BenchmarkCatchUp).
--
-- storage_locations_backend_state_idx served no query: every reader of
-- storage_locations looks rows up by content_address (the primary key's
-- prefix), orders by last_verified_at (its own index) or scans the table
-- (status counts). Each COPY of new locations paid for it, and because it
-- covered state, every state change (a verify outcome, a delete) was a
-- non-HOT update that also inserted into the primary key.
DROP INDEX IF EXISTS storage_locations_backend_state_idx;

-- Free space on each page lets an update that changes no indexed column
-- (object.deleted, a restore) stay on its page as a HOT update, without
-- new index entries. It applies to pages written from now on.
ALTER TABLE storage_locations SET (fillfactor = 85);
