"""Ledger growth: what a ledger of 10k, 100k and 1M real-sized events costs, on SQLite and PostgreSQL.

    python benchmarks/bench_ledger_growth.py [--sizes 10000,100000,1000000] [--backends sqlite,postgres]
        [--postgres URL] [--dir DIR] [--prune-seconds 600] [--claims 300]

For each backend and size: a fresh ledger (made by the package on the path, so with its schema and
pragmas) is filled in bulk (executemany / COPY) with N ``done`` events 30 days old, each row shaped as the
ledger writes a page-pay TRADE_SUCCESS notification (27 fields and an RSA2-sized signature: the raw body,
about 1.4 KB, and its fields as JSON). Then it prints:

- bytes per event: the file (after a checkpoint) or ``pg_total_relation_size`` over N, before and after
  the prune;
- the notify path at that size: ``claim`` + ``finish`` of new events, median and p99 (``--claims`` of them);
- ``prune`` of every event: rows/s over its first and last 10 batches (wall time from one batch's commit to
  the next, pauses included) and over the whole run; flat means a batch costs the same however much of the
  ledger is pruned or left. ``--prune-seconds`` stops a prune that runs longer (the old, quadratic one);
- a live notification during the prune: another connection (as another worker process would) claims and
  finishes a new event every 10 ms while the prune runs; its wait, median / p99 / max, and how many got
  ``LedgerUnavailable`` (a 503 to Alipay, which retries);
- a second prune with nothing left to do: its time.

To compare with an older version, run the script with that version first on the path
(``PYTHONPATH=/path/to/old-tree python benchmarks/bench_ledger_growth.py``). 1M events take about 4 GB of
disk per backend and some minutes each; ``--sizes 10000,100000`` runs in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from _shared import APP_ID, SELLER_ID, print_table, typical_notify_fields

import alipay_middleware
from alipay_middleware import LedgerUnavailable, PaymentEvent
from alipay_middleware.ledger import DONE, Ledger, SQLiteLedger

FAKE_SIGN = "A" * 344  # a 2048-bit RSA signature's length in base64; nothing verifies it here
PG_URL = os.environ.get("ALIPAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
FILL_CHUNK = 5_000
TAIL = 10  # batches averaged at the start and at the end of a prune
#: The ledger table's columns but id (checked against the table), in the order of the values below.
COLUMNS = (
    "dedupe_key", "trade_key", "kind", "status", "out_trade_no", "trade_no", "trade_status", "notify_id",
    "charset", "raw_body", "fields", "reason", "error", "attempts", "received_at", "updated_at",
    "lease_owner", "lease_until",
)
Moment = Callable[[datetime], Any]  # a time as the table stores it


def epoch(moment: datetime) -> float:  # SQLite: epoch seconds
    return moment.timestamp()


def as_is(moment: datetime) -> datetime:  # PostgreSQL: timestamptz
    return moment


def check_columns(found: list[str]) -> None:
    if set(found) - {"id"} != set(COLUMNS):
        raise SystemExit(f"the ledger's table has other columns than this script writes: {found}")


def notification(n: int) -> tuple[dict[str, str], bytes]:
    fields = {**typical_notify_fields(n), "sign": FAKE_SIGN}
    return fields, "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields.items()).encode()


def row(n: int, at: datetime, moment: Moment) -> tuple[Any, ...]:
    """Event ``n`` as the values of COLUMNS, as the ledger stores a done page-pay notification."""
    fields, body = notification(n)
    trade = f"{APP_ID}:{fields['out_trade_no']}"
    return (f"paid:{trade}", trade, "paid", DONE, fields["out_trade_no"], fields["trade_no"], "TRADE_SUCCESS",
            fields["notify_id"], "utf-8", body, json.dumps(fields, ensure_ascii=False, sort_keys=True), None, None,
            1, moment(at), moment(at + timedelta(seconds=1)), None, None)


def event(n: int) -> tuple[PaymentEvent, bytes]:
    fields, body = notification(n)
    trade = f"{APP_ID}:{fields['out_trade_no']}"
    return PaymentEvent(
        kind="paid", key=f"paid:{trade}", trade_key=trade, out_trade_no=fields["out_trade_no"],
        trade_no=fields["trade_no"], trade_status="TRADE_SUCCESS", total_amount=Decimal(fields["total_amount"]),
        refund_fee=None, out_biz_no="", notify_id=fields["notify_id"], gmt_payment=None, gmt_refund=None,
        app_id=APP_ID, seller_id=SELLER_ID, raw=fields), body


def chunks(n: int, moment: Moment) -> Iterator[list[tuple[Any, ...]]]:
    old = datetime.now(timezone.utc) - timedelta(days=30)
    for first in range(0, n, FILL_CHUNK):
        yield [row(i, old + timedelta(milliseconds=i), moment) for i in range(first, min(n, first + FILL_CHUNK))]


# -- the two backends ------------------------------------------------------------------------------------

class Backend:
    name = ""

    def open(self) -> Ledger: ...
    def fill(self, n: int) -> None: ...
    def size(self) -> int: ...
    def drop(self) -> None: ...


class SQLite(Backend):
    name = "SQLite"

    def __init__(self, folder: str, n: int) -> None:
        self.path = Path(folder) / f"growth-{n}.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def open(self) -> Ledger:
        return SQLiteLedger(str(self.path))

    def fill(self, n: int) -> None:
        import sqlite3

        self.open().close()  # the schema (and pragmas) of the version under test
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA synchronous=OFF")
        check_columns([found[1] for found in db.execute("PRAGMA table_info(alipay_events)")])
        insert = f"INSERT INTO alipay_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for rows in chunks(n, epoch):
            db.execute("BEGIN")
            db.executemany(insert, rows)
            db.execute("COMMIT")
        db.close()

    def size(self) -> int:
        import sqlite3

        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return sum(os.path.getsize(f"{self.path}{s}") for s in ("", "-wal") if os.path.exists(f"{self.path}{s}"))

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class Postgres(Backend):
    name = "PostgreSQL"

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.table = f"bench_growth_{n}"
        self.drop()

    def open(self) -> Ledger:
        from alipay_middleware.ledger.postgres import PostgresLedger

        return PostgresLedger(self.url, table=self.table)

    def fill(self, n: int) -> None:
        import psycopg

        self.open().close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            check_columns([found[0] for found in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                (self.table,))])
            for rows in chunks(n, as_is):
                with conn.transaction(), conn.cursor() as cur, \
                        cur.copy(f"COPY {self.table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for values in rows:
                        copy.write_row(values)
            conn.execute(f"VACUUM ANALYZE {self.table}")  # the steady state autovacuum keeps

    def size(self) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            found = conn.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()
        return int(found[0]) if found else 0

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")


# -- measurements ----------------------------------------------------------------------------------------

def quantiles(waits: list[float]) -> str:
    if not waits:
        return "-"
    ordered = sorted(waits)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1e3:.1f} / {p99 * 1e3:.1f} / {ordered[-1] * 1e3:.1f} ms"


def notify_path(ledger: Ledger, first: int, count: int) -> list[float]:
    waits = []
    for n in range(first, first + count):
        payment, body = event(n)
        started = time.perf_counter()
        ledger.claim(payment, body, "utf-8", "bench", 60)
        ledger.finish(payment.key)
        waits.append(time.perf_counter() - started)
    return waits


class _Stop(Exception):
    pass


def timed_prune(ledger: Ledger, before: datetime, cap: float) -> tuple[int | None, list[float], float]:
    """Prune, noting when each batch's write transaction ended (the ledger's ``_tx``, wrapped: works with
    any version). Returns (pruned, or None when stopped after ``cap`` seconds; batch wall times; total)."""
    ends: list[float] = []
    inner = ledger._tx  # type: ignore[attr-defined]
    started = time.perf_counter()

    @contextmanager
    def tx(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with inner(*args, **kwargs) as handle:
            yield handle
        if kwargs.get("write", True):
            ends.append(time.perf_counter())
            if ends[-1] - started > cap:
                raise _Stop

    ledger._tx = tx  # type: ignore[attr-defined]
    try:
        pruned: int | None = ledger.prune(before)
    except _Stop:
        pruned = None
    finally:
        del ledger._tx  # type: ignore[attr-defined]
    total = time.perf_counter() - started
    marks = [started, *ends]
    return pruned, [b - a for a, b in zip(marks, marks[1:], strict=False)], total


def live_claims(ledger: Ledger, first: int, stop: threading.Event, waits: list[float], errors: list[str]) -> None:
    n = first
    try:
        while not stop.is_set():
            payment, body = event(n)
            n += 1
            started = time.perf_counter()
            try:
                ledger.claim(payment, body, "utf-8", "live", 60)
                ledger.finish(payment.key)
                waits.append(time.perf_counter() - started)
            except LedgerUnavailable as exc:
                errors.append(str(exc))
            stop.wait(0.01)
    finally:
        ledger.close()


def measure(backend: Backend, n: int, claims: int, cap: float) -> list[str]:
    started = time.perf_counter()
    backend.fill(n)
    filled = time.perf_counter() - started
    before_bytes = backend.size() / n
    ledger = backend.open()
    notify_path(ledger, 10_000_000, 20)  # warm up
    notify = notify_path(ledger, 10_000_100, claims)
    cutoff = datetime.now(timezone.utc) - timedelta(days=2)
    stop = threading.Event()
    waits: list[float] = []
    errors: list[str] = []
    live = backend.open()  # opened before the prune starts (the old prune kept even this waiting)
    thread = threading.Thread(target=live_claims, args=(live, 20_000_000, stop, waits, errors))
    thread.start()
    try:
        pruned, batches, total = timed_prune(ledger, cutoff, cap)
    finally:
        stop.set()
        thread.join()
    per_batch = 500  # both versions' batch size
    first = per_batch * min(TAIL, len(batches)) / sum(batches[:TAIL]) if batches else 0.0
    last = per_batch * min(TAIL, len(batches[:-1])) / sum(batches[-TAIL - 1:-1]) if len(batches) > 1 else first
    done = pruned if pruned is not None else per_batch * len(batches)
    again = "-"
    if pruned is not None:
        started = time.perf_counter()
        ledger.prune(cutoff)
        again = f"{time.perf_counter() - started:.2f} s"
    ledger.close()
    after_bytes = backend.size() / n
    print(f"  {backend.name} {n:,}: filled in {filled:.0f} s, pruned {done:,} in {total:.1f} s"
          f"{'' if pruned is not None else f' (stopped after {cap:.0f} s)'}", flush=True)
    return [backend.name, f"{n:,}", f"{before_bytes:,.0f}", f"{after_bytes:,.0f}", quantiles(notify),
            f"{first:,.0f}", f"{last:,.0f}", f"{done / total:,.0f}" + ("" if pruned is not None else " (stopped)"),
            quantiles(waits), str(len(errors)), again]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres", default=PG_URL, help="a database where tables bench_growth_* may be made")
    parser.add_argument("--dir", help="where the SQLite files go (default: a temporary directory)")
    parser.add_argument("--prune-seconds", type=float, default=600.0)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"package: {Path(alipay_middleware.__file__).parent}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for name in args.backends.split(","):
            for n in sizes:
                backend: Backend = SQLite(folder, n) if name == "sqlite" else Postgres(args.postgres, n)
                try:
                    results.append(measure(backend, n, args.claims, args.prune_seconds))
                finally:
                    backend.drop()
    print_table("Ledger growth (waits: median / p99 / max)",
                ["backend", "events", "bytes/event", "after prune", "notify path", "prune rows/s first",
                 "last", "whole run", "live claim during prune", "503s", "prune again"], results)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
