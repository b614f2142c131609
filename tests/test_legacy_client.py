"""The legacy service's ``single_trade_query`` (``LegacyClient``, ``alipay.client`` for a LegacyConfig) and
reconciliation for legacy merchants, against the loopback stand-in in ``tests/legacy_gateway.py``.

The stub checks each request's signature the way Alipay does and answers signed XML in the request's
charset; a guard makes any other connection (or DNS lookup) fail the test. Lookups run through the sync
client and the async one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from Crypto.PublicKey import RSA

from alipay_middleware import (
    Alipay,
    AlipayApiError,
    AlipayClient,
    AsyncAlipayClient,
    GatewayUnavailable,
    LegacyClient,
    LegacyConfig,
    ResponseError,
    ResponseMismatch,
    TradeQuery,
    UnsupportedCall,
)
from alipay_middleware.callbacks.confirm import query_event
from alipay_middleware.events import CLOSED, PAID
from conftest import MD5_KEY, PARTNER, Keys, Recorder, legacy_body, legacy_fields, make_config
from legacy_gateway import LegacyGateway

TIMEOUT = 0.5
CST_OFFSET = timedelta(hours=8)
NOTIFY = "/alipay/notify"


# -- no internet ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def net_guard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuses every DNS lookup and connection that is not loopback, and remembers them."""
    blocked: list[str] = []

    def check(host: Any) -> None:
        if str(host) not in ("127.0.0.1", "localhost", "::1"):
            blocked.append(str(host))
            raise OSError(f"test guard: no connection to {host} (tests never reach the internet)")

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        check(address[0] if isinstance(address, tuple) else address)
        real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return blocked


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[LegacyGateway]:
    gateway = LegacyGateway()
    yield gateway
    gateway.close()
    assert gateway.problems == [], "the client sent a request Alipay would refuse"


@pytest.fixture(scope="module")
def legacy_rsa_keys() -> tuple[RSA.RsaKey, RSA.RsaKey]:
    """(merchant key, a key standing in for Alipay's legacy key), both 1024-bit as the service uses."""
    return RSA.generate(1024), RSA.generate(1024)


@pytest.fixture
def rsa_stub(legacy_rsa_keys: tuple[RSA.RsaKey, RSA.RsaKey]) -> Iterator[LegacyGateway]:
    merchant, alipay = legacy_rsa_keys
    gateway = LegacyGateway(md5_key=None, merchant_public_key=merchant.public_key(), alipay_key=alipay)
    yield gateway
    gateway.close()
    assert gateway.problems == []


def rsa_config(keys: tuple[RSA.RsaKey, RSA.RsaKey], gateway: str, **overrides: Any) -> LegacyConfig:
    merchant, alipay = keys
    return LegacyConfig(partner=PARTNER, sign_type="RSA", private_key=merchant.export_key().decode(),
                        alipay_public_key=alipay.public_key().export_key().decode(), gateway=gateway, **overrides)


@pytest.fixture
def make_client(stub: LegacyGateway) -> Callable[..., LegacyClient]:
    def _make(charset: str = "utf-8", gateway: str | None = None, config: LegacyConfig | None = None,
              **kwargs: Any) -> LegacyClient:
        settings: dict[str, Any] = {"timeout": TIMEOUT, "retries": 2, "backoff": 0}
        settings.update(kwargs)
        if config is None:
            config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=gateway or stub.url, input_charset=charset)
        return LegacyClient(config, **settings)

    return _make


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def call(mode: str) -> Callable[..., Any]:
    """``call(client, "query", **kwargs)``: the sync method, or the async one on a fresh event loop."""

    def _call(client: LegacyClient, name: str, **kwargs: Any) -> Any:
        if mode == "sync":
            return getattr(client, name)(**kwargs)
        aclient = AsyncAlipayClient(client.config, timeout=client.timeout, retries=client.retries,
                                    backoff=client.backoff, max_response=client.max_response)
        assert isinstance(aclient.sync, LegacyClient)

        async def main() -> Any:
            return await getattr(aclient, name)(**kwargs)

        return asyncio.run(main())

    return _call


