ALTER TABLE storage_locations RESET (fillfactor);
CREATE INDEX IF NOT EXISTS storage_locations_backend_state_idx ON storage_locations (backend_id, state);
