DROP TABLE IF EXISTS gc_objects;
DROP INDEX IF EXISTS ingest_files_content_address_idx;
DROP INDEX IF EXISTS ingest_packages_expiry_idx;
ALTER TABLE ingest_packages
    DROP CONSTRAINT IF EXISTS ingest_packages_hold_reason_check,
    DROP COLUMN IF EXISTS expired_at,
    DROP COLUMN IF EXISTS legal_hold_reason,
    DROP COLUMN IF EXISTS legal_hold;