# -- answers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_query_paid_trade_in_the_request_charset(stub, make_client, call, charset):
    trade = stub.add_trade("Q1", "TRADE_SUCCESS", "9.90")
    result = call(make_client(charset), "query", out_trade_no="Q1")
    assert isinstance(result, TradeQuery) and result.exists and result.paid
    assert (result.out_trade_no, result.trade_no, result.trade_status) == ("Q1", trade.trade_no, "TRADE_SUCCESS")
    assert result.total_amount == Decimal("9.90") and isinstance(result.total_amount, Decimal)
    assert result.buyer_pay_amount is None and result.receipt_amount is None
    assert result.send_pay_date is not None and result.send_pay_date.utcoffset() == CST_OFFSET
    assert result.send_pay_date.replace(tzinfo=None) == datetime(2024, 1, 1, 12, 0, 6)
    assert result.raw["subject"] == "茶叶 & <礼盒>"  # decoded in the answer's charset, XML-unescaped
    assert result.raw["seller_id"] == PARTNER and result.raw["body"] == ""
    [received] = stub.received
    assert received.method == "GET" and received.charset == charset
    assert received.params["service"] == "single_trade_query" and received.params["out_trade_no"] == "Q1"
    assert received.params["sign_type"] == "MD5" and "trade_no" not in received.params


def test_query_unpaid_trade_by_trade_no(stub, make_client, call):
    trade = stub.add_trade("Q2", "WAIT_BUYER_PAY", "12.00")
    result = call(make_client(), "query", trade_no=trade.trade_no)
    assert result.exists and not result.paid
    assert (result.out_trade_no, result.trade_status, result.send_pay_date) == ("Q2", "WAIT_BUYER_PAY", None)
    assert result.total_amount == Decimal("12.00")
    assert stub.received[0].params["trade_no"] == trade.trade_no and "out_trade_no" not in stub.received[0].params


def test_query_by_both_numbers_checks_both(stub, make_client, call):
    trade = stub.add_trade("Q3", "TRADE_FINISHED", "1.00")
    result = call(make_client(), "query", out_trade_no="Q3", trade_no=trade.trade_no)
    assert result.paid and result.trade_status == "TRADE_FINISHED"
    other = stub.add_trade("Q3-OTHER", "TRADE_SUCCESS", "1.00")
    with pytest.raises(ResponseMismatch):  # Alipay looks trade_no up first: an answer about another order
        call(make_client(), "query", out_trade_no="Q3", trade_no=other.trade_no)


def test_trade_pending_is_not_paid(stub, make_client, call):
    stub.add_trade("Q4", "TRADE_PENDING", "9.90")
    result = call(make_client(), "query", out_trade_no="Q4")
    assert result.exists and result.trade_status == "TRADE_PENDING" and not result.paid


@pytest.mark.parametrize("kind", ["not_exist", "is_not_exist"])
def test_trade_not_exist_is_an_answer(stub, make_client, call, kind):
    stub.fault(kind)
    result = call(make_client(), "query", out_trade_no="NOBODY-PAID-YET")
    assert result == TradeQuery(False, "NOBODY-PAID-YET", "", None, None, None, None, None, result.raw)
    assert not result.paid and result.raw["is_success"] == "F"
    assert stub.count() == 1  # an answer, not retried


def test_unknown_trade_is_not_exist(stub, make_client, call):
    assert not call(make_client(), "query", out_trade_no="NEVER-SEEN").exists


def test_other_error_codes_raise_unverified_api_errors(stub, make_client, call):
    stub.fault("error")
    with pytest.raises(AlipayApiError) as caught:
        call(make_client(), "query", out_trade_no="Q5")
    assert caught.value.code == "ILLEGAL_PARTNER_EXTERFACE" and not caught.value.verified
    assert caught.value.method == "single_trade_query" and stub.count() == 1


