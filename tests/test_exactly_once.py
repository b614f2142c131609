"""Exactly once, under faults: a succeeded hook is never run again when the ledger fails after it, and
transactional hooks make the shop's own writes land exactly once with the event's done mark.

Both ledgers, both fronts, real SQLite files and a real PostgreSQL; faults are real too (a PostgreSQL
connection terminated by the server, a SQLite write lock held by another connection, a deferred constraint
failing at COMMIT, a worker killed with SIGKILL). Nothing here asserts on timing: tests wait for states.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware import Alipay, Ledger
from alipay_middleware.callbacks.answers import INTERNAL_ERROR
from alipay_middleware.callbacks.flow import replay_flow
from alipay_middleware.errors import LedgerUnavailable, TransactionControlRefused
from alipay_middleware.fronts.drive import run_flow
from alipay_middleware.ledger import DONE, FAILED, RECEIVED, SQLiteLedger
from alipay_middleware.ledger.guard import TransactionGuard, transaction_control
from alipay_middleware.ledger.pending import PendingFinishes
from conftest import (
    APP_ID,
    POSTGRES,
    WSGIClient,
    make_config,
    notify_fields,
    signed_body,
)

NOTIFY = "/alipay/notify"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds (a state, never a duration under test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the shop's own table, in the ledger's database ----------------------------------------------------------

class Orders:
    """The shop's ``orders`` table in the same database as the ledger; ``paid_count`` counts effects."""

    def __init__(self, backend: str, ledger: Any) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.path = ledger.path
            self.table = "orders"
            self.p = "?"
        else:
            self.table = f"orders_{uuid.uuid4().hex[:12]}"
            self.p = "%s"
        self._run(f"CREATE TABLE {self.table} (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                  "paid_count INTEGER NOT NULL DEFAULT 0)")

    def _run(self, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.path, timeout=30) as db:
                rows = db.execute(statement, args).fetchall()
            db.close()
            return rows
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            cur = conn.execute(statement, args)
            return cur.fetchall() if cur.description else []

    def add(self, *ids: str) -> None:
        for order in ids:
            self._run(f"INSERT INTO {self.table} (id, status) VALUES ({self.p}, 'new')", (order,))

    def paid_count(self, order: str) -> int:
        [(count,)] = self._run(f"SELECT paid_count FROM {self.table} WHERE id = {self.p}", (order,))
        return int(count)

    @property
    def pay(self) -> str:
        """The hook's statement: mark paid and count the effect."""
        return f"UPDATE {self.table} SET status = 'paid', paid_count = paid_count + 1 WHERE id = {self.p}"

    def drop(self) -> None:
        if self.backend == "postgres":
            self._run(f"DROP TABLE IF EXISTS {self.table}")


def open_ledger_object(backend: str, new_ledger: Callable[[], Any], **options: Any) -> Ledger:
    spec = new_ledger()
    if backend == "sqlite":
        return SQLiteLedger(spec[len("sqlite:///"):], **options)
    if options:
        from alipay_middleware.ledger.postgres import PostgresLedger

        table = spec.table
        spec.close()
        return PostgresLedger(POSTGRES, table=table, **options)
    ledger: Ledger = spec
    return ledger


@pytest.fixture
def orders_for(ledger_backend: str) -> Iterator[Callable[[Ledger], Orders]]:
    made: list[Orders] = []

    def _make(ledger: Ledger) -> Orders:
        made.append(Orders(ledger_backend, ledger))
        return made[-1]

    yield _make
    for orders in made:
        orders.drop()


def post(client: Any, body: bytes) -> Any:
    return client.request("POST", NOTIFY, body)


# -- 1. a plain hook succeeded, then the ledger failed: never run again ------------------------------------

@pytest.mark.parametrize("ledger_backend", ["postgres"])
def test_connection_dropped_after_the_hook_is_retried_not_failed(make_alipay, mount, keys, ledger_backend):
    import psycopg

    alipay = make_alipay(orders={"F1": "9.90"})
    calls: list[str] = []

    @alipay.on_paid
    def paid(event: Any) -> None:
        calls.append(event.key)
        if len(calls) == 1:  # the server drops this worker's ledger connection while the hook runs
            backend_pid = alipay.ledger._connection().info.backend_pid  # type: ignore[attr-defined]
            with psycopg.connect(POSTGRES, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))

    client = mount(alipay)
    body = signed_body(notify_fields("F1"), keys.alipay)
    first = post(client, body)
    assert (first.status, first.body) == (200, b"success")
    assert (post(client, body).status, len(calls)) == (200, 1)
    stored = alipay.ledger.get(calls[0])
    assert stored.status == DONE and stored.attempts == 1 and stored.error is None


