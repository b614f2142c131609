"""``Ledger.prune`` on a large ledger (issue 13, item 2.2): it walks the done events in pages from a cursor,
so that a batch costs the same however many events were pruned or remain; a live notification is not kept
waiting behind it; and a new SQLite ledger gives the pages prune frees back to the file system.

Structural tests only: statements examined per batch (SQLite's VM steps, PostgreSQL's EXPLAIN ANALYZE row
counts), locks, pragmas and the order of events between threads; no timing. The figures are in
``benchmarks/bench_ledger_growth.py``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware.ledger import (
    ALREADY_DONE,
    CLAIMED,
    DONE,
    FAILED,
    RECEIVED,
    REJECTED,
    Ledger,
    StoredEvent,
    open_ledger,
)
from alipay_middleware.ledger.base import PRUNE_KEEP
from alipay_middleware.ledger.sqlite import SQLiteLedger
from conftest import POSTGRES
from ledger_events import event

APP_ID = "2021000000000001"
BODY = b"x" * 3000  # about a real notification's raw body, so that a row spills onto overflow pages


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger(new_ledger: Callable[[], Any]) -> Iterator[Ledger]:
    made = open_ledger(new_ledger())
    yield made
    made.close()


def days_ago(days: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)


def stored(n: int, status: str = DONE, age_days: float = 30, body: bytes = BODY) -> StoredEvent:
    out_trade_no = f"P{n}"
    leased = status == RECEIVED
    return StoredEvent(
        key=f"paid:{APP_ID}:{out_trade_no}", trade_key=f"{APP_ID}:{out_trade_no}", kind="paid", status=status,
        out_trade_no=out_trade_no, trade_no=f"2024{n}", trade_status="TRADE_SUCCESS", notify_id=f"n-{n}",
        charset="utf-8", raw_body=body, fields={"out_trade_no": out_trade_no, "buyer_id": "2088102000000009"},
        reason="unknown_order" if status == REJECTED else None, error="boom" if status == FAILED else None,
        attempts=1, received_at=days_ago(age_days), updated_at=days_ago(age_days),
        lease_owner="w" if leased else None, lease_until=days_ago(-1) if leased else None)


def fill(ledger: Ledger, first: int, count: int, **kwargs: Any) -> None:
    assert ledger.import_events(stored(n, **kwargs) for n in range(first, first + count)) == (count, 0)


# -- what is pruned -----------------------------------------------------------------------------------------

def test_prune_pages_through_done_events_only_and_reports_progress(ledger: Ledger):
    """Pages of 4 across events of every status interleaved: only old done events lose their bodies."""
    kinds = [(DONE, 30), (DONE, 1), (RECEIVED, 30), (FAILED, 30), (REJECTED, 30), (DONE, 30), (DONE, 30)]
    events = [stored(n, status, age) for n in range(70) for status, age in [kinds[n % len(kinds)]]]
    assert ledger.import_events(events) == (70, 0)
    old_done = [e.key for e in events if e.status == DONE and e.updated_at < days_ago(2)]
    seen: list[int] = []
    assert ledger.prune(days_ago(2), dry_run=True) == len(old_done)
    assert ledger.prune(days_ago(2), batch=4, progress=seen.append) == len(old_done) == 30
    assert seen == sorted(seen) and seen[-1] == 30 and len(seen) >= 30 // 4
    for before in events:
        after = ledger.get(before.key)
        assert after is not None and after.status == before.status and after.attempts == before.attempts
        if before.key in old_done:
            assert after.raw_body is None and after.fields == {"out_trade_no": before.out_trade_no}
        else:
            assert after.raw_body == BODY and after.fields == before.fields, before.status
    assert ledger.prune(days_ago(2), batch=4) == 0 and ledger.prune(days_ago(2), dry_run=True) == 0
    with pytest.raises(ValueError, match="batch"):
        ledger.prune(days_ago(2), batch=0)


# -- a batch costs the same at any size -----------------------------------------------------------------

@contextmanager
def work_per_transaction(ledger: Ledger) -> Iterator[list[int]]:
    """The work of each transaction the ledger runs in this thread: SQLite's virtual-machine steps, which
    grow with the rows a statement examines (and sorts). The ledger's ``_tx`` is wrapped to read them."""
    assert isinstance(ledger, SQLiteLedger)
    steps = [0]
    work: list[int] = []

    def step() -> int:
        steps[0] += 1
        return 0

    db = ledger._connection()
    db.set_progress_handler(step, 1)
    inner = ledger._tx

    @contextmanager
    def tx(*args: Any, **kwargs: Any) -> Iterator[Any]:
        steps[0] = 0
        with inner(*args, **kwargs) as handle:
            yield handle
        work.append(steps[0])

    ledger._tx = tx  # type: ignore[method-assign]
    try:
        yield work
    finally:
        del ledger._tx
        db.set_progress_handler(None, 1)