def test_answer_pretty_printed_or_without_declaration(stub, make_client, call):
    stub.add_trade("Q6", "TRADE_SUCCESS", "9.90")
    stub.fault("pretty")
    stub.fault("no_declaration")
    client = make_client("gbk")
    first = call(client, "query", out_trade_no="Q6")
    second = call(client, "query", out_trade_no="Q6")
    assert first.paid and second.paid and first.raw == second.raw
    assert first.raw["subject"] == "茶叶 & <礼盒>"


def test_nested_elements_are_neither_signed_nor_returned(stub, make_client, call):
    stub.add_trade("Q7", "TRADE_SUCCESS", "9.90")
    stub.fault("nested")
    result = call(make_client(), "query", out_trade_no="Q7")
    assert result.paid and "fund_bill_list" not in result.raw


# -- answers that prove nothing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "reason"), [
    ("tampered", "bad_signature"),
    ("unsigned", "missing_sign"),
    ("wrong_sign_type", "bad_signature"),
    ("duplicate", "duplicate_key"),
    ("malformed", "malformed_response"),
])
@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_unverifiable_answers_are_never_data(stub, make_client, call, kind, reason, charset):
    stub.add_trade("B1", "WAIT_BUYER_PAY", "9.90")
    stub.fault(kind)
    with pytest.raises(ResponseError) as caught:
        call(make_client(charset), "query", out_trade_no="B1")
    assert caught.value.reason == reason
    assert stub.count() == 1  # a verification failure is not retried


def test_a_signed_answer_about_another_trade_is_a_replay(stub, make_client, call):
    stub.add_trade("B2", "TRADE_SUCCESS", "9.90")
    stub.fault("mismatch")
    with pytest.raises(ResponseMismatch) as caught:
        call(make_client(), "query", out_trade_no="B2")
    assert caught.value.reason == "response_mismatch"


@pytest.mark.parametrize("kind", ["doctype_bomb", "xxe"])
def test_dtds_are_refused_before_parsing(stub, make_client, call, kind):
    stub.add_trade("B3", "TRADE_SUCCESS", "9.90")
    stub.fault(kind)
    started = time.monotonic()
    with pytest.raises(ResponseError) as caught:
        call(make_client(), "query", out_trade_no="B3")
    assert caught.value.reason == "malformed_response" and "DTD" in caught.value.detail
    assert time.monotonic() - started < 5


def test_answers_longer_than_max_response_are_refused(stub, make_client, call):
    stub.add_trade("B4", "TRADE_SUCCESS", "9.90")
    stub.fault("huge", size=4000)
    with pytest.raises(ResponseError, match="longer than 2048 bytes"):
        call(make_client(max_response=2048), "query", out_trade_no="B4")


# -- network trouble: the same policy as AlipayClient.query --------------------------------------------------


def test_http_502_is_retried(stub, make_client, call):
    stub.add_trade("N1", "TRADE_SUCCESS", "9.90")
    stub.fault("http_502", times=2)
    assert call(make_client(), "query", out_trade_no="N1").paid
    assert stub.count() == 3


def test_http_502_every_time_is_gateway_unavailable(stub, make_client, call):
    stub.fault("http_502", times=3)
    with pytest.raises(GatewayUnavailable, match="http_error after 3 attempts"):
        call(make_client(), "query", out_trade_no="N2")
    assert stub.count() == 3


def test_a_hanging_gateway_times_out_then_is_retried(stub, make_client, call):
    stub.add_trade("N3", "TRADE_SUCCESS", "9.90")
    stub.fault("hang")
    started = time.monotonic()
    assert call(make_client(), "query", out_trade_no="N3").paid
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 5 and stub.count() == 2


def test_a_hanging_gateway_without_retries_is_unavailable(stub, make_client, call):
    stub.fault("hang")
    with pytest.raises(GatewayUnavailable, match="timeout"):
        call(make_client(retries=0), "query", out_trade_no="N4")


