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
-- Set (durably, before the slot is touched) when every product must be recomputed before
-- streaming: the slot was missing, lost or ahead, or the checkpoint ahead of the server.
-- Cleared in the transaction that stores the checkpoint after the last recomputed page, so
-- a crash in between resumes the recompute at the next start.
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS recompute_reason text;

-- Cache tags waiting for delivery, written in the same transaction as the summary change
-- that caused them (an outbox): a crash can neither lose them nor send tags of a change
-- that rolled back. Rows are written only under the apply lock, so ids become visible in
-- increasing order and a per-endpoint cursor never skips one.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id          bigserial PRIMARY KEY,
    tag         text NOT NULL,
    -- commit time of the source change, for the commit-to-revalidation latency metric
    commit_time timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);

-- How far each endpoint has been served. Each endpoint advances on its own, so one
-- Next.js instance being down neither blocks nor repeats the others.
CREATE TABLE IF NOT EXISTS {schema}.outbox_cursor (
    endpoint     text PRIMARY KEY,
    delivered_id bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Tags an endpoint refused for good (a 4xx other than 429): kept for inspection, never
-- dropped silently.
CREATE TABLE IF NOT EXISTS {schema}.outbox_failed (
    id        bigserial PRIMARY KEY,
    endpoint  text NOT NULL,
    tags      text[] NOT NULL,
    status    int,
    response  text,
    failed_at timestamptz NOT NULL DEFAULT now()
);

-- One row per `cdc-worker reconcile` run, so the discrepancy count is visible as a trend
-- (`cdc-worker reconcile --history`).
CREATE TABLE IF NOT EXISTS {schema}.reconcile_history (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    checked       bigint NOT NULL,
    discrepancies bigint NOT NULL,
    missing       bigint NOT NULL,
    orphaned      bigint NOT NULL,
    different     bigint NOT NULL,
    -- column name -> products on which it differed
    fields        jsonb NOT NULL,
    -- discrepancies repaired with --fix; null without --fix
    fixed         bigint,
    -- --store, or null for all stores
    store         text,
    -- false when the daemon did not pass a WAL fence in time
    settled       boolean NOT NULL DEFAULT true
);
