"""The simulator on a real loopback port, talking to a real shop: the library's pay helpers and clients
against ``server.gateway_url``, notifications delivered to an ``Alipay`` middleware app on a second
loopback server (configured with ``sim.alipay_public_key_pem``), the resend schedule and the faults.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import pytest
from Crypto.PublicKey import RSA
from werkzeug.serving import make_server
from werkzeug.test import Client

from alipay_middleware import Alipay, AlipayApiError, AlipayClient, LegacyClient, LegacyConfig, OpenApiConfig
from alipay_middleware.simulator import FOREIGN_APP_ID, SCHEDULE, Delivery, Faults, LegacyMerchant, Merchant, Simulator
from alipay_middleware.simulator.notifier import Notification, Notifier, is_loopback_url
from alipay_middleware.wire.signing import RsaSigner, sign_string
from conftest import (
    APP_ID,
    LEGACY_ALIPAY_KEY,
    LEGACY_MERCHANT_KEY,
    MD5_KEY,
    PARTNER,
    RSA_PARTNER,
    SELLER_ID,
    Keys,
    make_sim,
)

#: 25 hours of resends in about two seconds.
FAST = 0.00002


class Loopback:
    """A WSGI app on a threaded werkzeug server on 127.0.0.1."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Shop:
    alipay: Alipay
    server: Loopback
    events: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def visit(self, url: str) -> str:
        """The browser following the simulator's redirect back to the shop."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()


def open_shop(config: OpenApiConfig | LegacyConfig, ledger: str, orders: dict[str, str]) -> Shop:
    alipay = Alipay(config, ledger=ledger)
    events: list[Any] = []
    alipay.order_amount(lambda out_trade_no: Decimal(orders[out_trade_no]) if out_trade_no in orders else None)
    alipay.on_paid(events.append)
    alipay.on_refunded(events.append)
    alipay.on_closed(events.append)

    def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        verified = environ.get("alipay.return") is not None
        return [b"return ok" if verified else b"shop page"]

    return Shop(alipay, Loopback(alipay.wsgi(inner)), events)


@pytest.fixture
def served(keys: Keys) -> Iterator[tuple[Simulator, Any]]:
    sim = make_sim(keys, time_scale=FAST)
    server = sim.serve()
    yield sim, server
    server.close()


@pytest.fixture
def shops(tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    opened: list[Shop] = []

    def _open(config: OpenApiConfig | LegacyConfig, orders: dict[str, str]) -> Shop:
        shop = open_shop(config, f"sqlite:///{tmp_path / f'ledger{len(opened)}.sqlite3'}", orders)
        opened.append(shop)
        return shop

    yield _open
    for shop in opened:
        shop.server.close()
        shop.alipay.close()


def openapi_shop(shops: Callable[..., Shop], keys: Keys, sim: Simulator, server: Any, **orders: str) -> Shop:
    config = OpenApiConfig(app_id=APP_ID, app_private_key=keys.app_private_pem, seller_id=SELLER_ID,
                           alipay_public_key=sim.alipay_public_key_pem, gateway=server.gateway_url)
    return shops(config, orders)


def pay(sim: Simulator, pay_url: str) -> Any:
    """The buyer opens the pay URL and presses Pay: the simulator's answer (a 303 to the return_url)."""
    client = Client(sim)
    target = urlsplit(pay_url)
    location = client.get(f"{target.path}?{target.query}").headers["Location"]
    return client.post(location, data={"action": "pay"})


def first_attempts(deliveries: list[Delivery]) -> list[Delivery]:
    return [d for d in deliveries if d.attempt == 1 and d.copy != "duplicate"]


# -- the Open Platform, end to end -----------------------------------------------------------------------