def test_a_dropped_connection_is_retried(stub, make_client, call):
    stub.add_trade("N5", "TRADE_SUCCESS", "9.90")
    stub.fault("drop")
    assert call(make_client(), "query", out_trade_no="N5").paid and stub.count() == 2


def test_arguments_are_checked_before_anything_is_sent(stub, make_client, call):
    with pytest.raises(ValueError, match="out_trade_no"):
        call(make_client(), "query")
    with pytest.raises(ValueError, match="printable ASCII"):
        call(make_client(), "query", out_trade_no="has space")
    assert stub.received == []


def test_one_log_line_per_call(stub, make_client, caplog):
    stub.add_trade("G1", "TRADE_SUCCESS", "9.90")
    stub.fault("http_502")
    with caplog.at_level(logging.INFO, logger="alipay_middleware.client"):
        make_client().query(out_trade_no="G1")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == ["alipay call method=single_trade_query out_trade_no=G1 outcome=T/TRADE_SUCCESS attempts=2"]
    assert MD5_KEY not in caplog.text


# -- RSA merchants ----------------------------------------------------------------------------------------------


def test_rsa_merchant_query(rsa_stub, legacy_rsa_keys, call):
    rsa_stub.add_trade("R1", "TRADE_SUCCESS", "9.90")
    client = LegacyClient(rsa_config(legacy_rsa_keys, rsa_stub.url, input_charset="gbk"), timeout=TIMEOUT,
                          backoff=0)
    result = call(client, "query", out_trade_no="R1")
    assert result.paid and result.total_amount == Decimal("9.90")
    assert rsa_stub.received[0].params["sign_type"] == "RSA"


@pytest.mark.parametrize("kind", ["tampered", "unsigned"])
def test_rsa_merchant_refuses_unverifiable_answers(rsa_stub, legacy_rsa_keys, call, kind):
    rsa_stub.add_trade("R2", "TRADE_SUCCESS", "9.90")
    rsa_stub.fault(kind)
    client = LegacyClient(rsa_config(legacy_rsa_keys, rsa_stub.url), timeout=TIMEOUT, backoff=0)
    with pytest.raises(ResponseError):
        call(client, "query", out_trade_no="R2")


def test_an_answer_signed_with_another_key_is_refused(legacy_rsa_keys, call):
    merchant, _ = legacy_rsa_keys
    impostor = LegacyGateway(md5_key=None, merchant_public_key=merchant.public_key(), alipay_key=RSA.generate(1024))
    try:
        impostor.add_trade("R3", "TRADE_SUCCESS", "9.90")
        client = LegacyClient(rsa_config(legacy_rsa_keys, impostor.url), timeout=TIMEOUT, backoff=0)
        with pytest.raises(ResponseError) as caught:
            call(client, "query", out_trade_no="R3")
        assert caught.value.reason == "bad_signature"
    finally:
        impostor.close()


# -- what the legacy service cannot do --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs", "says"), [
    ("refund", {"out_trade_no": "U1", "refund_amount": "1.00", "out_request_no": "U1-r"},
     "refund_fastpay_by_platform_pwd"),
    ("close", {"out_trade_no": "U1"}, "close_trade"),
    ("refund_query", {"out_trade_no": "U1", "out_request_no": "U1-r"}, "refund_status"),
])
def test_refund_close_and_refund_query_are_unsupported(stub, make_client, call, name, kwargs, says):
    with pytest.raises(UnsupportedCall, match=says) as caught:
        call(make_client(), name, **kwargs)
    assert isinstance(caught.value, NotImplementedError) and "LegacyConfig" in str(caught.value)
    assert stub.received == []


