-- The read API serves an object by either of its addresses: GET
-- /v1/objects/sha256:… of an object stored under its blake3 address (the
-- default primary), and the reverse. A location is keyed by its primary
-- address (content_address); these indexes find it by the other digest.
-- Each is partial: a location whose primary is that algorithm is already
-- found through content_address, so the blake3 index stays nearly empty
-- while blake3 is the primary.
--
-- The names are the ones CREATE TABLE … (LIKE … INCLUDING ALL) gives, so
-- they survive the projector's rebuild-and-swap (projector/rebuild.go).
--
-- Plain CREATE INDEX (golang-migrate runs a file as one multi-statement
-- transaction, where CONCURRENTLY is not allowed): on a large
-- storage_locations it blocks the projector's writes while it builds.
CREATE INDEX IF NOT EXISTS storage_locations_digest_sha256_idx
    ON storage_locations (digest_sha256) WHERE digest_algorithm = 'blake3';
CREATE INDEX IF NOT EXISTS storage_locations_digest_blake3_idx
    ON storage_locations (digest_blake3) WHERE digest_algorithm = 'sha256';
