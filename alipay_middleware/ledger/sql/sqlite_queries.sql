-- The SQLite ledger's statements (alipay_middleware.ledger.sqlite), filled in once per ledger with
-- str.format: {table} is the table's name (a plain identifier the ledger has checked), {columns} every
-- column but id in the order of ledger/rows.py's COLUMNS, {pruned} the same as a pruned row holds them
-- (raw_body NULL, fields reduced to one ? parameter for each of base.PRUNE_KEEP).
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

-- name: prune_page
-- The next page of prune's walk: up to ? done events after the cursor id, in id order on the (status, id)
-- index, so that a page costs the same however many events were pruned before it or remain after it.
-- Answers how many it holds, its last id, and how many of them are old enough and still have a body.
SELECT count(*), max(id), coalesce(sum(updated_at < ? AND raw_body IS NOT NULL), 0)
FROM (SELECT id, updated_at, raw_body FROM {table} WHERE status = ? AND id > ? ORDER BY id LIMIT ?);

-- name: prune_rows
-- One page (status, id above the cursor and up to its last id): its done events last updated before the
-- cutoff, as they are once pruned ({pruned}: no raw body, only the fields named in base.PRUNE_KEEP).
SELECT id, {pruned} FROM {table}
WHERE status = ? AND id > ? AND id <= ? AND updated_at < ? AND raw_body IS NOT NULL;

-- name: prune_delete
-- The same rows, deleted to be written back by prune_insert in the same transaction: SQLite merges the
-- pages a delete empties, where an UPDATE that shrinks a row leaves its page as full as it was on disk.
DELETE FROM {table} WHERE status = ? AND id > ? AND id <= ? AND updated_at < ? AND raw_body IS NOT NULL;

-- name: prune_insert
INSERT INTO {table} (id, {columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: export
SELECT id, {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT ?;

-- name: insert_stored
INSERT INTO {table} ({columns})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dedupe_key) DO NOTHING;