def test_finish_that_cannot_land_answers_finish_pending_keeps_the_lease_and_lands_later(
        front_kind, mount, keys, tmp_path):
    path = tmp_path / "ledger.sqlite3"
    alipay = Alipay(make_config(keys), ledger=SQLiteLedger(str(path), busy_timeout=0.05))
    alipay.finishes.retry_seconds = 0.2
    alipay.order_amount({"F2": Decimal("9.90")}.get)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    calls: list[Any] = []

    @alipay.on_paid
    def paid(event: Any) -> None:
        calls.append(event)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout

    client = mount(alipay)
    body = signed_body(notify_fields("F2"), keys.alipay)
    try:
        first = post(client, body)
        assert first.status == 503 and first.headers["retry-after"] and first.body == b"fail"
        key = calls[0].key
        stored = alipay.ledger.get(key)
        assert stored.status == RECEIVED and stored.lease_until is not None  # the lease is kept, never failed
        assert alipay.finishes.pending() == [key]
        # A copy meanwhile: busy, not run. The operator's replay: busy, not run.
        assert post(client, body).status == 503
        assert run_flow(replay_flow(alipay, stored), INTERNAL_ERROR).reason == "in_progress"
        assert len(calls) == 1
        blocker.execute("ROLLBACK")  # the lock goes away: the background retrier lands the done mark
        wait_for(lambda: alipay.ledger.get(key).status == DONE, "the done mark")
        assert alipay.finishes.pending() == []
        resend = post(client, body)
        assert (resend.status, resend.body, len(calls)) == (200, b"success", 1)
    finally:
        blocker.close()
        alipay.close()


def test_pending_finishes_flush_on_close_and_retry_in_the_background(caplog):
    landed: list[str] = []
    failing = threading.Event()
    failing.set()

    def finish(key: str, note: str | None) -> None:
        if failing.is_set():
            raise LedgerUnavailable("sqlite: database is locked")
        landed.append(key)

    pending = PendingFinishes(finish, retry_seconds=0.0)
    assert pending.finish("a") is False and pending.finish("b", "note") is False
    assert sorted(pending.pending()) == ["a", "b"]
    assert "reason=finish_pending key=a" in caplog.text
    failing.clear()
    pending.close()  # Alipay.close(): one more try for each
    assert sorted(landed) == ["a", "b"] and pending.pending() == []