def test_alipay_client_picks_the_legacy_client(stub, new_ledger):
    alipay = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=stub.url), ledger=new_ledger())
    try:
        assert isinstance(alipay.client, LegacyClient) and alipay.client is alipay.client
        assert isinstance(alipay.aclient, AsyncAlipayClient) and isinstance(alipay.aclient.sync, LegacyClient)
        assert alipay.client.protocol is alipay.protocol
        assert repr(alipay.client) == f"<LegacyClient {PARTNER} 127.0.0.1>"
        assert repr(alipay.aclient) == f"<AsyncAlipayClient {PARTNER} 127.0.0.1>"
        stub.add_trade("P1", "TRADE_SUCCESS", "9.90")
        assert alipay.client.query(out_trade_no="P1").paid
        assert asyncio.run(alipay.aclient.query(out_trade_no="P1")).paid
        alipay.close()  # drops the pool; the async client makes a new one on its next call
        assert asyncio.run(alipay.aclient.query(out_trade_no="P1")).paid
    finally:
        alipay.close()


def test_each_client_refuses_the_other_kind_of_merchant(keys: Keys):
    with pytest.raises(TypeError, match="LegacyConfig.*LegacyClient"):
        AlipayClient(LegacyConfig(partner=PARTNER, key=MD5_KEY))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="OpenApiConfig.*AlipayClient"):
        LegacyClient(make_config(keys))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        LegacyClient(LegacyConfig(partner=PARTNER, key=MD5_KEY), timeout=0)


# -- reconciliation for a legacy merchant ------------------------------------------------------------------------


class LegacyShop:
    def __init__(self, make_legacy: Any, mount: Any, stub: LegacyGateway, **orders: str) -> None:
        self.alipay = make_legacy(orders=orders or {"L1": "9.90", "L2": "20.00", "L3": "5.00"}, gateway=stub.url)
        self.paid, self.closed = Recorder(), Recorder()
        self.alipay.on_paid(self.paid)
        self.alipay.on_closed(self.closed)
        self.client = mount(self.alipay)
        self.stub = stub

    def notify(self, fields: dict[str, str]) -> Any:
        self.stub.issue(fields["notify_id"])
        return self.client.request("POST", NOTIFY, legacy_body(fields))


def test_reconcile_pays_a_pending_legacy_order_once(make_legacy, mount, stub):
    shop = LegacyShop(make_legacy, mount, stub)
    stub.add_trade("L1", "TRADE_SUCCESS", "9.90")
    stub.add_trade("L2", "TRADE_CLOSED", "20.00", paid=False)  # closed unpaid (timed out)
    stub.add_trade("L3", "WAIT_BUYER_PAY", "5.00")
    shop.alipay.pending_orders(lambda created_before: ["L1", "L2", "L3", "NOPE"])

    results = {r.out_trade_no: r for r in shop.alipay.reconcile(older_than_minutes=30)}
    assert {k: r.outcome for k, r in results.items()} == {
        "L1": "processed", "L2": "processed", "L3": "not_paid", "NOPE": "not_paid"}
    [paid] = shop.paid.calls
    assert (paid.kind, paid.key, paid.out_trade_no) == (PAID, f"paid:{PARTNER}:L1", "L1")
    assert paid.total_amount == Decimal("9.90") and paid.trade_status == "TRADE_SUCCESS"
    assert paid.gmt_payment is not None and paid.gmt_payment.utcoffset() == CST_OFFSET
    assert paid.seller_id == PARTNER and paid.raw["subject"] == "茶叶 & <礼盒>"
    assert [(e.kind, e.key) for e in shop.closed.calls] == [(CLOSED, f"closed:{PARTNER}:L2")]

    # The late legacy notification for L1: done in the ledger, so answered success without asking
    # Alipay (notify_verify) and without a second call.
    response = shop.notify(legacy_fields("L1", "9.90"))
    assert (response.status, response.body) == (200, b"success")
    assert len(shop.paid.calls) == 1 and stub.count("notify_verify") == 0

    # Again (cron): paid orders are not even asked about; nothing runs twice.
    queries = stub.count()
    again = {r.out_trade_no: r.outcome for r in shop.alipay.reconcile(older_than_minutes=30)}
    assert again["L1"] == "already_paid" and again["L2"] == "already_done"
    assert stub.count() == queries + 3
    assert len(shop.paid.calls) == 1 and len(shop.closed.calls) == 1