def test_page_pay_notify_return_and_the_client(served: tuple[Simulator, Any], shops: Callable[..., Shop],
                                                keys: Keys) -> None:
    sim, server = served
    shop = openapi_shop(shops, keys, sim, server, E1="9.90")
    url = shop.alipay.helper(shop.url).page_pay_url(out_trade_no="E1", total_amount="9.90", subject="茶 Tea",
                                                    passback_params="a%3D1%26b")
    assert url.startswith(server.gateway_url + "?")
    response = pay(sim, url)
    assert response.status_code == 303
    back = response.headers["Location"]
    returned = dict(parse_qsl(urlsplit(back).query))
    assert returned["method"] == "alipay.trade.page.pay.return" and "trade_status" not in returned
    assert "notify_id" not in returned
    assert shop.visit(back) == "return ok"
    assert sim.wait_idle(10)
    [delivery] = sim.deliveries()
    assert delivery.acknowledged and delivery.attempt == 1
    fields = delivery.fields
    for name in ("notify_id", "notify_time", "gmt_payment", "buyer_id", "receipt_amount", "gmt_create"):
        assert fields[name]
    assert (fields["trade_status"], fields["total_amount"], fields["app_id"], fields["auth_app_id"],
            fields["seller_id"], fields["passback_params"]) == ("TRADE_SUCCESS", "9.90", APP_ID, APP_ID, SELLER_ID,
                                                                 "a%3D1%26b")
    [paid] = shop.events
    assert (paid.kind, paid.out_trade_no, paid.total_amount) == ("paid", "E1", Decimal("9.90"))

    client = AlipayClient(shop.alipay)
    trade = client.query(out_trade_no="E1")
    assert trade.paid and trade.total_amount == Decimal("9.90") and trade.trade_no == returned["trade_no"]
    with pytest.raises(AlipayApiError) as error:
        client.close(out_trade_no="E1")
    assert error.value.sub_code == "ACQ.TRADE_STATUS_ERROR"
    first = client.refund(out_trade_no="E1", refund_amount="2.00", out_request_no="r1")
    assert first.fund_change and first.confirmed and first.refund_fee == Decimal("2.00")
    retry = client.refund(out_trade_no="E1", refund_amount="2.00", out_request_no="r1")
    assert not retry.fund_change and retry.confirmed and retry.confirmation is not None
    assert client.refund_query(out_trade_no="E1", out_request_no="r1").refunded
    rest = client.refund(out_trade_no="E1", refund_amount="7.90", out_request_no="r2")
    assert rest.refund_fee == Decimal("9.90")
    assert client.query(out_trade_no="E1").trade_status == "TRADE_CLOSED"
    assert sim.wait_idle(10)
    refunds = [d.fields for d in sim.deliveries()[1:]]
    assert [(f["trade_status"], f["refund_fee"], f["out_biz_no"]) for f in refunds] == \
        [("TRADE_SUCCESS", "2.00", "r1"), ("TRADE_CLOSED", "9.90", "r2")]
    assert all(d.acknowledged for d in sim.deliveries())
    assert [(e.kind, e.out_biz_no) for e in shop.events[1:]] == [("refunded", "r1"), ("refunded", "r2")]


def test_gbk_wap_pay_and_a_timed_out_trade(served: tuple[Simulator, Any], shops: Callable[..., Shop],
                                           keys: Keys) -> None:
    sim, server = served
    shop = openapi_shop(shops, keys, sim, server, G1="1.00", G2="2.00")
    for number in ("G1", "G2"):
        params = dict(parse_qsl(urlsplit(shop.alipay.helper(shop.url).wap_pay_url(
            out_trade_no=number, total_amount="1.00" if number == "G1" else "2.00", subject="乌龙茶")).query))
        params = {k: v for k, v in params.items() if k != "sign"}
        params["charset"] = "GBK"
        params["sign"] = RsaSigner(keys.app, "RSA2").sign(sign_string(params).encode("gbk"))
        client = Client(sim)
        location = client.get("/gateway.do?" + urlencode(params, quote_via=quote_plus, encoding="gbk"))
        assert location.status_code == 303, location.get_data(as_text=True)
        client.post(location.headers["Location"], data={"action": "pay" if number == "G1" else "timeout"})
    assert sim.wait_idle(10)
    assert sorted((d.fields["out_trade_no"], d.fields["trade_status"], d.fields["charset"], d.acknowledged)
                  for d in sim.deliveries()) == [("G1", "TRADE_SUCCESS", "gbk", True),
                                                 ("G2", "TRADE_CLOSED", "gbk", True)]
    assert {d.fields["subject"] for d in sim.deliveries()} == {"乌龙茶"}
    assert sorted((e.kind, e.out_trade_no) for e in shop.events) == [("closed", "G2"), ("paid", "G1")]


