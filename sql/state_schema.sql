-- The worker's own state. Lives in its own schema (default cdc_worker, `schema` in the
-- config; the worker substitutes the quoted name for {schema}), never among the app's tables.

CREATE SCHEMA IF NOT EXISTS {schema};

-- The LSN up to which every change has been applied to ProductSummary. Written in the same
-- transaction as the summary rows, so after a crash the worker resumes exactly here, and
-- the slot is never told more than this.
CREATE TABLE IF NOT EXISTS {schema}.checkpoint (
    slot_name  text PRIMARY KEY,
    lsn        pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
