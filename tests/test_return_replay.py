"""Replayed returns must not starve notifications, nor make calls to Alipay under the merchant's name.

A buyer's signed legacy return URL never expires, and anyone holding it can replay it. What this file
pins: the ledger answers a return (or a notification resend) of a trade already done, with no
``notify_verify`` call; a message Alipay confirmed is not asked about again within its id's life; and
returns' calls to Alipay (the legacy origin check, the Open Platform ``confirm_returns`` query) take one
of ``return_checks`` slots, never waiting for one: when all are taken the page gets ``confirmed=False``
at once, and a genuine notification still completes, on real servers (uvicorn in this process;
gunicorn gthread in a subprocess) whose threads the held returns would otherwise all take.

Structural, not timed: the gateway stubs hold the returns' calls until the test releases them.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import uvicorn

from alipay_middleware import Alipay
from alipay_middleware.callbacks.memory import VerifiedIds
from alipay_middleware.ledger import DONE, SQLiteLedger
from conftest import (
    APP_ID,
    FORM,
    MD5_KEY,
    PARTNER,
    SELLER_ID,
    GatewayStub,
    Keys,
    Recorder,
    encode_form,
    inner_asgi,
    legacy_body,
    legacy_fields,
    make_config,
    md5_sign,
    notify_fields,
    sign_fields,
    signed_body,
)
from openapi_gateway import OpenApiGateway

NOTIFY, RETURN = "/alipay/notify", "/alipay/return"
#: Alipay's id for the return below; the return URL carries it encoded twice.
RETURN_ID = "RqPnCoPT3K9/vwbh3InYz+8Yh="
WAIT = 20.0  # the most any step here waits for something the test expects to happen


def legacy_return(out_trade_no: str = "L1", total_fee: str = "9.90", trade_status: str = "TRADE_SUCCESS",
                  notify_id: str = RETURN_ID, **extra: str) -> str:
    """A signed legacy return query, its ``notify_id`` encoded twice as Alipay sends it."""
    fields = {
        "is_success": "T", "sign_type": "MD5", "out_trade_no": out_trade_no, "subject": "Tea",
        "payment_type": "1", "exterface": "create_direct_pay_by_user", "trade_no": "2024010121001004000000000001",
        "trade_status": trade_status, "notify_id": quote_plus(notify_id), "notify_time": "2024-01-01 12:00:07",
        "notify_type": "trade_status_sync", "seller_email": "shop@example.com", "seller_id": PARTNER,
        "buyer_email": "buyer@example.com", "buyer_id": "2088102000000009", "total_fee": total_fee, **extra,
    }
    fields["sign"] = md5_sign(fields)
    return "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items())


def openapi_return(keys: Keys, out_trade_no: str = "A1", total_amount: str = "9.90") -> str:
    fields = {
        "charset": "utf-8", "out_trade_no": out_trade_no, "method": "alipay.trade.page.pay.return",
        "total_amount": total_amount, "trade_no": "2024010122001400000000000077", "auth_app_id": APP_ID,
        "version": "1.0", "app_id": APP_ID, "sign_type": "RSA2", "seller_id": SELLER_ID,
        "timestamp": "2024-01-01 12:00:09",
    }
    return encode_form(dict(fields, sign=sign_fields(fields, keys.alipay))).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LegacyShop:
    def __init__(self, make_legacy: Any, mount: Any, stub: GatewayStub, **alipay_kwargs: Any) -> None:
        self.alipay = make_legacy(orders={"L1": "9.90", "L2": "20.00"}, alipay_kwargs=alipay_kwargs)
        self.paid = Recorder()
        self.alipay.on_paid(self.paid)
        self.client = mount(self.alipay)
        self.stub = stub

    def back(self, query: str) -> str:
        response = self.client.request("GET", RETURN, query=query)
        assert response.status == 200
        return response.body.decode()

    def notify(self, fields: dict[str, str], issue: bool = True) -> tuple[int, bytes]:
        if issue:
            self.stub.issue(fields["notify_id"])
        response = self.client.request("POST", NOTIFY, legacy_body(fields))
        return response.status, response.body


@pytest.fixture
def shop(make_legacy: Any, mount: Any, gateway_stub: GatewayStub) -> LegacyShop:
    return LegacyShop(make_legacy, mount, gateway_stub)


# -- 1. the ledger first -------------------------------------------------------------------------------------

def test_replayed_return_of_a_paid_trade_asks_alipay_nothing(shop: LegacyShop) -> None:
    fields = legacy_fields("L1", "9.90")
    assert shop.notify(fields) == (200, b"success")
    # Long after the buyer came back: the id's minute is over and Alipay would refuse it now.
    shop.stub.set(RETURN_ID, "false")
    for _ in range(5):
        page = shop.back(legacy_return())
        assert "paid=True" in page and "confirmed=True" in page and "out_trade_no='L1'" in page
    assert shop.stub.count(RETURN_ID) == 0
    assert len(shop.stub.requests) == 1  # the notification's own origin check, nothing since
    assert len(shop.paid.calls) == 1


def test_return_first_then_its_replays_ask_alipay_once(shop: LegacyShop) -> None:
    shop.stub.issue(RETURN_ID)
    for _ in range(5):
        assert "paid=True" in shop.back(legacy_return())
    assert shop.stub.count(RETURN_ID) == 1 and len(shop.paid.calls) == 1


def test_resent_done_notification_asks_alipay_nothing(shop: LegacyShop) -> None:
    fields = legacy_fields("L1", "9.90")
    assert shop.notify(fields) == (200, b"success")
    # Once it has read success, Alipay no longer vouches for the id: only the ledger can answer.
    shop.stub.set(fields["notify_id"], "false")
    for _ in range(3):
        assert shop.notify(fields, issue=False) == (200, b"success")
    assert shop.stub.count(fields["notify_id"]) == 1 and len(shop.paid.calls) == 1


def test_done_key_does_not_answer_a_message_for_another_seller(shop: LegacyShop) -> None:
    assert shop.notify(legacy_fields("L1", "9.90")) == (200, b"success")
    # Signed with our key but addressed to another seller, under the same trade number: not a resend.
    status, body = shop.notify(legacy_fields("L1", "9.90", seller_id="2088999999999999"))
    assert (status, body) == (400, b"fail")
    assert len(shop.paid.calls) == 1


# -- 2. remembered for the id's life ------------------------------------------------------------------------

def test_return_replayed_within_its_id_life_asks_alipay_once(shop: LegacyShop) -> None:
    clock = Clock()
    shop.alipay.verified_returns.clock = clock
    shop.stub.issue(RETURN_ID)
    query = legacy_return(trade_status="WAIT_BUYER_PAY")  # not paid: the ledger cannot answer it
    for _ in range(3):
        assert "paid=False" in shop.back(query)
    assert shop.stub.count(RETURN_ID) == 1
    # Another message carrying the same id is not the message Alipay confirmed: asked again.
    assert "paid=False" in shop.back(legacy_return(trade_status="WAIT_BUYER_PAY", total_fee="9.80"))
    assert shop.stub.count(RETURN_ID) == 2
    clock.now += VerifiedIds.RETURN_LIFE + 1  # the id's minute is over: Alipay decides again
    shop.stub.set(RETURN_ID, "false")
    assert "return=None" in shop.back(query)
    assert shop.stub.count(RETURN_ID) == 3
    assert shop.paid.calls == []


def test_paid_return_whose_hook_failed_is_retried_without_asking_again(shop: LegacyShop) -> None:
    shop.stub.issue(RETURN_ID)
    shop.paid.fail_next = 1
    assert "paid=True" in shop.back(legacy_return())
    assert shop.paid.calls == []
    assert "paid=True" in shop.back(legacy_return())  # a reload within the minute
    assert [e.attempt for e in shop.paid.calls] == [2]
    assert shop.stub.count(RETURN_ID) == 1


def test_resend_of_a_failed_notification_within_its_life_asks_alipay_once(shop: LegacyShop) -> None:
    fields = legacy_fields("L1", "9.90")
    shop.paid.fail_next = 1
    assert shop.notify(fields) == (500, b"fail")
    assert shop.notify(fields, issue=False) == (200, b"success")
    assert shop.stub.count(fields["notify_id"]) == 1
    assert [e.attempt for e in shop.paid.calls] == [2]


def test_verified_ids_expire_and_stay_bounded() -> None:
    clock = Clock()
    ids = VerifiedIds(60.0, capacity=3, clock=clock)
    ids.remember(("a", "sig-a"))
    assert ids.recall(("a", "sig-a")) and not ids.recall(("a", "other-sig")) and not ids.recall(("b", "sig-a"))
    clock.now += 59
    assert ids.recall(("a", "sig-a"))
    clock.now += 1
    assert not ids.recall(("a", "sig-a")) and len(ids) == 0
    for name in "bcde":
        ids.remember((name, "s"))
    assert len(ids) == 3 and not ids.recall(("b", "s")) and ids.recall(("e", "s"))  # the oldest went first
    ids.remember(("c", "s"))  # remembered again: a fresh life, now the newest
    ids.remember(("f", "s"))
    assert ids.recall(("c", "s")) and not ids.recall(("d", "s"))


def test_verified_ids_from_many_threads() -> None:
    ids = VerifiedIds(60.0, capacity=100)
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(2000):
            ids.remember((f"{n}-{i}", "s"))
            ids.recall((f"{n}-{i // 2}", "s"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(ids) == 100


# -- 3. the bound, and what the page gets when it is full --------------------------------------------------

def test_legacy_return_whose_check_did_not_run_is_never_paid(make_legacy: Any, mount: Any,
                                                             gateway_stub: GatewayStub,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        shop = LegacyShop(make_legacy, mount, gateway_stub, return_checks=0)
    assert "return_checks=0" in caplog.text
    gateway_stub.issue(RETURN_ID)
    page = shop.back(legacy_return())
    assert "out_trade_no='L1'" in page and "paid=None" in page and "confirmed=False" in page
    assert "trade_status='TRADE_SUCCESS'" in page  # what the return says, shown, not believed
    assert shop.paid.calls == [] and shop.alipay.ledger.events() == [] and gateway_stub.requests == []
    # Notifications are not bounded by return_checks: the payment still arrives.
    assert shop.notify(legacy_fields("L1", "9.90")) == (200, b"success")
    assert len(shop.paid.calls) == 1
    assert "paid=True" in shop.back(legacy_return())  # and now the ledger answers the return


def test_open_platform_confirmation_is_bounded(make_alipay: Any, mount: Any, keys: Keys) -> None:
    stub = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    try:
        alipay = make_alipay(orders={"A1": "9.90", "A2": "20.00"}, config={"gateway": stub.url},
                             confirm_returns=True, hook_threads=2, return_checks=1)
        paid = Recorder()
        alipay.on_paid(paid)
        client = mount(alipay)
        stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
        stub.add_trade("A2", "TRADE_SUCCESS", "20.00")
        stub.fault("alipay.trade.query", "hold")
        held: dict[str, Any] = {}
        first = threading.Thread(target=lambda: held.update(page=client.request("GET", RETURN,
                                                                                 query=openapi_return(keys))))
        first.start()
        assert stub.holding.wait(WAIT)
        page = client.request("GET", RETURN, query=openapi_return(keys, "A2", "20.00")).body.decode()
        assert "out_trade_no='A2'" in page and "paid=None" in page and "confirmed=False" in page
        assert stub.count("alipay.trade.query") == 1 and paid.calls == []
        stub.release()
        first.join(WAIT)
        assert "paid=True" in held["page"].body.decode() and [e.out_trade_no for e in paid.calls] == ["A1"]
        # The slot is free again: the next return of A2 is confirmed.
        page = client.request("GET", RETURN, query=openapi_return(keys, "A2", "20.00")).body.decode()
        assert "paid=True" in page and "confirmed=True" in page
        assert [e.out_trade_no for e in paid.calls] == ["A1", "A2"]
    finally:
        stub.close()
    assert stub.problems == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"return_checks": 8}, r"return_checks must be an int from 0 to hook_threads - 1 \(7\)"),
        ({"hook_threads": 2, "return_checks": 2}, "raise hook_threads or lower return_checks"),
        ({"return_checks": -1}, "return_checks must be"),
        ({"return_checks": True}, "return_checks must be"),
        ({"return_checks": 2.0}, "return_checks must be"),
        ({"hook_threads": 1, "confirm_returns": True}, "confirm_returns needs return_checks >= 1"),
        ({"return_checks": 0, "confirm_returns": True}, "confirm_returns needs return_checks >= 1"),
    ],
    ids=["equal-to-pool", "above-pool", "negative", "bool", "float", "pool-of-one", "zero"],
)
def test_bad_return_checks_fail_at_construction(keys: Keys, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Alipay(make_config(keys), ledger=":memory:", **kwargs)


@pytest.mark.parametrize(("hook_threads", "expected"), [(8, 4), (3, 2), (1, 0)])
def test_default_return_checks_leave_notifications_a_thread(keys: Keys, hook_threads: int, expected: int) -> None:
    alipay = Alipay(make_config(keys), ledger=":memory:", hook_threads=hook_threads)
    assert alipay.return_checks == expected
    alipay.close()


# -- real servers: N returns held at Alipay, more arriving, and a genuine notification ---------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, target: str, body: bytes | None = None,
            timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers={"Content-Type": FORM} if body is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class InFlight:
    """Requests sent from threads; ``wait()`` says whether all of them have been answered."""

    def __init__(self, port: int, method: str, target: str, n: int, body: bytes | None = None) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._one, args=(port, method, target, body), daemon=True)
                        for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def _one(self, port: int, method: str, target: str, body: bytes | None) -> None:
        try:
            answer = request(port, method, target, body)
        except OSError as exc:  # the server went away (a failed test stopping it): an answer too
            answer = (0, repr(exc).encode())
        with self._lock:
            self.answers.append(answer)

    def wait(self, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)


@contextmanager
def uvicorn_serving(app: Any) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                                           log_config=None, ws="none", backlog=64))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(WAIT)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


BOUND, POOL, EXTRA = 2, 4, 3  # EXTRA > POOL - BOUND: without the bound, the held returns take every thread


def test_asgi_legacy_notification_completes_while_returns_are_held(make_legacy: Any,
                                                                   gateway_stub: GatewayStub) -> None:
    alipay = make_legacy(orders={"L1": "9.90", "L2": "20.00"}, verify_timeout=60,
                         alipay_kwargs={"hook_threads": POOL, "return_checks": BOUND})
    paid = Recorder()
    alipay.on_paid(paid)
    gateway_stub.issue(RETURN_ID)
    gateway_stub.set(RETURN_ID, "hold")
    target = f"{RETURN}?{legacy_return()}"
    with uvicorn_serving(alipay.asgi(inner_asgi)) as port:
        held = InFlight(port, "GET", target, BOUND)
        assert gateway_stub.wait_held(BOUND)
        # The replays that find every slot taken are answered at once, while the first ones still wait.
        extra = InFlight(port, "GET", target, EXTRA)
        assert extra.wait(), "returns over the bound waited for Alipay"
        for status, body in extra.answers:
            assert status == 200 and b"paid=None" in body and b"confirmed=False" in body
        # A genuine notification for another trade goes through the same pool, and completes.
        fields = legacy_fields("L2", "20.00")
        gateway_stub.issue(fields["notify_id"])
        assert request(port, "POST", NOTIFY, legacy_body(fields), timeout=WAIT) == (200, b"success")
        assert [e.out_trade_no for e in paid.calls] == ["L2"]
        assert gateway_stub.count(RETURN_ID) == BOUND and gateway_stub.held == BOUND
        gateway_stub.release()
        assert held.wait()
    assert all(status == 200 and b"paid=True" in body for status, body in held.answers)
    assert sorted(e.out_trade_no for e in paid.calls) == ["L1", "L2"]


def test_asgi_open_platform_notification_completes_while_confirmations_are_held(make_alipay: Any,
                                                                                keys: Keys) -> None:
    stub = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    try:
        alipay = make_alipay(orders={"A1": "9.90", "A2": "20.00"}, config={"gateway": stub.url},
                             confirm_returns=True, hook_threads=POOL, return_checks=BOUND)
        paid = Recorder()
        alipay.on_paid(paid)
        stub.add_trade("A1", "TRADE_SUCCESS", "9.90")
        stub.fault("alipay.trade.query", "hold", times=100)  # retries held too
        target = f"{RETURN}?{openapi_return(keys)}"
        with uvicorn_serving(alipay.asgi(inner_asgi)) as port:
            held = InFlight(port, "GET", target, BOUND)
            wait_until(lambda: stub.count("alipay.trade.query") == BOUND, "the confirmations to be held")
            extra = InFlight(port, "GET", target, EXTRA)
            assert extra.wait(), "returns over the bound waited for Alipay"
            for status, body in extra.answers:
                assert status == 200 and b"paid=None" in body and b"confirmed=False" in body
            body = signed_body(notify_fields("A2", "20.00"), keys.alipay)
            assert request(port, "POST", NOTIFY, body, timeout=WAIT) == (200, b"success")
            assert [e.out_trade_no for e in paid.calls] == ["A2"]
            assert stub.count("alipay.trade.query") == BOUND
            stub.release()
            assert held.wait()
        assert all(status == 200 and b"paid=True" in body for status, body in held.answers)
        assert sorted(e.out_trade_no for e in paid.calls) == ["A1", "A2"]
    finally:
        stub.close()
    assert stub.problems == []


GTHREAD_APP = '''
import os
from decimal import Decimal

from alipay_middleware import Alipay, LegacyConfig

config = LegacyConfig(partner=os.environ["SHOP_PARTNER"], key=os.environ["SHOP_KEY"],
                      gateway=os.environ["SHOP_GATEWAY"], verify_timeout=60)
alipay = Alipay(config, ledger="sqlite:///" + os.environ["SHOP_LEDGER"],
                hook_threads=int(os.environ["SHOP_BOUND"]) + 1, return_checks=int(os.environ["SHOP_BOUND"]))
alipay.order_amount({"L1": Decimal("9.90"), "L2": Decimal("20.00")}.get)


@alipay.on_paid
def paid(event):
    with open(os.environ["SHOP_HOOKS"], "a") as log:
        log.write(event.key + "\\n")


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"return={environ.get('alipay.return', 'absent')!r}".encode()]


app = alipay.wsgi(inner)
'''


@contextmanager
def gunicorn_gthread(workdir: Path, env: dict[str, str], threads: int) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--chdir", str(workdir), "--bind", f"127.0.0.1:{port}",
            "--no-control-socket", "--graceful-timeout", "5", "--log-level", "warning", "-w", "1",
            "-k", "gthread", "--threads", str(threads), "--timeout", "120", "shop_app:app"]
    log = workdir / "server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"gunicorn exited: {log.read_text()[-3000:]}"
            try:
                if request(port, "GET", "/health", timeout=2.0)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"gunicorn did not answer: {log.read_text()[-3000:]}"
            time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, and only it
                proc.wait(timeout=10)


@pytest.mark.slow
def test_wsgi_gunicorn_gthread_notification_completes_while_returns_are_held(gateway_stub: GatewayStub,
                                                                            tmp_path: Path) -> None:
    """gunicorn's gthread worker has a fixed pool of request threads (POOL); BOUND of them wait at Alipay,
    the rest must stay free for the notification."""
    (tmp_path / "shop_app.py").write_text(textwrap.dedent(GTHREAD_APP))
    ledger, hooks = tmp_path / "ledger.sqlite3", tmp_path / "hooks.log"
    env = dict(os.environ, SHOP_PARTNER=PARTNER, SHOP_KEY=MD5_KEY, SHOP_GATEWAY=gateway_stub.url,
               SHOP_LEDGER=str(ledger), SHOP_HOOKS=str(hooks), SHOP_BOUND=str(BOUND))
    gateway_stub.issue(RETURN_ID)
    gateway_stub.set(RETURN_ID, "hold")
    target = f"{RETURN}?{legacy_return()}"
    with gunicorn_gthread(tmp_path, env, POOL) as port:
        held = InFlight(port, "GET", target, BOUND)
        assert gateway_stub.wait_held(BOUND)
        extra = InFlight(port, "GET", target, EXTRA)
        assert extra.wait(), "returns over the bound waited for Alipay"
        for status, body in extra.answers:
            assert status == 200 and b"paid=None" in body and b"confirmed=False" in body
        fields = legacy_fields("L2", "20.00")
        gateway_stub.issue(fields["notify_id"])
        assert request(port, "POST", NOTIFY, legacy_body(fields), timeout=WAIT) == (200, b"success")
        assert hooks.read_text().split() == [f"paid:{PARTNER}:L2"]
        assert gateway_stub.count(RETURN_ID) == BOUND
        gateway_stub.release()
        assert held.wait()
    assert all(status == 200 and b"paid=True" in body for status, body in held.answers)
    assert sorted(hooks.read_text().split()) == [f"paid:{PARTNER}:L1", f"paid:{PARTNER}:L2"]
    stored = SQLiteLedger(str(ledger))
    try:
        assert stored.get(f"paid:{PARTNER}:L1").status == DONE
    finally:
        stored.close()