@pytest.mark.parametrize("ledger_backend", ["sqlite"])
def test_a_sqlite_prune_batch_costs_the_same_in_a_small_and_a_large_ledger(ledger: Ledger):
    """The most work any one transaction of a prune does, with 10 events to prune in a ledger of 20 done
    events and again in one of 3,000 (of which 2,990 pruned already): about the same. The old prune's
    batch sorted every old done event, pruned ones included, so its cost grew with the ledger."""
    fill(ledger, 0, 10)
    with work_per_transaction(ledger) as small:
        assert ledger.prune(days_ago(2), batch=10) == 10
    fill(ledger, 10, 2980)
    assert ledger.prune(days_ago(2)) == 2980
    fill(ledger, 5000, 10)  # 10 more to prune, behind 2,990 pruned ones
    with work_per_transaction(ledger) as large:
        assert ledger.prune(days_ago(2), batch=10) == 10
    assert len(large) > 290  # one read per page of 10 over 3,000 done events, and one write
    assert max(large) < 2 * max(small), (max(small), max(large))


def rows_examined(plan: dict[str, Any]) -> int:
    """Rows PostgreSQL's scans of the table read: returned plus removed by their filters, every node."""
    own = 0
    if plan.get("Node Type", "").endswith("Scan") and "Relation Name" in plan:
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get("Actual Loops", 1)
    return own + sum(rows_examined(child) for child in plan.get("Plans", []))


@pytest.mark.parametrize("ledger_backend", ["postgres"])
def test_a_postgres_prune_batch_reads_one_page_past_any_number_of_pruned_events(ledger: Ledger):
    """EXPLAIN ANALYZE of the prune's batch statement (rolled back) at the end of a ledger of 3,000 done
    events, 2,990 of them pruned: its scans read about one page of rows, not every pruned event."""
    import psycopg

    fill(ledger, 0, 2990)
    assert ledger.prune(days_ago(2)) == 2990
    fill(ledger, 5000, 10)
    q = ledger._q  # type: ignore[attr-defined]
    with psycopg.connect(POSTGRES) as conn:
        conn.execute("ANALYZE " + q.qualified)
        (last_pruned,) = conn.execute(f"SELECT max(id) FROM {q.qualified} WHERE raw_body IS NULL").fetchone()
        for after in (-(2**63), last_pruned - 10):  # the first page; the page before the 10 to prune
            statement = b"EXPLAIN (ANALYZE, FORMAT JSON) " + q.prune.as_bytes(conn)
            (plan,) = conn.execute(statement, (DONE, after, 10, DONE, after, days_ago(2), list(PRUNE_KEEP))).fetchone()
            conn.rollback()
            examined = rows_examined(plan[0]["Plan"])
            assert examined <= 3 * 10, (after, examined, json.dumps(plan, indent=1)[:3000])
    assert ledger.prune(days_ago(2), batch=10) == 10


# -- a live notification during a prune -------------------------------------------------------------------

