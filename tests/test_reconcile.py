"""Asking Alipay instead of waiting for it: confirmation on return and reconciliation, through the
notify path's own dedupe, against the loopback Open Platform gateway stub (both fronts, both ledgers)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware.ledger import DONE, REJECTED
from conftest import (
    APP_ID,
    POSTGRES,
    SELLER_ID,
    Keys,
    Recorder,
    encode_form,
    notify_fields,
    on_a_terminal,
    sign_fields,
    signed_body,
)
from openapi_gateway import OpenApiGateway

NOTIFY, RETURN = "/alipay/notify", "/alipay/return"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stub(keys: Keys):
    gateway = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    yield gateway
    gateway.close()
    assert gateway.problems == []


def return_query(keys: Keys, out_trade_no: str = "A1", total_amount: str = "9.90") -> str:
    fields = {
        "charset": "utf-8", "out_trade_no": out_trade_no, "method": "alipay.trade.page.pay.return",
        "total_amount": total_amount, "trade_no": "2024010122001400000000000077", "auth_app_id": APP_ID,
        "version": "1.0", "app_id": APP_ID, "sign_type": "RSA2", "seller_id": SELLER_ID,
        "timestamp": "2024-01-01 12:00:09",
    }
    return encode_form(dict(fields, sign=sign_fields(fields, keys.alipay))).decode()


class Shop:
    def __init__(self, make_alipay: Any, mount: Any, stub: OpenApiGateway, **kwargs: Any) -> None:
        self.alipay = make_alipay(orders={"A1": "9.90", "A2": "20.00", "A3": "5.00", "A4": "1.00"},
                                  config={"gateway": stub.url}, **kwargs)
        self.paid, self.closed = Recorder(), Recorder()
        self.alipay.on_paid(self.paid)
        self.alipay.on_closed(self.closed)
        self.client = mount(self.alipay)
        self.stub = stub


@pytest.fixture
def shop(make_alipay, mount, stub) -> Shop:
    return Shop(make_alipay, mount, stub, confirm_returns=True)


# -- confirmation on return ---------------------------------------------------------------------------------

def test_return_of_a_paid_trade_confirms_and_pays_once(shop, keys):
    shop.stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
    body = shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert "paid=True" in body
    assert [e.out_trade_no for e in shop.paid.calls] == ["A1"]
    assert shop.paid.calls[0].key == f"paid:{APP_ID}:A1" and shop.paid.calls[0].trade_status == "TRADE_SUCCESS"
    # The notify arrives later: the same key, so it is answered without a second call.
    response = shop.client.request("POST", NOTIFY, signed_body(notify_fields("A1", "9.90"), keys.alipay))
    assert (response.status, response.body) == (200, b"success")
    assert len(shop.paid.calls) == 1
    # A reload asks nothing: the ledger already knows.
    queries = shop.stub.count("alipay.trade.query")
    assert "paid=True" in shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert shop.stub.count("alipay.trade.query") == queries


@pytest.mark.parametrize("buyer", [{"buyer_user_id": "2088102000000009"},
                                   {"buyer_open_id": "074a1CcTG1LelxKe4xQC0zgNdId0nxi95b5lsNpazWYoCo5"}])
def test_a_confirmed_payment_names_its_buyer(shop, keys, buyer):
    """alipay.trade.query calls the user id buyer_user_id; the event calls it buyer_id, as a notification does."""
    shop.stub.add_trade("A1", "TRADE_SUCCESS", "9.90", **buyer)
    assert "paid=True" in shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    event = shop.paid.calls[0]
    assert (event.buyer_id, event.buyer_open_id) == (buyer.get("buyer_user_id"), buyer.get("buyer_open_id"))


@pytest.mark.parametrize(("status", "paid"), [("WAIT_BUYER_PAY", "False"), (None, "False")])
def test_return_of_an_unpaid_trade_runs_nothing(shop, keys, status, paid):
    if status:
        shop.stub.add_trade("A1", status, "9.90")  # None: Alipay does not know the trade (ACQ.TRADE_NOT_EXIST)
    body = shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert f"paid={paid}" in body and shop.paid.calls == []


def test_return_when_alipay_cannot_be_asked_still_reaches_the_page(make_alipay, mount, stub, keys):
    stub.fault("alipay.trade.query", "http_502", times=10)
    shop = Shop(make_alipay, mount, stub, confirm_returns=True)
    body = shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert "out_trade_no='A1'" in body and "paid=None" in body and shop.paid.calls == []


def test_confirmed_amount_is_checked_like_a_notification(shop, keys):
    shop.stub.add_trade("A1", "TRADE_SUCCESS", "0.01")  # Alipay says 0.01 for an order of 9.90
    body = shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert "paid=True" in body  # what Alipay said; the shop's own order check refused it
    assert shop.paid.calls == [] and shop.alipay.ledger.get(f"paid:{APP_ID}:A1").status == REJECTED


def test_without_confirm_returns_nothing_is_asked(make_alipay, mount, stub, keys):
    shop = Shop(make_alipay, mount, stub)
    stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
    body = shop.client.request("GET", RETURN, query=return_query(keys)).body.decode()
    assert "paid=None" in body and stub.count() == 0 and shop.paid.calls == []


def test_confirmation_racing_the_notify_calls_the_hook_once(make_alipay, mount, stub, keys):
    alipay = make_alipay(orders={"A1": "9.90"}, config={"gateway": stub.url}, confirm_returns=True)
    stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
    entered, release = threading.Event(), threading.Event()
    calls: list[Any] = []

    @alipay.on_paid
    def paid(event: Any) -> None:
        calls.append(event)
        entered.set()
        release.wait(10)

    client = mount(alipay)
    body = signed_body(notify_fields("A1", "9.90"), keys.alipay)
    results: dict[str, Any] = {}
    notifier = threading.Thread(target=lambda: results.update(notify=client.request("POST", NOTIFY, body)))
    notifier.start()
    assert entered.wait(10)
    page = client.request("GET", RETURN, query=return_query(keys)).body.decode()  # the hook is running
    release.set()
    notifier.join(10)
    assert (results["notify"].status, results["notify"].body) == (200, b"success")
    assert "paid=True" in page and len(calls) == 1


def test_confirm_returns_is_refused_for_the_legacy_service(make_legacy):
    with pytest.raises(ValueError, match="confirm_returns is for the Open Platform"):
        make_legacy(alipay_kwargs={"confirm_returns": True})


# -- reconciliation -----------------------------------------------------------------------------------------

def test_reconcile_feeds_confirmed_payments_and_closes_through_the_hooks(make_alipay, mount, stub, keys):
    shop = Shop(make_alipay, mount, stub)
    stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
    stub.add_trade("A2", "TRADE_CLOSED", "20.00")  # closed unpaid (timed out)
    stub.add_trade("A3", "WAIT_BUYER_PAY", "5.00")
    stub.add_trade("A4", "TRADE_FINISHED", "1.00")
    seen: list[Any] = []

    @shop.alipay.pending_orders
    def pending(created_before: Any) -> list[str]:
        seen.append(created_before)
        return ["A1", "A2", "A3", "A4", "NOPE"]

    results = {r.out_trade_no: r for r in shop.alipay.reconcile(older_than_minutes=30)}
    assert seen[0].utcoffset() is not None  # an aware moment
    assert {k: r.outcome for k, r in results.items()} == {
        "A1": "processed", "A2": "processed", "A3": "not_paid", "A4": "processed", "NOPE": "not_paid"}
    assert (results["A1"].paid, results["A3"].paid, results["NOPE"].trade_status) == (True, False, None)
    assert sorted(e.out_trade_no for e in shop.paid.calls) == ["A1", "A4"]
    assert [e.out_trade_no for e in shop.closed.calls] == ["A2"]
    # Run again (cron): nothing is called twice; paid orders are not even asked about.
    queries = stub.count("alipay.trade.query")
    again = {r.out_trade_no: r.outcome for r in shop.alipay.reconcile(older_than_minutes=30)}
    assert again["A1"] == again["A4"] == "already_paid" and again["A2"] == "already_done"
    assert stub.count("alipay.trade.query") == queries + 3
    assert len(shop.paid.calls) == 2 and len(shop.closed.calls) == 1
    # A late notification for a reconciled payment: success, no second call.
    response = shop.client.request("POST", NOTIFY, signed_body(notify_fields("A1", "9.90"), keys.alipay))
    assert (response.status, response.body, len(shop.paid.calls)) == (200, b"success", 2)


def test_reconcile_reports_errors_and_needs_pending_orders(make_alipay, mount, stub):
    shop = Shop(make_alipay, mount, stub)
    with pytest.raises(RuntimeError, match="pending_orders"):
        shop.alipay.reconcile()
    stub.fault("alipay.trade.query", "service_unavailable", times=5)

    @shop.alipay.pending_orders
    async def pending(created_before: Any) -> list[str]:  # async is fine too
        return ["A1"]

    [result] = shop.alipay.reconcile()
    assert (result.outcome, result.paid) == ("error", None) and shop.paid.calls == []


def test_a_paid_then_refunded_trade_is_not_taken_for_a_close(make_alipay, mount, stub):
    shop = Shop(make_alipay, mount, stub)
    stub.add_trade("A1", "TRADE_CLOSED", "9.90", refunds={"R1": "9.90"})
    shop.alipay.pending_orders(lambda created_before: ["A1"])
    [result] = shop.alipay.reconcile()
    assert result.outcome == "not_paid" and shop.closed.calls == [] and shop.paid.calls == []


class GatheringGateway(OpenApiGateway):
    """Holds each trade query until ``parties`` of them are in flight together. Queries that never gather
    (one at a time) break the barrier, and are then answered as usual."""

    def __init__(self, keys: Keys, parties: int) -> None:
        super().__init__(keys.app.public_key(), keys.alipay, APP_ID)
        self.barrier = threading.Barrier(parties, timeout=10)

    def _handle(self, handler: Any) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass
        super()._handle(handler)


def test_reconcile_asks_about_several_orders_at_once_but_no_more_than_its_concurrency(make_alipay, keys):
    gateway = GatheringGateway(keys, parties=4)
    try:
        orders = {f"C{i:02d}": "9.90" for i in range(12)}
        for out_trade_no in orders:
            gateway.add_trade(out_trade_no, "TRADE_SUCCESS", "9.90")
        alipay = make_alipay(orders=orders, config={"gateway": gateway.url})
        paid, threads = Recorder(), set()
        paid.fail_next = 1  # one hook fails: that order says so, the others go on

        @alipay.on_paid
        def hook(event: Any) -> None:
            threads.add(threading.current_thread().name)
            paid(event)

        pending = list(orders)[::-1]  # not the order they will be answered in
        alipay.pending_orders(lambda created_before: pending)
        seen: list[tuple[int, int]] = []

        results = alipay.reconcile(older_than_minutes=0, concurrency=4,
                                   progress=lambda done, total: seen.append((done, total)))
    finally:
        gateway.close()
    # Four queries were in flight at once, and no more: the hooks ran in four threads only.
    assert not gateway.barrier.broken, "the queries never gathered four at a time"
    assert len(threads) == 4 and threading.current_thread().name not in threads
    assert [r.out_trade_no for r in results] == pending  # as pending_orders listed them
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == Counter({"processed": 11, "hook_failed": 1})
    assert sorted(e.out_trade_no for e in paid.calls) == sorted(r.out_trade_no for r in results
                                                               if r.outcome == "processed")
    assert seen == [(n, 12) for n in range(1, 13)]


def test_reconcile_one_at_a_time_and_a_bad_concurrency(make_alipay, stub):
    alipay = make_alipay(orders={"A1": "9.90", "A2": "9.90"}, config={"gateway": stub.url})
    alipay.pending_orders(lambda created_before: ["A2", "A1"])
    stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
    results = alipay.reconcile(concurrency=1)
    assert [(r.out_trade_no, r.outcome) for r in results] == [("A2", "not_paid"), ("A1", "processed")]
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="concurrency must be a whole number of at least 1"):
            alipay.reconcile(concurrency=bad)


RECONCILE_APP = '''
import os
from decimal import Decimal
from alipay_middleware import Alipay, OpenApiConfig

if os.environ.get("SHOP_POSTGRES"):
    from alipay_middleware.ledger.postgres import PostgresLedger
    ledger = PostgresLedger(os.environ["SHOP_POSTGRES"], table=os.environ["SHOP_TABLE"])
else:
    ledger = "sqlite:///" + os.environ["SHOP_LEDGER"]
alipay = Alipay(OpenApiConfig(app_id=os.environ["SHOP_APP_ID"], app_private_key=os.environ["SHOP_APP_KEY"],
                              alipay_public_key=os.environ["SHOP_ALIPAY_KEY"], gateway=os.environ["SHOP_GATEWAY"]),
                ledger=ledger)
ORDERS = [f"R{i:02d}" for i in range(12)]
alipay.order_amount(lambda out_trade_no: Decimal("9.90"))
alipay.pending_orders(lambda created_before: ORDERS)


@alipay.on_paid
def paid(event):
    fd = os.open(os.environ["SHOP_HOOK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event.key} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
'''


@pytest.mark.slow
def test_reconcile_from_two_processes_at_once_calls_each_hook_once(keys, stub, tmp_path: Path, ledger_backend,
                                                                   request):
    (tmp_path / "shop_payments.py").write_text(textwrap.dedent(RECONCILE_APP))
    for i in range(12):
        stub.add_trade(f"R{i:02d}", "TRADE_SUCCESS", "9.90")
    env = dict(os.environ, SHOP_APP_ID=APP_ID, SHOP_APP_KEY=keys.app_private_pem,
               SHOP_ALIPAY_KEY=keys.alipay_public_pem, SHOP_GATEWAY=stub.url, SHOP_HOOK_LOG=str(tmp_path / "hooks"),
               SHOP_LEDGER=str(tmp_path / "ledger.sqlite3"))
    env.pop("ALIPAY_LEDGER", None)
    if ledger_backend == "postgres":
        from conftest import drop_postgres_table

        env.update(SHOP_POSTGRES=request.getfixturevalue("postgres_url"), SHOP_TABLE=f"alipay_rec_{os.getpid()}")
        request.addfinalizer(lambda: drop_postgres_table(env["SHOP_TABLE"]))
    command = [sys.executable, "-m", "alipay_middleware", "reconcile", "--app", "shop_payments:alipay",
               "--older-than-minutes", "0"]
    children = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0].decode() for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    calls = Counter(line.split()[0] for line in (tmp_path / "hooks").read_text().splitlines())
    assert calls == Counter({f"paid:{APP_ID}:R{i:02d}": 1 for i in range(12)}), (calls, outputs)
    if ledger_backend == "postgres":
        from alipay_middleware.ledger.postgres import PostgresLedger

        ledger: Any = PostgresLedger(POSTGRES, table=env["SHOP_TABLE"])
    else:
        from alipay_middleware import SQLiteLedger

        ledger = SQLiteLedger(env["SHOP_LEDGER"])
    try:
        assert {e.status for e in ledger.events(limit=100)} == {DONE} and len(ledger.events(limit=100)) == 12
    finally:
        ledger.close()
    # Each order was processed by exactly one of the two runs; the other found it done or in progress.
    lines = [line.split() for output in outputs for line in output.splitlines() if line.startswith("R", 13)]
    processed = Counter(words[1] for words in lines if words[0] == "processed")
    assert processed == Counter({f"R{i:02d}": 1 for i in range(12)}), outputs


def test_cli_reconcile_without_pending_orders_is_a_clear_error(keys, stub, tmp_path: Path):
    app = RECONCILE_APP.replace("alipay.pending_orders(lambda created_before: ORDERS)", "")
    (tmp_path / "shop_payments.py").write_text(textwrap.dedent(app))
    env = dict(os.environ, SHOP_APP_ID=APP_ID, SHOP_APP_KEY=keys.app_private_pem,
               SHOP_ALIPAY_KEY=keys.alipay_public_pem, SHOP_GATEWAY=stub.url, SHOP_HOOK_LOG=str(tmp_path / "hooks"),
               SHOP_LEDGER=str(tmp_path / "ledger.sqlite3"))
    env.pop("SHOP_POSTGRES", None)
    env.pop("ALIPAY_LEDGER", None)
    done = subprocess.run([sys.executable, "-m", "alipay_middleware", "reconcile", "--app", "shop_payments:alipay"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pending_orders" in done.stderr


def run_reconcile_cli(keys: Keys, stub: OpenApiGateway, tmp_path: Path, *options: str,
                      stderr: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    (tmp_path / "shop_payments.py").write_text(textwrap.dedent(RECONCILE_APP))
    env = dict(os.environ, SHOP_APP_ID=APP_ID, SHOP_APP_KEY=keys.app_private_pem,
               SHOP_ALIPAY_KEY=keys.alipay_public_pem, SHOP_GATEWAY=stub.url, SHOP_HOOK_LOG=str(tmp_path / "hooks"),
               SHOP_LEDGER=str(tmp_path / "ledger.sqlite3"))
    env.pop("SHOP_POSTGRES", None)
    env.pop("ALIPAY_LEDGER", None)
    return subprocess.Popen([sys.executable, "-m", "alipay_middleware", "reconcile", "--app", "shop_payments:alipay",
                             "--older-than-minutes", "0", *options],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_cli_reconcile_shows_progress_on_a_terminal_only(keys, stub, tmp_path: Path):
    for i in range(12):
        stub.add_trade(f"R{i:02d}", "TRADE_SUCCESS", "9.90")
    child, terminal = on_a_terminal(
        lambda fd: run_reconcile_cli(keys, stub, tmp_path, "--concurrency", "3", stderr=fd))
    out = child.communicate(timeout=60)[0].decode()
    assert child.returncode == 0, (out, terminal)
    assert b"\rreconciled 1/12 orders" in terminal and b"\rreconciled 12/12 orders\r\n" in terminal, terminal
    assert out.endswith("\n12 processed\n") and out.count("processed    R") == 12 and "reconciled" not in out

    # Not a terminal (cron, a pipe): no progress line, the same report.
    again = run_reconcile_cli(keys, stub, tmp_path)
    out, err = (part.decode() for part in again.communicate(timeout=60))
    assert again.returncode == 0 and out.endswith("\n12 already_paid\n"), (out, err)
    assert "reconciled" not in err and "\r" not in err


def test_cli_reconcile_refuses_a_concurrency_below_1(keys, stub, tmp_path: Path):
    child = run_reconcile_cli(keys, stub, tmp_path, "--concurrency", "0")
    out, err = (part.decode() for part in child.communicate(timeout=60))
    assert child.returncode == 2 and "--concurrency must be at least 1" in err and out == ""
