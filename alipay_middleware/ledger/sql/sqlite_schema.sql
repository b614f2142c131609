-- The SQLite ledger's schema (alipay_middleware.ledger.sqlite), run in this order when a ledger opens its
-- file; every statement is idempotent. {table} is the table's name, a plain identifier that the ledger
-- has checked. Times are epoch seconds (REAL). See alipay_middleware/ledger/statements.py for the format.

-- name: create_table
CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    trade_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    trade_no TEXT NOT NULL,
    trade_status TEXT NOT NULL,
    notify_id TEXT NOT NULL,
    charset TEXT NOT NULL,
    raw_body BLOB,
    fields TEXT NOT NULL,
    reason TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- name: create_trade_index
CREATE INDEX IF NOT EXISTS {table}_trade ON {table} (trade_key, status);

-- name: create_status_index
CREATE INDEX IF NOT EXISTS {table}_status ON {table} (status, updated_at);

-- name: create_status_order_index
-- events(status=...) and iter_events(status=...), newest or oldest first, without sorting every row of
-- that status. Ledgers made before it get it the next time they open (IF NOT EXISTS).
CREATE INDEX IF NOT EXISTS {table}_status_id ON {table} (status, id);

-- name: create_order_index
CREATE INDEX IF NOT EXISTS {table}_order ON {table} (out_trade_no);
