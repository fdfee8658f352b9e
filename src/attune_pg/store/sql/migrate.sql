-- name: migration_table_exists
SELECT to_regclass('attune.schema_migration') IS NOT NULL

-- name: migration_list
-- The versions already applied.
SELECT version FROM attune.schema_migration

-- name: migration_lock
-- Serialises concurrent `attune-pg init`s (and workers that migrate) for this transaction.
SELECT pg_advisory_xact_lock(%(lock)s)

-- name: migration_table_create
CREATE TABLE IF NOT EXISTS attune.schema_migration (
    version int PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: migration_record
INSERT INTO attune.schema_migration (version, name) VALUES (%(version)s, %(name)s)

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: schema_create
CREATE SCHEMA IF NOT EXISTS attune