FINISH_AT_EXIT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from conftest import WSGIClient
    from alipay_middleware import Alipay, OpenApiConfig
    from alipay_middleware.ledger import pending as finish
    from alipay_middleware.ledger import SQLiteLedger

    finish.BACKGROUND_BACKOFF = (3600.0, 3600.0)  # only the exit handler may land it
    config = OpenApiConfig(app_id="2021000000000001", app_private_key=os.environ["APP_KEY"],
                           alipay_public_key=os.environ["ALIPAY_PUBLIC"], seller_id="2088000000000001")
    alipay = Alipay(config, ledger=SQLiteLedger(os.environ["LEDGER"], busy_timeout=0.05))
    alipay.finishes.retry_seconds = 0.1

    @alipay.on_paid
    def paid(event):
        print("hook", flush=True)
        sys.stdin.readline()  # the test takes the write lock, then lets the hook return

    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    response = client.request("POST", "/alipay/notify", open(os.environ["BODY"], "rb").read())
    print(response.status, alipay.finishes.pending(), flush=True)
    sys.stdin.readline()  # the test releases the lock; then the process exits without close()
    """
)


@pytest.mark.slow
def test_a_pending_finish_lands_at_interpreter_exit(keys, tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    (tmp_path / "body").write_bytes(signed_body(notify_fields("F3"), keys.alipay))
    env = dict(os.environ, TESTS_DIR=str(Path(__file__).parent), LEDGER=str(ledger), BODY=str(tmp_path / "body"),
               APP_KEY=keys.app_private_pem, ALIPAY_PUBLIC=keys.alipay_public_pem)
    child = subprocess.Popen([sys.executable, "-c", FINISH_AT_EXIT], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    blocker = sqlite3.connect(ledger, isolation_level=None, timeout=30)
    try:
        assert child.stdout.readline().strip() == "hook"
        blocker.execute("BEGIN IMMEDIATE")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == f"503 ['paid:{APP_ID}:F3']"
        blocker.execute("ROLLBACK")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        blocker.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    stored = SQLiteLedger(str(ledger)).get(f"paid:{APP_ID}:F3")
    assert stored is not None and stored.status == DONE


# -- 2. transactional hooks: the shop's writes and the done mark commit together -------------------------

@pytest.fixture
def tx_shop(make_alipay, mount, new_ledger, ledger_backend, orders_for):
    """An Alipay whose ledger is a real SQLite file or PostgreSQL table, with the shop's orders beside it."""

    def _make(hook: Callable[[Any, Any, Orders], None] | None = None, **options: Any) -> Any:
        ledger_options = options.pop("ledger_options", {})
        ledger = open_ledger_object(ledger_backend, new_ledger, **ledger_options)
        alipay = make_alipay(ledger=ledger, orders={"X1": "9.90", "X2": "9.90"}, **options)
        orders = orders_for(ledger)
        orders.add("X1", "X2")
        calls: list[Any] = []

        def paid(event: Any, tx: Any) -> None:
            calls.append((event, tx))
            if hook is not None:
                hook(event, tx, orders)
            else:
                tx.execute(orders.pay, (event.out_trade_no,))

        alipay.on_paid(transactional=True)(paid)

        class Shop:
            pass

        shop = Shop()
        shop.alipay, shop.orders, shop.calls, shop.ledger = alipay, orders, calls, ledger
        shop.client = mount(alipay)
        return shop

    return _make


def test_transactional_payment_and_its_resend_update_the_order_once(tx_shop, keys):
    shop = tx_shop()
    body = signed_body(notify_fields("X1"), keys.alipay)
    for _ in range(3):
        response = post(shop.client, body)
        assert (response.status, response.body) == (200, b"success")
    assert shop.orders.paid_count("X1") == 1 and len(shop.calls) == 1
    event, tx = shop.calls[0]
    assert isinstance(tx, TransactionGuard)
    assert shop.ledger.get(event.key).status == DONE


def test_transactional_hook_that_writes_then_raises_rolls_back_and_is_retried(tx_shop, keys):
    def hook(event: Any, tx: Any, orders: Orders) -> None:
        tx.execute(orders.pay, (event.out_trade_no,))
        if event.attempt == 1:
            raise RuntimeError("the shop's hook failed after writing")

    shop = tx_shop(hook)
    body = signed_body(notify_fields("X1"), keys.alipay)
    first = post(shop.client, body)
    assert (first.status, first.body) == (500, b"fail")
    assert shop.orders.paid_count("X1") == 0  # the write was rolled back with the failure
    stored = shop.ledger.get(shop.calls[0][0].key)
    assert stored.status == FAILED and "the shop's hook failed after writing" in stored.error
    assert "Traceback" in stored.error
    assert post(shop.client, body).status == 200
    assert post(shop.client, body).status == 200
    assert shop.orders.paid_count("X1") == 1 and len(shop.calls) == 2


@pytest.mark.parametrize("action", [
    "commit", "rollback", "close", "sql_commit", "sql_rollback", "sql_begin", "sql_end", "multi_statement",
    "cursor_commit", "cursor_connection_commit", "context_manager", "autocommit",
])
def test_a_transactional_hook_cannot_end_the_transaction(tx_shop, keys, action, ledger_backend):
    def hook(event: Any, tx: Any, orders: Orders) -> None:
        tx.execute(orders.pay, (event.out_trade_no,))
        if event.attempt > 1:
            return
        if action in ("commit", "rollback", "close"):
            getattr(tx, action)()
        elif action == "sql_commit":
            tx.execute("  /* done */ commit")
        elif action == "sql_rollback":
            tx.execute("ROLLBACK")
        elif action == "sql_begin":
            tx.execute("BEGIN")
        elif action == "sql_end":
            tx.execute("END TRANSACTION")
        elif action == "multi_statement":
            tx.execute("SELECT 1; COMMIT")
        elif action == "cursor_commit":
            tx.cursor().execute("COMMIT")
        elif action == "cursor_connection_commit":
            tx.cursor().connection.commit()
        elif action == "context_manager":
            with tx:
                pass
        elif action == "autocommit":
            tx.autocommit = True

    shop = tx_shop(hook)
    body = signed_body(notify_fields("X1"), keys.alipay)
    assert post(shop.client, body).status == 500
    assert shop.orders.paid_count("X1") == 0
    stored = shop.ledger.get(shop.calls[0][0].key)
    assert stored.status == FAILED and "TransactionControlRefused" in stored.error
    assert post(shop.client, body).status == 200
    assert shop.orders.paid_count("X1") == 1


