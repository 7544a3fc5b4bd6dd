-- Drops everything 000001_init.up.sql created. This destroys the event log.
DROP TABLE IF EXISTS projector_checkpoints;
DROP TABLE IF EXISTS retention_state;
DROP TABLE IF EXISTS storage_locations;
DROP TABLE IF EXISTS artifact_files;
DROP TABLE IF EXISTS artifact_packages;
DROP TABLE IF EXISTS metadata_schemas;
DROP TABLE IF EXISTS retention_classes;
DROP TABLE IF EXISTS commands;
DROP TABLE IF EXISTS event_log_head;
DROP TABLE IF EXISTS events;
DROP FUNCTION IF EXISTS artifactstore_refuse_change();
