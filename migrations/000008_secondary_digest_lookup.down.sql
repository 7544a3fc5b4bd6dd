DROP INDEX IF EXISTS storage_locations_blake3_idx;
DROP INDEX IF EXISTS storage_locations_sha256_idx;
