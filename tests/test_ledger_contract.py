"""The ledger contract: what every built-in ledger does, run on SQLite everywhere and on PostgreSQL where
there is one (conftest's ``postgres_url``: without a server those runs are skipped, unless ``CI`` is set).

What only one backend has (advisory locks, the claim function, grants, pools, ``lock_timeout``, session
time zones) is in ``test_ledger_postgres.py``; that the two answer a whole script of calls alike is there too.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware.ledger import (
    ALREADY_DONE,
    BUSY,
    CLAIMED,
    DONE,
    FAILED,
    RECEIVED,
    REJECTED,
    Ledger,
    open_ledger,
)
from conftest import drop_postgres_table
from ledger_events import BODY, OTHER_TRADE, PAID, REFUND, event


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger_spec(ledger_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ledger URL of this test's backend whose file or table does not exist yet (a table is dropped after)."""
    if ledger_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    table = f"alipay_test_{uuid.uuid4().hex[:12]}"
    yield f"{url}{'&' if '?' in url else '?'}table={table}"
    drop_postgres_table(table)


@pytest.fixture
def ledger(ledger_spec: str) -> Iterator[Ledger]:
    ledger = open_ledger(ledger_spec)
    yield ledger
    ledger.close()


# -- one behaviour at a time ---------------------------------------------------------------------------------------

def test_a_new_event_is_recorded_and_claimed_with_attempt_1(ledger: Ledger):
    claim = ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    assert (claim.state, claim.attempt) == (CLAIMED, 1)
    stored = ledger.get(PAID.key)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.kind, stored.trade_key) == (RECEIVED, 1, "paid", PAID.trade_key)
    assert (stored.raw_body, stored.charset, stored.fields) == (BODY, "gbk", PAID.raw)
    assert stored.received_at.tzinfo is timezone.utc and stored.updated_at.tzinfo is timezone.utc
    assert stored.received_at == stored.updated_at
    assert not ledger.is_done(PAID.key)