@pytest.mark.parametrize("ledger_backend", ["sqlite"])
def test_sqlite_a_live_claim_gets_in_between_two_prune_batches(ledger: Ledger):
    """Another worker's claim (its own connection) that starts while a prune batch runs is written before
    the prune has gone much further: the prune pauses after each batch for a writer that queued behind it.
    Without the pause the prune took the lock back at once, and the claim waited for the whole prune."""
    assert isinstance(ledger, SQLiteLedger)
    batches = 60
    fill(ledger, 0, batches * 20)
    worker = SQLiteLedger(ledger.path, busy_timeout=60)
    progress: list[int] = []
    claimed: list[tuple[str, int]] = []
    started = threading.Event()

    def claim() -> None:
        started.set()
        state = worker.claim(event("LIVE"), b"live", "utf-8", "w2", 60).state
        claimed.append((state, len(progress)))

    thread = threading.Thread(target=claim)

    def during_a_batch() -> int:  # SQLite calls it while the prune's statements run
        if len(progress) == 2 and not started.is_set():
            thread.start()
            started.wait()
        return 0

    ledger._connection().set_progress_handler(during_a_batch, 100)
    try:
        assert ledger.prune(days_ago(2), batch=20, progress=progress.append) == batches * 20
        thread.join()
    finally:
        ledger._connection().set_progress_handler(None, 100)
        worker.close()
    (state, batches_before), = claimed
    assert state == CLAIMED
    assert batches_before <= 2 + batches // 4, f"the claim waited for {batches_before - 2} of {batches} batches"


@pytest.mark.parametrize("ledger_backend", ["postgres"])
def test_postgres_prune_skips_rows_another_transaction_holds_and_claims_never_wait_for_it(
        new_ledger: Callable[[], Any]):
    """Rows of old done events locked by another transaction (a prune batch in flight, a hook's own
    locking): a resend of one is answered 'done' and a new event of its trade is claimed, without waiting;
    a prune skips the locked rows instead of waiting for them (the old one waited until lock_timeout) and
    a later prune takes them."""
    import psycopg

    from alipay_middleware.ledger.postgres import PostgresLedger

    ledger = new_ledger()
    assert isinstance(ledger, PostgresLedger)
    ledger.close()
    ledger = PostgresLedger(POSTGRES, table=ledger.table, lock_timeout=1.0)
    try:
        fill(ledger, 0, 20)
        with psycopg.connect(POSTGRES) as holder:
            holder.execute(f"SELECT 1 FROM {ledger._q.qualified} WHERE out_trade_no IN ('P3', 'P4') FOR UPDATE")
            resend = event("P3")
            assert ledger.claim(resend, b"again", "utf-8", "w", 60).state == ALREADY_DONE
            assert ledger.claim(event("P3", "refunded", suffix=":R1"), b"r", "utf-8", "w", 60).state == CLAIMED
            assert ledger.prune(days_ago(2), batch=6) == 18
            holder.rollback()
        assert ledger.prune(days_ago(2), batch=6) == 2
        assert all(e.raw_body is None for e in ledger.iter_events(status=DONE))
    finally:
        ledger.close()


# -- disk -------------------------------------------------------------------------------------------------

def pragma(path: str, name: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def test_a_new_sqlite_ledger_gives_the_pages_prune_frees_back_to_the_file_system(tmp_path: Path):
    new = str(tmp_path / "new.sqlite3")
    ledger = SQLiteLedger(new)
    assert pragma(new, "auto_vacuum") == 2  # INCREMENTAL
    fill(ledger, 0, 400)
    with closing(sqlite3.connect(new)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = pragma(new, "page_count")
    assert ledger.prune(days_ago(2), batch=50) == 400
    ledger.close()
    with closing(sqlite3.connect(new)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert pragma(new, "freelist_count") == 0
    assert pragma(new, "page_count") < pages / 2, (pages, pragma(new, "page_count"))


def test_an_existing_sqlite_ledger_keeps_its_vacuum_mode_and_prunes(tmp_path: Path):
    path = str(tmp_path / "before.sqlite3")
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("CREATE TABLE other (x)")  # a file that already holds a table
    (tmp_path / "before.sqlite3").chmod(0o600)
    ledger = SQLiteLedger(path)
    assert pragma(path, "auto_vacuum") == 0
    fill(ledger, 0, 30)
    assert ledger.prune(days_ago(2), batch=7) == 30
    ledger.close()
    assert pragma(path, "auto_vacuum") == 0 and pragma(path, "freelist_count") > 0  # VACUUM's job (README)


def test_prune_keeps_every_claim_semantic_for_resends(ledger: Ledger):
    fill(ledger, 0, 12)
    assert ledger.prune(days_ago(2), batch=5) == 12
    assert ledger.claim(event("P3"), b"again", "utf-8", "w", 60).state == ALREADY_DONE
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.prune(datetime(2024, 1, 1), batch=5)