# -- the legacy service, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme, charset", [("MD5", "utf-8"), ("MD5", "gbk"), ("RSA", "utf-8")])
def test_legacy_pay_return_notify_and_refund(served: tuple[Simulator, Any], shops: Callable[..., Shop],
                                             scheme: str, charset: str) -> None:
    sim, server = served
    if scheme == "MD5":
        config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=server.gateway_url, input_charset=charset)
    else:
        config = LegacyConfig(partner=RSA_PARTNER, sign_type="RSA", private_key=LEGACY_MERCHANT_KEY.export_key()
                              .decode(), alipay_public_key=sim.legacy_public_key_pem, gateway=server.gateway_url)
    shop = shops(config, {"L1": "9.90"})
    url = shop.alipay.helper(shop.url).direct_pay_url(out_trade_no="L1", total_fee="9.90", subject="茶叶",
                                                      extra_common_param="x=1")
    back = pay(sim, url).headers["Location"]
    returned = dict(parse_qsl(urlsplit(back).query, encoding=charset))
    assert (returned["is_success"], returned["trade_status"], returned["exterface"]) == \
        ("T", "TRADE_SUCCESS", "create_direct_pay_by_user")
    assert shop.visit(back) == "return ok"  # verified, origin-checked with notify_verify on the simulator
    assert sim.wait_idle(10)
    [delivery] = sim.deliveries()
    assert delivery.acknowledged and delivery.charset == charset
    assert (delivery.fields["sign_type"], delivery.fields["extra_common_param"]) == (scheme, "x=1")
    assert [e.kind for e in shop.events] == ["paid"]  # the return and the notify: one payment
    verify = f"{server.gateway_url}?service=notify_verify&partner={config.partner}&notify_id="
    assert shop.visit(verify + delivery.notify_id) == "false"  # answered success: forgotten
    assert shop.visit(verify + returned["notify_id"]) == "true"  # a return's id lives about a minute
    trade = LegacyClient(shop.alipay).query(out_trade_no="L1")
    assert trade.paid and trade.total_amount == Decimal("9.90")
    sim.refund("L1", "9.90")
    assert sim.wait_idle(10)
    refund = sim.deliveries()[-1]
    assert refund.acknowledged and refund.fields["refund_status"] == "REFUND_SUCCESS"
    assert refund.fields["trade_status"] == "TRADE_CLOSED" and refund.fields["gmt_refund"]
    assert [e.kind for e in shop.events] == ["paid", "refunded"]


# -- resends -------------------------------------------------------------------------------------------