def test_a_transactional_hook_may_use_savepoints(tx_shop, keys):
    def hook(event: Any, tx: Any, orders: Orders) -> None:
        tx.execute("SAVEPOINT partial")
        tx.execute(orders.pay, (event.out_trade_no,))
        tx.execute("ROLLBACK TO SAVEPOINT partial")  # undone: only the next statement counts
        tx.execute("RELEASE SAVEPOINT partial")
        tx.execute(orders.pay, (event.out_trade_no,))

    shop = tx_shop(hook)
    assert post(shop.client, signed_body(notify_fields("X1"), keys.alipay)).status == 200
    assert shop.orders.paid_count("X1") == 1


def test_a_hook_that_outlives_its_lease_while_a_copy_arrives(tx_shop, keys, ledger_backend, caplog):
    started, release = threading.Event(), threading.Event()

    def hook(event: Any, tx: Any, orders: Orders) -> None:
        tx.execute(orders.pay, (event.out_trade_no,))
        started.set()
        assert release.wait(60)

    options = {"busy_timeout": 0.2} if ledger_backend == "sqlite" else {"lock_timeout": 0.2}
    shop = tx_shop(hook, lease_seconds=1, ledger_options=options)
    body = signed_body(notify_fields("X1"), keys.alipay)
    answers: dict[str, Any] = {}
    first = threading.Thread(target=lambda: answers.update(first=post(shop.client, body)))
    first.start()
    try:
        assert started.wait(30)
        key = shop.calls[0][0].key
        lease_until = shop.ledger.get(key).lease_until
        wait_for(lambda: time.time() > lease_until.timestamp() + 0.5, "the lease to run out")
        # The copy finds an expired lease, but the hook's transaction holds the event: it cannot retake it.
        caplog.clear()
        copy = post(shop.client, body)
        assert (copy.status, copy.body) == (503, b"fail")
        # SQLite: the copy's claim waited busy_timeout for the write lock; PostgreSQL: lock_timeout for the row.
        assert "reason=ledger_unavailable" in caplog.text
    finally:
        release.set()
        first.join(60)
    assert answers["first"].status == 200
    assert post(shop.client, body).status == 200
    assert shop.orders.paid_count("X1") == 1 and len(shop.calls) == 1


def test_a_commit_that_fails_rolls_back_the_hook_and_is_retried(make_alipay, keys, new_ledger, ledger_backend,
                                                                  orders_for):
    """A deferred constraint the hook violates fails at COMMIT: nothing of the hook landed, the event is
    released, and the resend (which keeps the constraint) pays once."""
    ledger = open_ledger_object(ledger_backend, new_ledger)
    alipay = make_alipay(ledger=ledger, orders={"X1": "9.90"})
    orders = orders_for(ledger)
    orders.add("X1")
    audit = f"audit_{uuid.uuid4().hex[:8]}"
    if ledger_backend == "sqlite":
        orders._run(f"CREATE TABLE {audit} (order_id TEXT REFERENCES {orders.table}(id) "
                    "DEFERRABLE INITIALLY DEFERRED)")
        # Foreign keys are a per-connection setting in SQLite: on for this thread's ledger connection.
        ledger._connection().execute("PRAGMA foreign_keys = ON")  # type: ignore[attr-defined]
    else:
        orders._run(f"CREATE TABLE {audit} (order_id TEXT REFERENCES {orders.table}(id) "
                    "DEFERRABLE INITIALLY DEFERRED)")
    calls: list[int] = []

    @alipay.on_paid(transactional=True)
    def paid(event: Any, tx: Any) -> None:
        calls.append(event.attempt)
        tx.execute(orders.pay, (event.out_trade_no,))
        target = "no-such-order" if event.attempt == 1 else event.out_trade_no
        tx.execute(f"INSERT INTO {audit} (order_id) VALUES ({orders.p})", (target,))

    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    body = signed_body(notify_fields("X1"), keys.alipay)
    try:
        first = post(client, body)
        assert (first.status, first.body) == (503, b"fail")
        assert orders.paid_count("X1") == 0
        stored = alipay.ledger.get(f"paid:{APP_ID}:X1")
        assert stored.status == FAILED and "commit_failed" in stored.error
        assert post(client, body).status == 200 and post(client, body).status == 200
        assert orders.paid_count("X1") == 1 and calls == [1, 2]
    finally:
        if ledger_backend == "postgres":
            orders._run(f"DROP TABLE IF EXISTS {audit}")


