-- The PostgreSQL ledger's statements (alipay_middleware.ledger.postgres), composed once per ledger with
-- psycopg.sql: {table} is the quoted table ("public"."alipay_events"), {function} its claim function,
-- {timeout} the lock_timeout literal, {columns} every column but id as quoted identifiers in the order of
-- ledger/rows.py's COLUMNS, and {selected} the same list as read back, with fields as text (parsed by
-- the ledger, so that a row does not depend on the JSON loaders a pool's connections register). Values
-- are %s parameters; a new event's first eleven are rows.event_row(), fields cast to jsonb.
-- See alipay_middleware/ledger/statements.py for the format.

-- name: set_lock_timeout
-- A pool's connection: for this transaction only, leaving no session state behind.
SET LOCAL lock_timeout = {timeout};

-- name: set_session_lock_timeout
-- A connection of the ledger's own: once, for the whole session.
SET lock_timeout = {timeout};

-- name: lock_trade
SELECT pg_advisory_xact_lock(%s);

-- name: claim
SELECT state, attempt, retry_after
FROM {function}(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s);

-- name: finish
UPDATE {table} SET status = %s, lease_owner = NULL, lease_until = NULL, error = NULL, reason = %s,
    updated_at = statement_timestamp()
WHERE dedupe_key = %s;

-- name: lock_own
-- The row of an event still received under this owner's lease, locked for a transactional hook.
SELECT 1 FROM {table} WHERE dedupe_key = %s AND status = %s AND lease_owner = %s FOR UPDATE;

-- name: finish_owned
UPDATE {table} SET status = %s, lease_owner = NULL, lease_until = NULL, error = NULL, reason = %s,
    updated_at = statement_timestamp()
WHERE dedupe_key = %s AND status = %s AND lease_owner = %s;

-- name: release
-- fail() and reject(): only while the caller still holds the lease.
UPDATE {table} SET status = %s, reason = %s, error = %s, lease_owner = NULL, lease_until = NULL,
    updated_at = statement_timestamp()
WHERE dedupe_key = %s AND status = %s AND lease_owner = %s;

-- name: insert_foreign
INSERT INTO {table} AS e ({columns})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, NULL, 1, statement_timestamp(), statement_timestamp(),
    NULL, NULL)
ON CONFLICT (dedupe_key) DO UPDATE SET attempts = e.attempts + 1, updated_at = excluded.updated_at;

-- name: status
SELECT status FROM {table} WHERE dedupe_key = %s;

-- name: select
-- events() adds its WHERE, ORDER BY and LIMIT.
SELECT {selected} FROM {table};

-- name: select_page
-- iter_events() adds its WHERE (with id < %s or id > %s), ORDER BY and LIMIT.
SELECT id, {selected} FROM {table};

-- name: select_page_bare
-- The same without the raw body and the fields ({bare}: NULL and '{{}}' in their places).
SELECT id, {bare} FROM {table};

-- name: get
SELECT {selected} FROM {table} WHERE dedupe_key = %s;

-- name: probe
-- At start-up: the table has the columns this version reads.
SELECT {selected} FROM {table} WHERE false;

-- name: count_prunable
SELECT count(*) FROM {table} WHERE status = %s AND updated_at < %s AND raw_body IS NOT NULL;

-- name: prune
-- One page of prune's walk: up to %s done events after the cursor id, in id order on the (status, id)
-- index, so that a page costs the same however many events were pruned before it or remain after it.
-- Those last updated before the cutoff lose their raw body and every field but those named
-- (base.PRUNE_KEEP); a row another transaction has locked is skipped, never waited for (the next prune
-- takes it). Answers how many events the page held, its last id, and how many were pruned.
WITH page AS (
    SELECT id FROM {table} WHERE status = %s AND id > %s ORDER BY id LIMIT %s
), ready AS (
    SELECT e.id FROM {table} AS e
    WHERE e.status = %s AND e.id > %s AND e.id <= (SELECT max(page.id) FROM page) AND e.updated_at < %s
        AND e.raw_body IS NOT NULL
    FOR UPDATE SKIP LOCKED
), pruned AS (
    UPDATE {table} AS e SET raw_body = NULL,
        fields = COALESCE((SELECT jsonb_object_agg(f.key, f.value) FROM jsonb_each(e.fields) AS f
                           WHERE f.key = ANY(%s)), '{{}}'::jsonb)
    FROM ready WHERE e.id = ready.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page), (SELECT count(*) FROM pruned);

-- name: export
SELECT id, {selected} FROM {table} WHERE id > %s ORDER BY id LIMIT %s;

-- name: insert_stored
INSERT INTO {table} ({columns})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (dedupe_key) DO NOTHING RETURNING 1;

-- name: schema_complete
-- How many of the table and its indexes (names), and of its claim function, exist.
SELECT
    (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %s AND c.relname = ANY(%s)),
    (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = %s AND p.proname = %s);

-- name: schema_exists
SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s;

-- name: privileges
-- One privilege per call: given a list, has_table_privilege answers whether *any* is held.
SELECT has_table_privilege(%(t)s, 'SELECT') AND has_table_privilege(%(t)s, 'INSERT')
    AND has_table_privilege(%(t)s, 'UPDATE') AND has_function_privilege(%(f)s, 'EXECUTE');
