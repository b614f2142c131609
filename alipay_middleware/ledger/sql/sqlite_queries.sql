-- The SQLite ledger's statements (alipay_middleware.ledger.sqlite), filled in once per ledger with
-- str.format: {table} is the table's name (a plain identifier the ledger has checked), {columns} every
-- column but id in the order of ledger/rows.py's COLUMNS, {keep} one ? for each of base.PRUNE_KEEP.
-- Values are ? parameters; a new event's first eleven are rows.event_row(). Times are epoch seconds.
-- See alipay_middleware/ledger/statements.py for the format.

-- name: claim_read
-- The event's own row: done, or leased until when.
SELECT status, lease_until FROM {table} WHERE dedupe_key = ?;

-- name: trade_lease
-- The latest live lease held by another event of the same trade.
SELECT MAX(lease_until) FROM {table}
WHERE trade_key = ? AND status = ? AND lease_until > ? AND dedupe_key <> ?;

-- name: insert_claimed
INSERT INTO {table} ({columns})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?, ?);

-- name: retake
UPDATE {table} SET status = ?, lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?
WHERE dedupe_key = ? RETURNING attempts;

-- name: finish
UPDATE {table} SET status = ?, lease_owner = NULL, lease_until = NULL, error = NULL, reason = ?, updated_at = ?
WHERE dedupe_key = ?;

-- name: release
-- fail() and reject(): only while the caller still holds the lease.
UPDATE {table} SET status = ?, reason = ?, error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?
WHERE dedupe_key = ? AND status = ? AND lease_owner = ?;

-- name: lease_of
SELECT status, lease_owner FROM {table} WHERE dedupe_key = ?;

-- name: finish_owned
UPDATE {table} SET status = ?, lease_owner = NULL, lease_until = NULL, error = NULL, reason = ?, updated_at = ?
WHERE dedupe_key = ? AND status = ? AND lease_owner = ?;

-- name: insert_foreign
INSERT INTO {table} ({columns})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, ?, ?, NULL, NULL)
ON CONFLICT (dedupe_key) DO UPDATE SET attempts = attempts + 1, updated_at = excluded.updated_at;

-- name: status
SELECT status FROM {table} WHERE dedupe_key = ?;

-- name: select
-- events() adds its WHERE, ORDER BY and LIMIT.
SELECT {columns} FROM {table};

-- name: select_page
-- iter_events() adds its WHERE (with id < ? or id > ?), ORDER BY and LIMIT.
SELECT id, {columns} FROM {table};

-- name: select_page_bare
-- The same without the raw body and the fields ({bare}: NULL and '{{}}' in their places).
SELECT id, {bare} FROM {table};

-- name: get
SELECT {columns} FROM {table} WHERE dedupe_key = ?;

-- name: count_prunable
SELECT count(*) FROM {table} WHERE status = ? AND updated_at < ? AND raw_body IS NOT NULL;

-- name: prune
-- A batch of done events loses its raw body and every field but those named (base.PRUNE_KEEP).
UPDATE {table} SET raw_body = NULL,
    fields = (SELECT json_group_object(key, value) FROM json_each({table}.fields) WHERE key IN ({keep}))
WHERE id IN (SELECT id FROM {table} WHERE status = ? AND updated_at < ? AND raw_body IS NOT NULL
             ORDER BY id LIMIT ?);

-- name: export
SELECT id, {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT ?;

-- name: insert_stored
INSERT INTO {table} ({columns})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dedupe_key) DO NOTHING;