TX_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from conftest import WSGIClient
    from alipay_middleware import Alipay, OpenApiConfig

    config = OpenApiConfig(app_id="2021000000000001", app_private_key=os.environ["APP_KEY"],
                           alipay_public_key=os.environ["ALIPAY_PUBLIC"], seller_id="2088000000000001")
    if os.environ.get("POSTGRES"):
        from alipay_middleware.ledger.postgres import PostgresLedger
        ledger = PostgresLedger(os.environ["POSTGRES"], table=os.environ["TABLE"])
    else:
        ledger = "sqlite:///" + os.environ["LEDGER"]
    alipay = Alipay(config, ledger=ledger, lease_seconds=1)
    marker = Path(os.environ["MARKER"])

    @alipay.on_paid(transactional=True)
    def paid(event, tx):
        tx.execute(os.environ["PAY"], (event.out_trade_no,))
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # killed here, after writing, before the commit

    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    client.request("POST", "/alipay/notify", Path(os.environ["BODY"]).read_bytes())
    """
)


@pytest.mark.slow
def test_sigkill_inside_a_transactional_hook_then_the_resend_pays_once(keys, tmp_path, new_ledger, ledger_backend,
                                                                       orders_for):
    ledger = open_ledger_object(ledger_backend, new_ledger)
    orders = orders_for(ledger)
    orders.add("X1")
    env = dict(os.environ, TESTS_DIR=str(Path(__file__).parent), MARKER=str(tmp_path / "marker"),
               BODY=str(tmp_path / "body"), APP_KEY=keys.app_private_pem, ALIPAY_PUBLIC=keys.alipay_public_pem,
               PAY=orders.pay)
    if ledger_backend == "sqlite":
        env["LEDGER"] = ledger.path  # type: ignore[attr-defined]
    else:
        env.update(POSTGRES=POSTGRES, TABLE=ledger.table)  # type: ignore[attr-defined]
    body = signed_body(notify_fields("X1"), keys.alipay)
    (tmp_path / "body").write_bytes(body)
    child = subprocess.Popen([sys.executable, "-c", TX_CHILD], env=env)
    try:
        wait_for(lambda: (tmp_path / "marker").exists() and (tmp_path / "marker").read_text() != "", "the hook")
        os.kill(int((tmp_path / "marker").read_text()), signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    key = f"paid:{APP_ID}:X1"
    assert orders.paid_count("X1") == 0  # the killed transaction never committed
    stored = ledger.get(key)
    assert stored is not None and stored.status == RECEIVED
    wait_for(lambda: time.time() > stored.lease_until.timestamp() + 0.5, "the dead worker's lease to run out")

    alipay = Alipay(make_config(keys), ledger=ledger, lease_seconds=1)
    calls: list[int] = []

    @alipay.on_paid(transactional=True)
    def paid(event: Any, tx: Any) -> None:
        calls.append(event.attempt)
        tx.execute(orders.pay, (event.out_trade_no,))

    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    try:
        assert post(client, body).status == 200 and post(client, body).status == 200
        assert ledger.get(key).status == DONE
    finally:
        alipay.close()
    assert calls == [2] and orders.paid_count("X1") == 1


# -- every path that runs hooks honours transactional=True --------------------------------------------------

def test_replay_runs_a_failed_transactional_hook_in_its_transaction(tx_shop, keys):
    def hook(event: Any, tx: Any, orders: Orders) -> None:
        tx.execute(orders.pay, (event.out_trade_no,))
        if event.attempt == 1:
            raise RuntimeError("first try fails")

    shop = tx_shop(hook)
    assert post(shop.client, signed_body(notify_fields("X1"), keys.alipay)).status == 500
    stored = shop.ledger.get(f"paid:{APP_ID}:X1")
    assert stored.status == FAILED
    answer = run_flow(replay_flow(shop.alipay, stored), INTERNAL_ERROR)
    assert answer.status == 200
    again = run_flow(replay_flow(shop.alipay, shop.ledger.get(stored.key)), INTERNAL_ERROR)
    assert again.reason == "already_done"
    assert shop.orders.paid_count("X1") == 1 and isinstance(shop.calls[-1][1], TransactionGuard)


def test_confirmation_on_return_and_reconcile_run_transactional_hooks(tx_shop, keys):
    from test_reconcile import return_query

    from openapi_gateway import OpenApiGateway

    stub = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    try:
        shop = tx_shop(confirm_returns=True, config={"gateway": stub.url})
        stub.add_trade("X1", "TRADE_SUCCESS", "9.90")
        body = shop.client.request("GET", "/alipay/return", query=return_query(keys, "X1")).body.decode()
        assert "paid=True" in body
        assert shop.orders.paid_count("X1") == 1

        @shop.alipay.pending_orders
        def pending(created_before: Any) -> list[str]:
            return ["X1", "X2"]

        stub.add_trade("X2", "TRADE_SUCCESS", "9.90")
        outcomes = {r.out_trade_no: r.outcome for r in shop.alipay.reconcile(older_than_minutes=0)}
        assert outcomes == {"X1": "already_paid", "X2": "processed"}
        assert shop.orders.paid_count("X2") == 1
        assert all(isinstance(tx, TransactionGuard) for _, tx in shop.calls) and len(shop.calls) == 2
        # The notifications that follow: success, nothing more.
        for order in ("X1", "X2"):
            assert post(shop.client, signed_body(notify_fields(order), keys.alipay)).status == 200
        assert shop.orders.paid_count("X1") == shop.orders.paid_count("X2") == 1
    finally:
        stub.close()


def test_legacy_paid_return_runs_the_transactional_hook(make_legacy, mount, gateway_stub, ledger_backend,
                                                        orders_for):
    from test_legacy import return_query

    from conftest import PARTNER, legacy_body, legacy_fields

    alipay = make_legacy(orders={"L1": "9.90"})
    orders = orders_for(alipay.ledger)
    orders.add("L1")
    calls: list[Any] = []

    @alipay.on_paid(transactional=True)
    def paid(event: Any, tx: Any) -> None:
        calls.append(tx)
        tx.execute(orders.pay, (event.out_trade_no,))

    client = mount(alipay)
    gateway_stub.issue("RqPnCoPT3K9/vwbh3InYz+8Yh=")
    assert "paid=True" in client.request("GET", "/alipay/return", query=return_query()).body.decode()
    fields = legacy_fields("L1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    assert client.request("POST", NOTIFY, legacy_body(fields)).body == b"success"
    assert orders.paid_count("L1") == 1 and len(calls) == 1 and isinstance(calls[0], TransactionGuard)
    assert alipay.ledger.get(f"paid:{PARTNER}:L1").status == DONE


# -- registration -----------------------------------------------------------------------------------------

def test_both_decorator_forms_and_what_registration_refuses(keys, tmp_path):
    alipay = Alipay(make_config(keys), ledger=f"sqlite:///{tmp_path / 'l.sqlite3'}")
    try:
        @alipay.on_paid(transactional=True)
        def paid(event: Any, tx: Any) -> None: ...

        @alipay.on_refunded
        def refunded(event: Any) -> None: ...

        @alipay.on_closed(transactional=False)
        def closed(event: Any) -> None: ...

        assert alipay.hooks["paid"].transactional and not alipay.hooks["refunded"].transactional
        assert alipay.hooks["closed"].fn is closed
        other = Alipay(make_config(keys), ledger=f"sqlite:///{tmp_path / 'm.sqlite3'}")
        with pytest.raises(TypeError, match=r"two arguments \(event, tx\)"):
            other.on_paid(transactional=True)(lambda event: None)
        with pytest.raises(TypeError, match="exactly one argument"):
            other.on_paid(lambda event, tx: None)

        async def async_hook(event: Any, tx: Any) -> None: ...

        with pytest.raises(TypeError, match="plain \\(def\\) function"):
            other.on_paid(transactional=True)(async_hook)
        with pytest.raises(TypeError, match="True or False"):
            other.on_paid(transactional="yes")  # type: ignore[call-overload]
        other.close()
    finally:
        alipay.close()


class CustomLedger(Ledger):
    """A shop's own ledger: it implements the interface, not hook transactions."""

    def claim(self, *args: Any) -> Any: ...
    def finish(self, *args: Any) -> None: ...
    def fail(self, *args: Any) -> None: ...
    def reject(self, *args: Any) -> None: ...
    def record_foreign(self, *args: Any) -> None: ...
    def is_done(self, key: str) -> bool: return False
    def get(self, key: str) -> Any: return None
    def events(self, *args: Any, **kwargs: Any) -> list[Any]: return []


