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
-- Cache tags waiting for delivery, written in the same transaction as the summary change
-- that caused them (an outbox): a crash can neither lose them nor send tags of a change
-- that rolled back. Rows are written only under the apply lock, so ids become visible in
-- increasing order and a per-endpoint cursor never skips one. One row per apply
-- transaction (or release of held tags) holds its distinct tags.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id          bigserial PRIMARY KEY,
    tags        text[] NOT NULL,
    -- cardinality(tags): lets a deliverer fill a request without reading the arrays
    tag_count   integer NOT NULL,
    -- commit time of the source change, for the commit-to-revalidation latency metric
    commit_time timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);

-- How far each endpoint has been served. Each endpoint advances on its own, so one
-- Next.js instance being down neither blocks nor repeats the others. `endpoint` is the
-- redacted URL (userinfo and query values replaced by ***), never the URL itself: it may
-- hold credentials. Rows stored by earlier versions under the full URL are renamed in
-- place when the worker starts.
CREATE TABLE IF NOT EXISTS {schema}.outbox_cursor (
    endpoint     text PRIMARY KEY,
    delivered_id bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Tags parked after an endpoint kept failing for revalidate.give_up_after_secs: kept,
-- never dropped silently; `cdc-worker revalidate --failed` sends them again and deletes
-- the rows it delivered. `endpoint` is the redacted URL, as in outbox_cursor.
CREATE TABLE IF NOT EXISTS {schema}.outbox_failed (
    id        bigserial PRIMARY KEY,
    endpoint  text NOT NULL,
    tags      text[] NOT NULL,
    status    int,   -- the last HTTP status; null when there was no answer
    response  text,  -- the last error or response body (no URL in it)
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

-- ==== upgrade ====
-- `cdc-worker run` runs everything from the line above to the end at its start when a part
-- of it is missing (slot::ensure_state): what this and earlier versions added to a state
-- schema that an older setup created. Keep it idempotent, and on the state schema's own
-- tables (the worker's role owns them).

-- checkpoint.recompute_reason: set (durably, before the slot is touched) when every
-- product must be recomputed before streaming: the slot was missing, lost or ahead, or the
-- checkpoint ahead of the server. Cleared in the transaction that stores the checkpoint
-- after the last recomputed page, so a crash in between resumes the recompute at the next
-- start.
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS recompute_reason text;

-- checkpoint.commit_time: the source commit time of the newest transaction applied up to
-- the checkpoint (heartbeats included, so it stays recent while the worker runs), for
-- `cdc-worker status` ("last applied commit"); a recompute of every product sets it to
-- the time of its reads.
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS commit_time timestamptz;
-- What the summary rows were computed with and where, written by the transaction that
-- finishes a recompute of every product (with the checkpoint, clearing the mark):
-- `definition` (src/shop/definition.rs: the normalized query's hash, the currency, the
-- summary table and its columns, the id types) and the server (pg_control_system()'s
-- system identifier, the timeline of its WAL). A start that finds another definition
-- recomputes every product (definition_changed); another server (a failover or restore
-- that may have lost writes whose pages are cached) recomputes and sends every product's
-- tags (server_changed). Null in a schema set up before this version: see slot::observe.
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS definition jsonb;
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS system_identifier bigint;
ALTER TABLE {schema}.checkpoint ADD COLUMN IF NOT EXISTS timeline integer;

-- Hot tags (revalidate.min_interval_ms): one row per tag of a throttled template that was
-- revalidated lately or waits to be. Apply writes it in the transaction of the summary
-- change that caused the tag: a tag whose last release is at least its interval ago goes
-- into the outbox at once (released_at = now()); otherwise the row becomes pending (due_at
-- = released_at + interval) and every repeat until then coalesces into it (nothing to
-- write). The worker moves a pending row into the outbox at due_at and records
-- released_at. Written only under the apply lock, like the outbox, so a repeat either
-- joins a pending row that is released after its commit, or finds none and makes one.
CREATE TABLE IF NOT EXISTS {schema}.outbox_held (
    tag             text PRIMARY KEY,
    -- when the pending tag goes into the outbox; null: nothing pending
    due_at          timestamptz,
    -- when the tag last went into the outbox; null: not yet
    released_at     timestamptz,
    -- the template's interval when the row was last made pending
    min_interval_ms bigint NOT NULL,
    -- commit time of the oldest source change the pending tag covers (latency metric)
    commit_time     timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_held_due ON {schema}.outbox_held (due_at)
    WHERE due_at IS NOT NULL;

-- outbox.tags and tag_count (this version): one row per apply transaction with its
-- distinct tags, instead of one row per tag (`tag`), which cost a heap row, an index
-- entry and a delete per tag: as much WAL again as the shop's own updates with endpoints
-- configured (bench/RESULTS.md, issue 21). Rows an earlier version left undelivered
-- become one-tag rows under their ids, so every cursor keeps its place.
ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS tags text[];
ALTER TABLE {schema}.outbox ADD COLUMN IF NOT EXISTS tag_count integer;
DO $$
BEGIN
    -- Fails with undefined_column when there is no per-tag column (a table this version
    -- created, or one converted already): nothing to convert then.
    PERFORM tag FROM {schema}.outbox LIMIT 0;
    UPDATE {schema}.outbox SET tags = ARRAY[tag], tag_count = 1 WHERE tags IS NULL;
    ALTER TABLE {schema}.outbox DROP COLUMN tag;
EXCEPTION WHEN undefined_column THEN
    NULL;
END $$;
ALTER TABLE {schema}.outbox ALTER COLUMN tags SET NOT NULL;
ALTER TABLE {schema}.outbox ALTER COLUMN tag_count SET NOT NULL;