def test_reconcile_after_the_notify_calls_nothing(make_legacy, mount, stub):
    shop = LegacyShop(make_legacy, mount, stub)
    stub.add_trade("L1", "TRADE_SUCCESS", "9.90")
    response = shop.notify(legacy_fields("L1", "9.90"))
    assert (response.status, response.body, len(shop.paid.calls)) == (200, b"success", 1)
    shop.alipay.pending_orders(lambda created_before: ["L1"])
    [result] = shop.alipay.reconcile()
    assert (result.outcome, result.paid) == ("already_paid", True)
    assert stub.count() == 0 and len(shop.paid.calls) == 1


@pytest.mark.parametrize(("kind", "outcome"), [
    ("tampered", "error"), ("unsigned", "error"), ("http_502", "error"), ("not_exist", "not_paid")])
def test_reconcile_never_pays_on_an_answer_that_proves_nothing(make_legacy, mount, stub, kind, outcome):
    shop = LegacyShop(make_legacy, mount, stub)
    stub.add_trade("L1", "TRADE_SUCCESS", "9.90")
    stub.fault(kind, times=3)
    shop.alipay.pending_orders(lambda created_before: ["L1"])
    [result] = shop.alipay.reconcile()
    assert result.outcome == outcome and shop.paid.calls == []


def test_reconcile_checks_the_amount_like_a_notification(make_legacy, mount, stub):
    shop = LegacyShop(make_legacy, mount, stub)
    stub.add_trade("L1", "TRADE_SUCCESS", "0.01")  # Alipay says 0.01 for an order of 9.90
    shop.alipay.pending_orders(lambda created_before: ["L1"])
    [result] = shop.alipay.reconcile()
    assert (result.outcome, result.paid) == ("amount_mismatch", True) and shop.paid.calls == []


def test_reconcile_does_not_take_a_refunded_trade_for_a_close(make_legacy, mount, stub):
    shop = LegacyShop(make_legacy, mount, stub)
    stub.add_trade("L1", "TRADE_CLOSED", "9.90", paid=True)  # paid, then fully refunded
    stub.add_trade("L2", "TRADE_PENDING", "20.00")  # paid into a frozen account: not paid yet
    shop.alipay.pending_orders(lambda created_before: ["L1", "L2"])
    outcomes = {r.out_trade_no: r.outcome for r in shop.alipay.reconcile()}
    assert outcomes == {"L1": "not_paid", "L2": "not_paid"}
    assert shop.paid.calls == [] and shop.closed.calls == []


def test_reconcile_for_an_rsa_merchant(legacy_rsa_keys, rsa_stub, new_ledger):
    alipay = Alipay(rsa_config(legacy_rsa_keys, rsa_stub.url), ledger=new_ledger())
    try:
        paid = Recorder()
        alipay.on_paid(paid)
        alipay.order_amount(lambda out_trade_no: Decimal("9.90"))
        alipay.pending_orders(lambda created_before: ["R1"])
        rsa_stub.add_trade("R1", "TRADE_FINISHED", "9.90")
        [result] = alipay.reconcile()
        assert result.outcome == "processed" and [e.key for e in paid.calls] == [f"paid:{PARTNER}:R1"]
    finally:
        alipay.close()


def test_confirm_returns_stays_refused_for_legacy_merchants(stub, new_ledger):
    config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=stub.url)
    # The legacy protocol can confirm, for reconcile ...
    paid = TradeQuery(True, "R1", "2024", "TRADE_SUCCESS", Decimal("9.90"), None, None, None, {})
    event = query_event(config.protocol(), paid)
    assert event is not None and (event.kind, event.key) == (PAID, f"paid:{PARTNER}:R1")
    with pytest.raises(ValueError, match="confirm_returns is for the Open Platform"):
        Alipay(config, ledger=new_ledger(), confirm_returns=True)  # ... but its returns carry their status