@pytest.mark.parametrize("ledger", [":memory:", "custom"])
def test_ledgers_without_hook_transactions_refuse_transactional_hooks(keys, ledger):
    alipay = Alipay(make_config(keys), ledger=CustomLedger() if ledger == "custom" else ledger)
    with pytest.raises(ValueError, match="SQLiteLedger on a file .* or PostgresLedger"):
        alipay.on_paid(transactional=True)(lambda event, tx: None)
    alipay.on_paid(lambda event: None)  # plain hooks are fine
    alipay.close()


@pytest.mark.parametrize(("sql", "refused"), [
    ("COMMIT", "COMMIT"), ("commit work", "COMMIT WORK"), ("END", "END"), ("end transaction", "END TRANSACTION"),
    ("ROLLBACK", "ROLLBACK"), ("rollback transaction", "ROLLBACK TRANSACTION"), ("BEGIN IMMEDIATE", "BEGIN IMMEDIATE"),
    ("START TRANSACTION", "START TRANSACTION"), ("ABORT", "ABORT"), ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
    ("SELECT 1; COMMIT", "COMMIT"), ("-- note\nCOMMIT", "COMMIT"), ("/* a */ commit", "COMMIT"),
    ("UPDATE t SET a = 1;;  rollback", "ROLLBACK"),
    ("ROLLBACK TO SAVEPOINT a", None), ("rollback transaction to a", None), ("SAVEPOINT a", None),
    ("RELEASE SAVEPOINT a", None), ("UPDATE t SET note = 'x; COMMIT'", None), ("SELECT $$; commit$$", None),
    ("SELECT $tag$ ; commit $tag$", None), ("SELECT E'\\'; commit'", None), ('SELECT "a;commit" FROM t', None),
    ("-- ; COMMIT\nSELECT 1", None), ("INSERT INTO commits VALUES (1)", None), ("PREPARE q AS SELECT 1", None),
    ("", None), (";", None),
])
def test_transaction_control_statements_are_recognised(sql, refused):
    assert transaction_control(sql) == refused