class Answering:
    """A notify endpoint answering from a script (the last answer repeats), recording notify ids."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.seen: list[str] = []
        self.server = Loopback(self)
        self.url = self.server.url

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.seen.append(dict(parse_qsl(body.decode("ascii")))["notify_id"])
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Wait until ``condition()`` holds (True), or give up after ``timeout`` seconds (False)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        pause.wait(0.02)
    return condition()


def paid_with_notify_url(sim: Simulator, keys: Keys, notify_url: str, out_trade_no: str = "N1") -> None:
    from test_simulator import pay_params

    client = Client(sim)
    location = client.get("/gateway.do?" + urlencode(pay_params(keys, out_trade_no, notify_url=notify_url)))
    client.post(location.headers["Location"], data={"action": "pay"})


@pytest.mark.parametrize("answers, attempts", [
    ((b"success",), 1),
    ((b"fail", b"SUCCESS", b"success "), 8),  # only the exact 7 bytes count: given up after 8
    ((b"fail", b"", b"success"), 3),
], ids=["first", "never", "third"])
def test_resends_follow_the_schedule_until_success(keys: Keys, answers: tuple[bytes, ...], attempts: int) -> None:
    sim = make_sim(keys, time_scale=FAST)
    endpoint = Answering(*answers)
    try:
        paid_with_notify_url(sim, keys, endpoint.url + "/notify")
        assert sim.wait_idle(20)
        deliveries = sim.deliveries()
        assert [d.attempt for d in deliveries] == list(range(1, attempts + 1))
        assert len(set(endpoint.seen)) == 1 and len(endpoint.seen) == attempts  # the same notify_id each time
        assert deliveries[-1].acknowledged is (attempts < 8 or answers[-1] == b"success")
    finally:
        sim.close()
        endpoint.server.close()
    assert len(SCHEDULE) == 8 and 24 * 3600 < sum(SCHEDULE) <= 25 * 3600


def test_close_does_not_wait_for_scheduled_resends(keys: Keys) -> None:
    sim = make_sim(keys, time_scale=1.0)  # the next resend would be four minutes away
    endpoint = Answering(b"fail")
    try:
        paid_with_notify_url(sim, keys, endpoint.url + "/notify")
        deadline = threading.Event()
        while not sim.deliveries() and not deadline.wait(0.02):
            pass
        assert not sim.wait_idle(0.05)
    finally:
        sim.close()
        endpoint.server.close()
    assert sim.wait_idle(0)
    assert [d.attempt for d in sim.deliveries()] == [1]


def test_pending_resends_survive_a_restart_with_a_state_file(keys: Keys, tmp_path: Path) -> None:
    """A notification the shop has not acknowledged when the simulator stops is resent by the next one
    started on the same state file (same notify_id, the attempts counted on), and only once."""
    state = tmp_path / "sim.sqlite3"
    endpoint = Answering(b"fail")
    sim = make_sim(keys, time_scale=0.005, state_path=state)  # resends 1.2 s, 3 s, 3 s, ... apart
    try:
        paid_with_notify_url(sim, keys, endpoint.url + "/notify")
        assert wait_for(lambda: bool(sim.deliveries()))
    finally:
        sim.close()
    before = len(endpoint.seen)
    assert before >= 1 and not sim.deliveries()[-1].acknowledged
    endpoint.answers = [b"success"]
    sim = make_sim(keys, time_scale=0.005, state_path=state)
    try:
        assert not sim.wait_idle(0)  # resumed from the file
        assert sim.wait_idle(30)
        resent = sim.deliveries()
        assert [d.attempt for d in resent] == [before + 1] and resent[0].acknowledged
        assert set(endpoint.seen) == {resent[0].notify_id}  # the same notification
    finally:
        sim.close()
        sim = make_sim(keys, time_scale=0.005, state_path=state)
        assert sim.wait_idle(0)  # acknowledged: nothing left to resume
        sim.close()
        endpoint.server.close()


def test_pending_resends_survive_a_killed_cli_simulator(keys: Keys, tmp_path: Path) -> None:
    """``python -m alipay_middleware.simulator --state FILE``, killed while a notification is pending, and
    started again on the same file: the resend arrives."""
    import re
    import subprocess
    import sys

    from test_simulator import pay_params

    key_file = tmp_path / "app.pem"
    key_file.write_text(keys.app.public_key().export_key().decode())
    state = tmp_path / "sim.sqlite3"
    endpoint = Answering(b"fail")

    def start() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "alipay_middleware.simulator", "--port", "0", "--app-id", APP_ID,
             "--app-public-key", str(key_file), "--seller-id", SELLER_ID, "--state", str(state),
             "--time-scale", "0.005"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            found = re.search(r"gateway URL:\s+(\S+)", line)
            if found:
                return process, found.group(1)
        raise AssertionError(f"the simulator did not start: {process.communicate(timeout=10)[0]}")

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    process, gateway = start()
    try:
        query = urlencode(pay_params(keys, "K1", notify_url=endpoint.url + "/notify"))
        with opener.open(f"{gateway}?{query}", timeout=10) as response:  # follows the 303 to the checkout
            checkout_url = response.url
        opener.open(urllib.request.Request(checkout_url, data=b"action=pay", method="POST"), timeout=10).close()
        assert wait_for(lambda: bool(endpoint.seen))
    finally:
        process.kill()  # no clean shutdown: what the file holds is all there is
        process.communicate(timeout=10)
    first = len(endpoint.seen)
    endpoint.answers = [b"success"]
    process, gateway = start()
    try:
        assert wait_for(lambda: len(endpoint.seen) > first), "no resend after the restart"
        assert set(endpoint.seen) == {endpoint.seen[0]}  # the same notification, resent
    finally:
        process.terminate()
        process.communicate(timeout=10)
        endpoint.server.close()


def test_only_loopback_callbacks_are_called() -> None:
    assert is_loopback_url("http://127.0.0.1:8000/n") and is_loopback_url("http://[::1]/n")
    assert is_loopback_url("http://localhost/n") and not is_loopback_url("http://192.0.2.1/n")
    acknowledged: list[Notification] = []
    notifier = Notifier(Faults(), time_scale=FAST, allow_remote=False, on_acknowledged=acknowledged.append)
    try:
        notifier.submit(Notification("n1", "http://192.0.2.1/notify", b"a=1", "utf-8", {"a": "1"}, "X", "k"))
        assert notifier.wait_idle(20)
    finally:
        notifier.close()
    deliveries = notifier.deliveries()
    assert len(deliveries) == 8 and all(d.status is None and "loopback" in d.answer for d in deliveries)
    assert acknowledged == []


# -- faults -------------------------------------------------------------------------------------------


def test_duplicate_and_notify_before_return(served: tuple[Simulator, Any], shops: Callable[..., Shop],
                                            keys: Keys) -> None:
    sim, server = served
    shop = openapi_shop(shops, keys, sim, server, D1="5.00")
    sim.faults.duplicate_notify = True
    sim.faults.notify_before_return = True
    response = pay(sim, shop.alipay.helper(shop.url).page_pay_url(out_trade_no="D1", total_amount="5.00",
                                                                  subject="Tea"))
    assert response.status_code == 303
    # Delivered (twice at once) and answered before the browser got its redirect. The shop may answer the
    # twin 503 while the first is in hand (it then gets resent): one of the two is acknowledged.
    first = sim.deliveries()
    assert sorted(d.copy for d in first) == ["", "duplicate"] and any(d.acknowledged for d in first)
    assert first[0].notify_id == first[1].notify_id
    assert sim.wait_idle(10)
    assert [e.kind for e in shop.events] == ["paid"]  # several deliveries, one hook call


def test_foreign_app_id_and_tampered_amount_are_refused_by_the_shop(
        served: tuple[Simulator, Any], shops: Callable[..., Shop], keys: Keys) -> None:
    sim, server = served
    shop = openapi_shop(shops, keys, sim, server, F1="5.00", T1="5.00")
    helper = shop.alipay.helper(shop.url)
    sim.faults.foreign_app_id = True
    pay(sim, helper.page_pay_url(out_trade_no="F1", total_amount="5.00", subject="Tea"))
    assert sim.wait_idle(20)
    real = [d for d in sim.deliveries() if not d.copy]
    foreign = [d for d in sim.deliveries() if d.copy == "foreign_app_id"]
    assert real[-1].acknowledged and foreign[0].fields["app_id"] == FOREIGN_APP_ID
    assert not any(d.acknowledged for d in foreign) and len(foreign) == 8  # refused every time
    sim.faults.foreign_app_id = False
    sim.faults.tamper_amount = True
    pay(sim, helper.page_pay_url(out_trade_no="T1", total_amount="5.00", subject="Tea"))
    assert sim.wait_idle(20)
    tampered = [d for d in sim.deliveries() if d.out_trade_no == "T1"]
    assert tampered[0].fields["total_amount"] == "0.01" and not any(d.acknowledged for d in tampered)
    assert [(e.kind, e.out_trade_no) for e in shop.events] == [("paid", "F1")]


def test_out_of_order_delivers_the_refund_first(shops: Callable[..., Shop], keys: Keys) -> None:
    # Held back until the next notification of the trade, or for the first resend interval (24 s here).
    sim = make_sim(keys, time_scale=0.1)
    server = sim.serve()
    try:
        shop = openapi_shop(shops, keys, sim, server, O1="5.00")
        sim.faults.out_of_order = True
        pay(sim, shop.alipay.helper(shop.url).page_pay_url(out_trade_no="O1", total_amount="5.00", subject="Tea"))
        assert sim.deliveries() == [] and not sim.wait_idle(0.05)  # the payment's notification is held back
        AlipayClient(shop.alipay).refund(out_trade_no="O1", refund_amount="1.00", out_request_no="r1")
        assert sim.wait_idle(20)
        order = [d.fields.get("out_biz_no", "payment") for d in first_attempts(sim.deliveries())]
        assert order == ["r1", "payment"]
        assert {e.kind for e in shop.events} == {"paid", "refunded"}
    finally:
        server.close()


def test_admin_page_lists_deliveries(served: tuple[Simulator, Any], keys: Keys) -> None:
    sim, server = served
    endpoint = Answering(b"success")
    try:
        paid_with_notify_url(sim, keys, endpoint.url + "/notify", "AD2")
        assert sim.wait_idle(10)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(server.url + "/", timeout=10) as response:
            page = response.read().decode()
        assert "AD2" in page and sim.deliveries()[0].notify_id in page and ">success<" in page
    finally:
        endpoint.server.close()


def test_merchants_registered_with_a_key_in_the_four_shapes(keys: Keys) -> None:
    key = RSA.import_key(LEGACY_ALIPAY_KEY).public_key()
    for text in (key.export_key().decode(), key.export_key(format="DER").hex()):
        if "BEGIN" not in text:
            import base64

            text = base64.b64encode(bytes.fromhex(text)).decode()
        assert LegacyMerchant(partner=PARTNER, rsa_public_key=text).key == key
    assert Merchant(app_id=APP_ID, public_key=keys.app.public_key().export_key(pkcs=1).decode()).key \
        == keys.app.public_key()


def test_closing_through_the_api_notifies_trade_closed(served: tuple[Simulator, Any], shops: Callable[..., Shop],
                                                       keys: Keys) -> None:
    sim, server = served
    shop = openapi_shop(shops, keys, sim, server, K1="3.00")
    client = Client(sim)
    target = urlsplit(shop.alipay.helper(shop.url).page_pay_url(out_trade_no="K1", total_amount="3.00",
                                                                subject="Tea"))
    location = client.get(f"{target.path}?{target.query}").headers["Location"]
    client.post(location, data={"action": "cancel"})
    assert AlipayClient(shop.alipay).close(out_trade_no="K1").out_trade_no == "K1"
    assert sim.wait_idle(10)
    [delivery] = sim.deliveries()
    assert delivery.acknowledged and delivery.fields["trade_status"] == "TRADE_CLOSED"
    assert delivery.fields["gmt_close"] and "gmt_payment" not in delivery.fields
    assert [e.kind for e in shop.events] == ["closed"]
