"""Fault injection through the middleware, over real loopback HTTP: every fault the simulator can inject
ends with the order in the right state and each hook called exactly once per real event.

A small shop (an in-memory order table whose state only the hooks change) is wrapped by ``Alipay`` and
served for real through both fronts: the WSGI one on a threaded werkzeug server, the ASGI one on
uvicorn, each in a thread. The simulator is served the same way. Each test is one journey with a plain
HTTP client: the library's signed pay URL, the simulator's checkout page (pay, cancel or time out), the
redirect back to the shop's return page, then refunds or a close through ``alipay.client`` (legacy:
through the simulator's merchant console, as the legacy service has no refund API), ``sim.wait_idle()``,
and assertions on the shop's orders, the hook calls, the ledger and the simulator's deliveries.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import httpx
import pytest
import uvicorn
from werkzeug.serving import BaseWSGIServer, make_server

from alipay_middleware import Alipay, LegacyConfig
from alipay_middleware.events import CLOSED, PAID, REFUNDED, PaymentEvent
from alipay_middleware.simulator import FOREIGN_APP_ID, FOREIGN_PARTNER, SCHEDULE, Delivery, SimServer, Simulator
from alipay_middleware.wire.form import CST
from alipay_middleware.wire.signing import RsaSigner, sign_string
from conftest import MD5_KEY, PARTNER, Keys, inner_asgi, inner_wsgi, make_config, make_sim

#: Resend schedules, as fractions of Alipay's 25 hours. TINY: all 8 deliveries within half a second (for
#: faults the shop never acknowledges). SHORT: resends every few tens of ms, 9 s in all (room for a
#: restarting server). HOLD: out_of_order holds a notification back for SCHEDULE[1] * 0.02 = 4.8 s,
#: long enough for the next event of the trade to overtake it.
TINY = 0.000005
SHORT = 0.0001
HOLD = 0.02
WAIT = 20.0  # seconds: the bound of every wait; a passing test waits far less
SUBJECT = "乌龙茶 Oolong"


@dataclass(frozen=True)
class Protocol:
    name: str
    legacy: bool
    charset: str


OPENAPI = Protocol("openapi", False, "utf-8")
OPENAPI_GBK = Protocol("openapi-gbk", False, "gbk")
LEGACY = Protocol("legacy", True, "utf-8")
LEGACY_GBK = Protocol("legacy-gbk", True, "gbk")
ALL_PROTOCOLS = [pytest.param(p, id=p.name) for p in (OPENAPI, OPENAPI_GBK, LEGACY, LEGACY_GBK)]
PROTOCOLS = [pytest.param(p, id=p.name) for p in (OPENAPI, LEGACY)]
FRONTS = ["wsgi", "asgi"]

_orders = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# -- the shop under test ----------------------------------------------------------------------------------


@dataclass
class Order:
    amount: Decimal
    paid: bool = False
    closed: bool = False
    refunds: set[str] = field(default_factory=set)  # event keys
    fully_refunded: bool = False

    @property
    def state(self) -> str:
        # Derived from what the hooks saw, so a refund overtaking the payment (out_of_order) cannot leave
        # the order "paid".
        if self.fully_refunded:
            return "refunded"
        if self.refunds:
            return "partly_refunded"
        if self.paid:
            return "paid"
        return "closed" if self.closed else "unpaid"


@dataclass(frozen=True)
class HookCall:
    kind: str
    key: str
    attempt: int
    raised: bool


class Listener:
    """The shop on 127.0.0.1:``port`` through one front; ``stop()`` and ``start()`` again on that port."""

    def __init__(self, front: str, app: Any) -> None:
        self.front = front
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self._wsgi: BaseWSGIServer | None = None
        self._uvicorn: uvicorn.Server | None = None

    def start(self) -> None:
        if self.front == "wsgi":
            self._wsgi = make_server("127.0.0.1", self.port, self.app, threaded=True)
            self._thread = threading.Thread(target=self._wsgi.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()
            return
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="off",
                                               log_level="warning", log_config=None, ws="none"))
        self._uvicorn = server
        self._thread = threading.Thread(target=server.run, daemon=True)
        self._thread.start()
        thread = self._thread
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert server.started, "uvicorn did not start"

    def stop(self) -> None:
        if self._wsgi is not None:
            self._wsgi.shutdown()
            self._wsgi.server_close()
            self._wsgi = None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            self._uvicorn = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


class Shop:
    """Orders, hooks that record every call and move the order's state, and the middleware around a
    minimal app (conftest's ``inner_wsgi``/``inner_asgi``: they echo the verified return)."""

    def __init__(self, protocol: Protocol, front: str, alipay: Alipay, sim: Simulator, server: SimServer,
                 keys: Keys) -> None:
        self.protocol = protocol
        self.alipay = alipay
        self.sim = sim
        self.sim_server = server
        self.keys = keys
        self.orders: dict[str, Order] = {}
        self.calls: list[HookCall] = []
        self.fail_once: set[str] = set()  # hook kinds whose next call raises
        self.lock = threading.Lock()
        alipay.order_amount(self.amount_of)
        alipay.on_paid(self.hook)
        alipay.on_refunded(self.hook)
        alipay.on_closed(self.hook)
        self.listener = Listener(front, alipay.wsgi(inner_wsgi) if front == "wsgi" else alipay.asgi(inner_asgi))
        self.url = self.listener.url
        self.http = httpx.Client(trust_env=False, follow_redirects=False, timeout=15.0)

    def amount_of(self, out_trade_no: str) -> Decimal | None:
        order = self.orders.get(out_trade_no)
        return order.amount if order is not None else None

    def hook(self, event: PaymentEvent) -> None:
        with self.lock:
            raising = event.kind in self.fail_once
            self.fail_once.discard(event.kind)
            self.calls.append(HookCall(event.kind, event.key, event.attempt, raising))
            if raising:
                raise RuntimeError("the shop's database is down (on purpose)")
            order = self.orders[event.out_trade_no]
            if event.kind == PAID:
                order.paid = True
            elif event.kind == CLOSED:
                order.closed = True
            elif event.kind == REFUNDED:
                order.refunds.add(event.key)
                # The legacy service has no refund_fee; a refund of everything left closes the trade.
                order.fully_refunded |= (event.trade_status == "TRADE_CLOSED" or event.refund_fee == order.amount)

    def close(self) -> None:
        self.http.close()
        self.listener.stop()

    # -- the buyer's journey -------------------------------------------------------------------------

    def new_order(self, amount: str = "9.90") -> str:
        number = f"F{next(_orders)}x{time.time_ns() % 10**9}"
        self.orders[number] = Order(Decimal(amount))
        return number

    def pay_url(self, out_trade_no: str) -> str:
        helper = self.alipay.helper(self.url)
        amount = self.orders[out_trade_no].amount
        if self.protocol.legacy:  # input_charset from LegacyConfig: the URL is signed and encoded in it
            url: str = helper.direct_pay_url(out_trade_no=out_trade_no, total_fee=amount, subject=SUBJECT)
            return url
        url = helper.page_pay_url(out_trade_no=out_trade_no, total_amount=amount, subject=SUBJECT)
        if self.protocol.charset == "utf-8":
            return url
        # The library always asks in UTF-8; a GBK merchant (another SDK) signs and encodes in GBK, and
        # Alipay then notifies in GBK: re-sign the same request that way.
        params = {k: v for k, v in parse_qsl(urlsplit(url).query) if k != "sign"}
        params["charset"] = "GBK"
        params["sign"] = RsaSigner(self.keys.app, "RSA2").sign(sign_string(params).encode("gbk"))
        return self.sim_server.gateway_url + "?" + urlencode(params, quote_via=quote_plus, encoding="gbk")

    def checkout(self, out_trade_no: str, action: str = "pay") -> httpx.Response:
        """Open the pay URL, press a button on the simulator's checkout page: its answer."""
        opened = self.http.get(self.pay_url(out_trade_no))
        assert opened.status_code == 303, opened.text[:500]
        page = self.sim_server.url + opened.headers["location"]
        assert self.http.get(page).status_code == 200
        return self.http.post(page, data={"action": action})

    def pay(self, out_trade_no: str, *, follow_return: bool = True) -> str | None:
        """Pay; the location of the redirect back to the shop (the return), followed unless told not to."""
        answer = self.checkout(out_trade_no)
        assert answer.status_code == 303, answer.text[:500]
        location = answer.headers["location"]
        assert location.startswith(self.url + "/alipay/return?")
        if follow_return:
            self.follow(location)
        return location

    def follow(self, location: str) -> None:
        page = self.http.get(location)
        assert page.status_code == 200
        assert "return=ReturnResult(" in page.text, page.text[:300]  # verified by the middleware

    def refund(self, out_trade_no: str, amount: str, number: int) -> None:
        if self.protocol.legacy:
            # Legacy refunds are deduped by trade and gmt_refund, which has whole seconds here (as at
            # Alipay): a second refund in the same second would be taken for a resend of the first.
            trade = self.sim.trade(out_trade_no)
            assert trade is not None
            last = max((r.at for r in trade.refunds.values()), default=None)
            if last is not None:
                wait_for(lambda: datetime.now(CST).replace(microsecond=0) > last.replace(microsecond=0),
                         "the next second")
            self.sim.refund(out_trade_no, amount)
            return
        result = self.alipay.client.refund(out_trade_no=out_trade_no, refund_amount=amount,
                                           out_request_no=f"{out_trade_no}-r{number}")
        assert result.fund_change and result.confirmed

    def close_unpaid(self, out_trade_no: str) -> None:
        """The buyer gives up: Open Platform, the shop closes the trade (after the buyer left the checkout
        page, the trade exists at Alipay); legacy, the trade times out (it has no close API)."""
        if self.protocol.legacy:
            assert self.checkout(out_trade_no, "timeout").status_code == 200
            return
        assert self.checkout(out_trade_no, "cancel").status_code == 200
        self.alipay.client.close(out_trade_no=out_trade_no)

    # -- what happened ---------------------------------------------------------------------------------

    def successful_calls(self) -> Counter[tuple[str, str]]:
        return Counter((c.kind, c.key) for c in self.calls if not c.raised)


@pytest.fixture
def simulate(keys: Keys) -> Iterator[Callable[..., tuple[Simulator, SimServer]]]:
    started: list[SimServer] = []

    def _simulate(time_scale: float = TINY) -> tuple[Simulator, SimServer]:
        sim = make_sim(keys, time_scale=time_scale)
        started.append(sim.serve())
        return sim, started[-1]

    yield _simulate
    for server in started:
        server.close()


@pytest.fixture
def open_shop(keys: Keys, new_ledger: Callable[[], Any],
              simulate: Callable[..., tuple[Simulator, SimServer]]) -> Iterator[Callable[..., Shop]]:
    """``open_shop(protocol, front, time_scale=TINY, start=True)``: a simulator and a shop wired to it."""
    shops: list[Shop] = []

    def _open(protocol: Protocol, front: str, time_scale: float = TINY, start: bool = True) -> Shop:
        sim, server = simulate(time_scale)
        config: Any
        if protocol.legacy:
            config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=server.gateway_url,
                                  input_charset=protocol.charset)
        else:
            config = make_config(keys, alipay_public_key=sim.alipay_public_key_pem, gateway=server.gateway_url)
        shop = Shop(protocol, front, Alipay(config, ledger=new_ledger()), sim, server, keys)
        shops.append(shop)
        if start:
            shop.listener.start()
        return shop

    yield _open
    for shop in shops:
        shop.close()
        shop.alipay.close()


