DROP TABLE IF EXISTS ingest_files;
DROP TABLE IF EXISTS ingest_packages;