def test_the_guard_stops_working_after_the_hook(tmp_path):
    db = sqlite3.connect(tmp_path / "g.sqlite3", isolation_level=None)
    guard = TransactionGuard(db)
    assert guard.execute("SELECT 1").fetchone() == (1,)
    guard._end()
    with pytest.raises(TransactionControlRefused, match="only usable while the hook runs"):
        guard.execute("SELECT 1")
    db.close()


def _child_retrier(pending: PendingFinishes, landed: Any, failing: Any) -> None:
    # In the forked worker: the parent's pending keys are the parent's; this process starts its own thread.
    assert pending.pending() == []
    failing.set()
    assert pending.finish("child-key") is False
    failing.clear()
    deadline = time.monotonic() + 30
    while pending.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pending.pending() == [] and "child-key" in list(landed)


@pytest.mark.slow
def test_the_background_retrier_lives_in_the_worker_after_a_fork():
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        landed = manager.list()
        _fork_and_retry(context, landed, context.Event())


def _fork_and_retry(context: Any, landed: Any, failing: Any) -> None:

    def finish(key: str, note: str | None) -> None:
        if failing.is_set():
            raise LedgerUnavailable("postgresql: the server closed the connection")
        landed.append(key)

    pending = PendingFinishes(finish, retry_seconds=0.0)
    failing.set()
    assert pending.finish("parent-key") is False  # the parent's thread is running now
    child = context.Process(target=_child_retrier, args=(pending, landed, failing))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    failing.clear()
    pending.close()
    assert sorted(landed) == ["child-key", "parent-key"]