def test_finish_then_claim_is_already_done_and_finish_is_idempotent(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    ledger.finish(PAID.key, "hook ran")
    ledger.finish(PAID.key, "hook ran")
    assert ledger.claim(PAID, BODY, "gbk", "worker-2", 30).state == ALREADY_DONE
    stored = ledger.get(PAID.key)
    assert stored is not None and (stored.status, stored.reason, stored.attempts) == (DONE, "hook ran", 1)
    assert ledger.is_done(PAID.key)


def test_second_claim_while_leased_is_busy_until_the_lease_ends(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    claim = ledger.claim(PAID, BODY, "gbk", "worker-2", 30)
    assert claim.state == BUSY and 0 < claim.retry_after <= 30
    assert ledger.get(PAID.key).attempts == 1  # type: ignore[union-attr]


def test_another_event_of_the_same_trade_is_busy_but_another_trade_is_not(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    busy = ledger.claim(REFUND, BODY, "gbk", "worker-2", 30)
    assert busy.state == BUSY and 0 < busy.retry_after <= 30
    assert ledger.get(REFUND.key) is None  # told to come back, not recorded
    assert ledger.claim(OTHER_TRADE, BODY, "gbk", "worker-3", 30).state == CLAIMED
    ledger.finish(PAID.key)
    claim = ledger.claim(REFUND, BODY, "gbk", "worker-2", 30)
    assert (claim.state, claim.attempt) == (CLAIMED, 1)


def test_an_expired_lease_is_retaken_with_attempt_2(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "crashed-worker", 0.01)
    time.sleep(0.1)  # the lease runs out (the worker "crashed" inside its hook)
    claim = ledger.claim(PAID, BODY, "gbk", "worker-2", 30)
    assert (claim.state, claim.attempt) == (CLAIMED, 2)
    ledger.fail(PAID.key, "crashed-worker", "late")  # no longer the owner: ignored
    stored = ledger.get(PAID.key)
    assert stored is not None and (stored.status, stored.error, stored.attempts) == (RECEIVED, None, 2)


def test_fail_releases_the_lease_and_the_next_claim_retries(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    ledger.fail(PAID.key, "someone-else", "not mine")  # ignored
    assert ledger.get(PAID.key).status == RECEIVED  # type: ignore[union-attr]
    ledger.fail(PAID.key, "worker-1", "RuntimeError: db down")
    stored = ledger.get(PAID.key)
    assert stored is not None and (stored.status, stored.error) == (FAILED, "RuntimeError: db down")
    assert stored.reason is None
    claim = ledger.claim(PAID, BODY, "gbk", "worker-2", 30)
    assert (claim.state, claim.attempt) == (CLAIMED, 2)


def test_reject_is_rechecked_on_resend(ledger: Ledger):
    ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    ledger.reject(PAID.key, "worker-1", "unknown_order")
    stored = ledger.get(PAID.key)
    assert stored is not None and (stored.status, stored.reason, stored.error) == (REJECTED, "unknown_order", None)
    claim = ledger.claim(PAID, BODY, "gbk", "worker-2", 30)  # a resend of an own-order event: checked again
    assert (claim.state, claim.attempt) == (CLAIMED, 2)
    ledger.reject(PAID.key, "worker-1", "stale owner")  # ignored
    ledger.finish(PAID.key)
    ledger.reject(PAID.key, "worker-2", "too late")  # done is final
    assert ledger.get(PAID.key).status == DONE  # type: ignore[union-attr]


def test_record_foreign_keeps_the_message_without_touching_our_keys(ledger: Ledger):
    ledger.record_foreign(PAID, BODY, "gbk", "app_id_mismatch")
    ledger.record_foreign(PAID, BODY, "gbk", "app_id_mismatch")
    foreign = ledger.get(f"foreign:{PAID.notify_id}")
    assert foreign is not None
    assert (foreign.status, foreign.reason, foreign.attempts) == (REJECTED, "app_id_mismatch", 2)
    assert foreign.trade_key == f"foreign:{PAID.trade_key}" and foreign.raw_body == BODY
    assert ledger.get(PAID.key) is None
    claim = ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
    assert (claim.state, claim.attempt) == (CLAIMED, 1)
    anonymous = event("T9", notify_id="")
    ledger.record_foreign(anonymous, b"body without notify_id", "utf-8", "seller_id_mismatch")
    assert [e.key for e in ledger.events(status=REJECTED)][0].startswith("foreign:")
    assert len(ledger.events(status=REJECTED)) == 2


def test_get_and_events_filter_and_order_newest_first(ledger: Ledger):
    for e in (event("T1"), event("T2"), event("T3")):
        ledger.claim(e, BODY, "gbk", "worker", 30)
    ledger.finish(event("T2").key)
    ledger.record_foreign(event("T4", notify_id="n-4"), BODY, "gbk", "app_id_mismatch")
    keys = [e.key for e in ledger.events()]
    assert keys == ["foreign:n-4", event("T3").key, event("T2").key, event("T1").key]
    assert [e.key for e in ledger.events(status=DONE)] == [event("T2").key]
    assert [e.key for e in ledger.events(status=RECEIVED)] == [event("T3").key, event("T1").key]
    assert [e.key for e in ledger.events(out_trade_no="T1")] == [event("T1").key]
    assert [e.key for e in ledger.events(status=DONE, out_trade_no="T1")] == []
    assert [e.key for e in ledger.events(limit=2)] == keys[:2]
    assert ledger.events(limit=0) == []
    assert [e.key for e in ledger.events(limit=-1)] == keys  # as SQLite: a negative limit is no limit
    assert ledger.get("paid:nope") is None and not ledger.is_done("paid:nope")
    assert ledger.is_done(event("T2").key)


@pytest.mark.parametrize("raw_body", [
    pytest.param("out_trade_no=T1&subject=中文商品&body=测试".encode("gbk"), id="gbk"),
    pytest.param(bytes(range(1, 256)) * 3, id="every-non-nul-byte"),
    pytest.param(b"a\x00b\x00\xff", id="nul-bytes"),
    pytest.param(b"", id="empty"),
])
def test_raw_body_bytes_round_trip(ledger: Ledger, raw_body: bytes):
    fields = {"subject": "中文商品", "body": "测试 ‘quotes’ \\ \"", "emoji": "😀"}
    ledger.claim(event(raw=fields), raw_body, "gbk", "worker", 30)
    stored = ledger.get(PAID.key)
    assert stored is not None and stored.raw_body == raw_body and type(stored.raw_body) is bytes
    assert stored.fields == fields


# -- real concurrency ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("same", ["event", "trade"])
def test_eight_threads_claim_at_once_and_exactly_one_wins(ledger: Ledger, same: str):
    events = [PAID if same == "event" else event("T1", "refunded", suffix=f":R{i}") for i in range(8)]
    barrier = threading.Barrier(8)
    claims: list[Any] = []

    def claim(i: int) -> None:
        barrier.wait(timeout=30)
        claims.append(ledger.claim(events[i], BODY, "gbk", f"thread-{i}", 60))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(c.state for c in claims) == [BUSY] * 7 + [CLAIMED]
    assert all(c.retry_after > 0 for c in claims if c.state == BUSY)
    assert [e.attempts for e in ledger.events(limit=-1)] == [1]


def _claim_in_a_process(spec: str, barrier: Any, results: Any, index: int) -> None:
    # Every process constructs its own ledger at the same moment too: the schema creation races.
    ledger = open_ledger(spec)
    try:
        barrier.wait(timeout=60)
        claim = ledger.claim(PAID, BODY, "gbk", f"process-{index}", 60)
        results.put((claim.state, claim.attempt, claim.retry_after > 0))
    except BaseException as exc:  # reported to the parent, which fails the test with it
        results.put(("error", repr(exc), False))
    finally:
        ledger.close()


@pytest.mark.slow
def test_four_processes_claim_at_once_and_exactly_one_wins(ledger_spec: str):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_claim_in_a_process, args=(ledger_spec, barrier, results, i))
                 for i in range(4)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(60)
        results.close()
        results.join_thread()
    assert sorted(outcomes) == [(BUSY, 0, True)] * 3 + [(CLAIMED, 1, False)], outcomes
    assert all(process.exitcode == 0 for process in processes)
    ledger = open_ledger(ledger_spec, create=False)
    try:
        assert [(e.status, e.attempts) for e in ledger.events()] == [(RECEIVED, 1)]
    finally:
        ledger.close()