# -- the checks every test ends with ---------------------------------------------------------------------


def notifications(sim: Simulator, out_trade_no: str, copy: str = "") -> dict[str, list[Delivery]]:
    """The trade's deliveries of one kind (``""``: the real notifications), by notify_id, in order."""
    grouped: dict[str, list[Delivery]] = {}
    for delivery in sim.deliveries():
        if delivery.out_trade_no == out_trade_no and delivery.copy == copy:
            grouped.setdefault(delivery.notify_id, []).append(delivery)
    return grouped


def check(shop: Shop, out_trade_no: str, state: str, *, paid: int = 0, refunded: int = 0, closed: int = 0) -> None:
    """The order's state, one successful hook call per real event, the ledger, and every real
    notification acknowledged (``success``) on its last delivery and never delivered after that."""
    assert shop.sim.wait_idle(WAIT), "the simulator still has notifications pending"
    assert shop.orders[out_trade_no].state == state
    calls = shop.successful_calls()
    assert all(n == 1 for n in calls.values()), calls
    kinds = Counter(kind for kind, _ in calls)
    assert (kinds[PAID], kinds[REFUNDED], kinds[CLOSED]) == (paid, refunded, closed), shop.calls

    events = shop.alipay.ledger.events(out_trade_no=out_trade_no)
    done = {e.key: e for e in events if e.status == "done"}
    assert set(done) == {key for _, key in calls}
    assert Counter(e.kind for e in done.values()) == Counter({k: n for k, n in kinds.items() if n})

    real = notifications(shop.sim, out_trade_no)
    assert len(real) == paid + refunded + closed
    twins = notifications(shop.sim, out_trade_no, "duplicate")  # duplicate_notify: each attempt went twice
    for notify_id, attempts in real.items():
        assert [d.attempt for d in attempts] == list(range(1, len(attempts) + 1))
        answered = [d.acknowledged or any(t.acknowledged for t in twins.get(notify_id, []) if t.attempt == d.attempt)
                    for d in attempts]
        assert answered == [False] * (len(attempts) - 1) + [True], attempts
        assert attempts[-1].charset == shop.protocol.charset


