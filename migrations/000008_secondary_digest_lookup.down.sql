DROP INDEX IF EXISTS storage_locations_digest_blake3_idx;
DROP INDEX IF EXISTS storage_locations_digest_sha256_idx;