# -- the journeys without faults -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_pay_then_refund_part_then_the_rest(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    order = shop.new_order("9.90")
    shop.pay(order)
    wait_for(lambda: shop.orders[order].paid, "on_paid")
    assert shop.sim.wait_idle(WAIT)
    shop.refund(order, "2.00", 1)
    assert shop.sim.wait_idle(WAIT)
    assert shop.orders[order].state == "partly_refunded"
    shop.refund(order, "7.90", 2)
    check(shop, order, "refunded", paid=1, refunded=2)
    trade = shop.sim.trade(order)
    assert trade is not None and (trade.status, trade.refunded_amount) == ("TRADE_CLOSED", Decimal("9.90"))
    statuses = [d.fields["trade_status"] for d in shop.sim.deliveries() if d.out_trade_no == order]
    assert statuses == ["TRADE_SUCCESS", "TRADE_SUCCESS", "TRADE_CLOSED"]


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_closed_unpaid(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    order = shop.new_order("3.00")
    shop.close_unpaid(order)
    check(shop, order, "closed", closed=1)
    trade = shop.sim.trade(order)
    assert trade is not None and trade.status == "TRADE_CLOSED"


# -- one fault at a time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_duplicate_notify(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    shop.sim.faults.duplicate_notify = True
    order = shop.new_order()
    shop.pay(order)
    assert shop.sim.wait_idle(WAIT)
    shop.refund(order, "9.90", 1)
    check(shop, order, "refunded", paid=1, refunded=1)
    twins = notifications(shop.sim, order, "duplicate")
    assert set(twins) == set(notifications(shop.sim, order))  # every delivery really went twice


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_out_of_order_refund_before_payment(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front, time_scale=HOLD)
    shop.sim.faults.out_of_order = True
    order = shop.new_order()
    shop.pay(order)  # the payment's notification is held back...
    shop.refund(order, "9.90", 1)  # ...until the refund's has been delivered
    check(shop, order, "refunded", paid=1, refunded=1)
    delivered = [d for d in shop.sim.deliveries() if d.out_trade_no == order]
    assert [("gmt_refund" in d.fields, d.attempt) for d in delivered] == [(True, 1), (False, 1)]
    if protocol.legacy:  # the paid return ran on_paid before either notification arrived
        assert [c.kind for c in shop.calls] == [PAID, REFUNDED]
    else:  # on_refunded first: the shop cannot rely on event order within a trade
        assert [c.kind for c in shop.calls] == [REFUNDED, PAID]


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_notify_before_return(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    shop.sim.faults.notify_before_return = True
    order = shop.new_order()
    location = shop.pay(order, follow_return=False)
    # The notification was made and answered before the checkout page redirected the buyer.
    assert shop.orders[order].state == "paid"
    [first] = [d for d in shop.sim.deliveries() if d.out_trade_no == order]
    assert first.acknowledged
    assert location is not None
    shop.follow(location)
    check(shop, order, "paid", paid=1)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_foreign_app_id(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    shop.sim.faults.foreign_app_id = True
    order = shop.new_order()
    shop.pay(order)
    check(shop, order, "paid", paid=1)
    [foreign] = notifications(shop.sim, order, "foreign_app_id").values()
    assert len(foreign) == len(SCHEDULE)  # refused every time: Alipay gives up after 8 deliveries
    assert {(d.status, d.answer) for d in foreign} == {(400, "fail")}
    if protocol.legacy:
        assert foreign[0].fields["seller_id"] == FOREIGN_PARTNER
    else:
        assert foreign[0].fields["app_id"] == FOREIGN_APP_ID
    kept = [e for e in shop.alipay.ledger.events(out_trade_no=order) if e.status != "done"]
    assert kept and {e.status for e in kept} == {"rejected"}
    assert {e.reason for e in kept} == {"seller_id_mismatch" if protocol.legacy else "app_id_mismatch"}


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_tamper_amount(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    shop.sim.faults.tamper_amount = True
    order = shop.new_order()
    # No return: a legacy return is Alipay's own word that the order is paid (and carries the true
    # amount), which would rightly pay the order; here only the tampered notification arrives.
    shop.pay(order, follow_return=False)
    assert shop.sim.wait_idle(WAIT)
    assert shop.orders[order].state == "unpaid"
    assert shop.calls == []
    [attempts] = notifications(shop.sim, order).values()
    assert len(attempts) == len(SCHEDULE)  # never acknowledged, so resent until Alipay gives up
    assert {(d.status, d.answer) for d in attempts} == {(409, "fail")}
    assert {d.fields["total_fee" if protocol.legacy else "total_amount"] for d in attempts} == {"0.01"}
    [event] = shop.alipay.ledger.events(out_trade_no=order)
    assert (event.kind, event.status, event.reason) == (PAID, "rejected", "amount_mismatch")
    trade = shop.sim.trade(order)
    assert trade is not None and trade.status == "TRADE_SUCCESS"


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_hook_fails_once(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    shop.fail_once = {PAID, REFUNDED}
    order = shop.new_order()
    shop.pay(order)
    assert shop.sim.wait_idle(WAIT)
    shop.refund(order, "9.90", 1)
    check(shop, order, "refunded", paid=1, refunded=1)
    by_kind = {kind: [(c.attempt, c.raised) for c in shop.calls if c.kind == kind] for kind in (PAID, REFUNDED)}
    assert by_kind == {PAID: [(1, True), (2, False)], REFUNDED: [(1, True), (2, False)]}
    assert {e.kind: e.attempts for e in shop.alipay.ledger.events(out_trade_no=order)} == {PAID: 2, REFUNDED: 2}
    refund_attempts = list(notifications(shop.sim, order).values())[-1]
    assert [(d.status, d.acknowledged) for d in refund_attempts] == [(500, False), (200, True)]
    if not protocol.legacy:  # a legacy paid return ran (and failed) the hook first: its notify succeeded
        paid_attempts = list(notifications(shop.sim, order).values())[0]
        assert [(d.status, d.acknowledged) for d in paid_attempts] == [(500, False), (200, True)]


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_shop_down_for_the_first_delivery(open_shop: Callable[..., Shop], front: str, protocol: Protocol) -> None:
    shop = open_shop(protocol, front, time_scale=SHORT, start=False)
    order = shop.new_order()
    location = shop.pay(order, follow_return=False)
    wait_for(lambda: any(d.out_trade_no == order for d in shop.sim.deliveries()), "the first delivery")
    shop.listener.start()
    assert location is not None
    shop.follow(location)
    check(shop, order, "paid", paid=1)
    [attempts] = notifications(shop.sim, order).values()
    assert attempts[0].status is None and "refused" in attempts[0].answer.lower()


# -- faults combined --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_duplicates_overtaking_and_early_notify(open_shop: Callable[..., Shop], front: str,
                                                protocol: Protocol) -> None:
    shop = open_shop(protocol, front, time_scale=HOLD)
    faults = shop.sim.faults
    faults.duplicate_notify = faults.out_of_order = faults.notify_before_return = True
    order = shop.new_order()
    shop.pay(order)
    shop.refund(order, "1.00", 1)
    shop.refund(order, "8.90", 2)
    check(shop, order, "refunded", paid=1, refunded=2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_foreign_copies_duplicates_and_a_failing_hook(open_shop: Callable[..., Shop], front: str,
                                                      protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    faults = shop.sim.faults
    faults.duplicate_notify = faults.foreign_app_id = True
    shop.fail_once = {PAID}
    order = shop.new_order()
    shop.pay(order)
    assert shop.sim.wait_idle(WAIT)
    shop.refund(order, "4.00", 1)
    check(shop, order, "partly_refunded", paid=1, refunded=1)
    assert [(c.attempt, c.raised) for c in shop.calls if c.kind == PAID] == [(1, True), (2, False)]
    assert all(not d.acknowledged for attempts in notifications(shop.sim, order, "foreign_app_id").values()
               for d in attempts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("front", FRONTS)
def test_tampered_duplicates_then_an_honest_close(open_shop: Callable[..., Shop], front: str,
                                                  protocol: Protocol) -> None:
    shop = open_shop(protocol, front)
    faults = shop.sim.faults
    faults.duplicate_notify = faults.tamper_amount = True
    tampered = shop.new_order()
    shop.pay(tampered, follow_return=False)
    assert shop.sim.wait_idle(WAIT)
    faults.tamper_amount = False
    honest = shop.new_order("5.00")
    shop.close_unpaid(honest)
    check(shop, honest, "closed", closed=1)
    assert shop.orders[tampered].state == "unpaid"
    assert [c.kind for c in shop.calls] == [CLOSED]
    assert not any(d.acknowledged for d in shop.sim.deliveries() if d.out_trade_no == tampered)


# -- the PostgreSQL ledger, once ---------------------------------------------------------------------------


@pytest.mark.parametrize("ledger_backend", ["postgres"])
@pytest.mark.parametrize("front", FRONTS)
def test_postgres_ledger_duplicates_and_a_failing_hook(open_shop: Callable[..., Shop], front: str) -> None:
    shop = open_shop(OPENAPI, front)
    shop.sim.faults.duplicate_notify = True
    shop.fail_once = {PAID}
    order = shop.new_order()
    shop.pay(order)
    assert shop.sim.wait_idle(WAIT)
    shop.refund(order, "9.90", 1)
    check(shop, order, "refunded", paid=1, refunded=1)
    assert type(shop.alipay.ledger).__name__ == "PostgresLedger"
