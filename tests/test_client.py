"""The server-to-server client (query, refund, close, refund query) against a loopback gateway stand-in.

Every call goes to ``tests/openapi_gateway.py`` on 127.0.0.1, which checks the request signature the way
Alipay does and answers signed responses; a guard makes any other connection (or DNS lookup) fail the
test. Each scenario runs through the sync client and the async one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from Crypto.PublicKey import RSA

from alipay_middleware import (
    PRODUCTION_GATEWAY,
    Alipay,
    AlipayApiError,
    AlipayClient,
    AsyncAlipayClient,
    CloseResult,
    GatewayUnavailable,
    LegacyConfig,
    OutcomeUnknown,
    RefundQuery,
    RefundResult,
    ResponseError,
    ResponseMismatch,
    TradeQuery,
)
from conftest import APP_ID, MD5_KEY, PARTNER, Keys, make_config
from openapi_gateway import OpenApiGateway

TIMEOUT = 0.5
HANG_TIMEOUT = TIMEOUT  # the client gives up on a hanging gateway after this
QUERY, REFUND, CLOSE, REFUND_QUERY = ("alipay.trade.query", "alipay.trade.refund", "alipay.trade.close",
                                      "alipay.trade.fastpay.refund.query")
METHOD_OF = {"query": QUERY, "refund": REFUND, "close": CLOSE, "refund_query": REFUND_QUERY}
CST_OFFSET = timedelta(hours=8)


# -- no internet ---------------------------------------------------------------------------------------------


class NetGuard:
    """Refuses every DNS lookup and connection that is not loopback, and remembers them."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def check(self, host: Any) -> None:
        if str(host) not in ("127.0.0.1", "localhost", "::1"):
            self.blocked.append(str(host))
            raise OSError(f"test guard: no connection to {host} (tests never reach the internet)")


@pytest.fixture(autouse=True)
def net_guard(monkeypatch: pytest.MonkeyPatch) -> NetGuard:
    guard = NetGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        guard.check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        guard.check(address[0] if isinstance(address, tuple) else address)
        real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return guard


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def stub(keys: Keys) -> Iterator[OpenApiGateway]:
    gateway = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    yield gateway
    gateway.close()
    assert gateway.problems == [], "the client sent a request Alipay would refuse"


@pytest.fixture
def make_client(keys: Keys, stub: OpenApiGateway) -> Callable[..., AlipayClient]:
    def _make(gateway: str | None = None, **kwargs: Any) -> AlipayClient:
        settings: dict[str, Any] = {"timeout": TIMEOUT, "retries": 2, "backoff": 0}
        settings.update(kwargs)
        return AlipayClient(make_config(keys, gateway=gateway or stub.url), **settings)

    return _make


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def call(mode: str) -> Callable[..., Any]:
    """``call(client, "refund", **kwargs)``: the sync method, or the async one on a fresh event loop."""

    def _call(client: AlipayClient, name: str, **kwargs: Any) -> Any:
        if mode == "sync":
            return getattr(client, name)(**kwargs)
        aclient = AsyncAlipayClient(client.config, timeout=client.timeout, retries=client.retries,
                                    backoff=client.backoff, max_response=client.max_response)

        async def main() -> Any:
            return await getattr(aclient, name)(**kwargs)

        return asyncio.run(main())

    return _call


# -- success -------------------------------------------------------------------------------------------------


def test_query_paid_trade(stub, make_client, call):
    trade = stub.add_trade("Q1", "TRADE_SUCCESS", "9.90")
    result = call(make_client(), "query", out_trade_no="Q1")
    assert isinstance(result, TradeQuery)
    assert result.exists and result.paid
    assert (result.out_trade_no, result.trade_no, result.trade_status) == ("Q1", trade.trade_no, "TRADE_SUCCESS")
    assert result.total_amount == result.buyer_pay_amount == result.receipt_amount == Decimal("9.90")
    assert isinstance(result.total_amount, Decimal)
    assert result.send_pay_date is not None and result.send_pay_date.utcoffset() == CST_OFFSET
    assert result.send_pay_date.replace(tzinfo=None) == datetime(2024, 1, 1, 12, 0, 6)
    assert result.raw["buyer_logon_id"] == "159****5620" and result.raw["code"] == "10000"
    assert stub.count() == 1


def test_query_unpaid_trade_by_trade_no(stub, make_client, call):
    trade = stub.add_trade("Q2", "WAIT_BUYER_PAY", "12.00")
    result = call(make_client(), "query", trade_no=trade.trade_no)
    assert result.exists and not result.paid
    assert (result.out_trade_no, result.trade_status) == ("Q2", "WAIT_BUYER_PAY")
    assert result.total_amount == Decimal("12.00") and result.buyer_pay_amount == Decimal("0.00")
    assert result.send_pay_date is None
    assert stub.received[0].biz == {"trade_no": trade.trade_no}


def test_query_trade_not_exist_is_an_answer(stub, make_client, call):
    result = call(make_client(), "query", out_trade_no="NOBODY-PAID-YET")
    assert result == TradeQuery(False, "NOBODY-PAID-YET", "", None, None, None, None, None, result.raw)
    assert not result.paid
    assert result.raw["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    assert stub.count() == 1  # an answer, not retried


NASTY = {"buyer_logon_id": 'a}b{c"d\\e', "body": '{"x": "}"} \\" \\\\ {{', "subject": "茶 } { \" \\ end"}


def test_values_with_braces_quotes_and_backslashes(stub, make_client, call):
    stub.add_trade("Q3", "TRADE_SUCCESS", **NASTY)
    result = call(make_client(), "query", out_trade_no="Q3")
    for name, value in NASTY.items():
        assert result.raw[name] == value
    assert result.total_amount == Decimal("9.90")


def test_refund_moves_money_once(stub, make_client, call):
    trade = stub.add_trade("R1", "TRADE_SUCCESS", "9.90")
    result = call(make_client(), "refund", out_trade_no="R1", refund_amount=Decimal("2.50"),
                  out_request_no="R1-a", refund_reason="退款 {原因} \"引号\" \\")
    assert isinstance(result, RefundResult)
    assert result.fund_change and result.confirmed and result.confirmation is None
    assert (result.out_trade_no, result.trade_no, result.out_request_no) == ("R1", trade.trade_no, "R1-a")
    assert result.refund_amount == Decimal("2.50") and result.refund_fee == Decimal("2.50")
    assert stub.received[0].biz == {"out_trade_no": "R1", "refund_amount": "2.50", "out_request_no": "R1-a",
                                    "refund_reason": "退款 {原因} \"引号\" \\"}
    assert trade.refunds == {"R1-a": Decimal("2.50")}
    assert (stub.count(REFUND), stub.count(REFUND_QUERY)) == (1, 0)


def test_refund_repeated_answers_n_and_is_confirmed(stub, make_client, call):
    trade = stub.add_trade("R2", "TRADE_SUCCESS", "9.90")
    client = make_client()
    first = call(client, "refund", out_trade_no="R2", refund_amount="9.90", out_request_no="R2-a")
    again = call(client, "refund", out_trade_no="R2", refund_amount="9.90", out_request_no="R2-a")
    assert first.fund_change and first.confirmed
    assert not again.fund_change and again.confirmed
    assert isinstance(again.confirmation, RefundQuery) and again.confirmation.refunded
    assert again.confirmation.refund_amount == Decimal("9.90")
    assert trade.refunded == Decimal("9.90") and trade.status == "TRADE_CLOSED"  # once
    assert (stub.count(REFUND), stub.count(REFUND_QUERY)) == (2, 1)
    assert stub.received[-1].biz == {"trade_no": trade.trade_no, "out_request_no": "R2-a"}


def test_refund_answer_without_fund_change_is_not_taken_as_confirmed(stub, make_client, call):
    # Only fund_change == "Y" says the call moved money; a missing field proves nothing: ask refund_query.
    stub.add_trade("R4", "TRADE_SUCCESS", "9.90")
    stub.fault(REFUND, "no_fund_change")
    result = call(make_client(), "refund", out_trade_no="R4", refund_amount="1.00", out_request_no="R4-a")
    assert "fund_change" not in result.raw
    assert not result.fund_change and not result.confirmed
    assert result.confirmation is not None and not result.confirmation.refunded
    assert (stub.count(REFUND), stub.count(REFUND_QUERY)) == (1, 1)


def test_refund_answering_n_without_a_refund_is_not_confirmed(stub, make_client, call):
    stub.add_trade("R3", "TRADE_SUCCESS", "9.90")
    stub.fault(REFUND, "fund_change_n")
    result = call(make_client(), "refund", out_trade_no="R3", refund_amount="1.00", out_request_no="R3-a")
    assert not result.fund_change and not result.confirmed
    assert result.confirmation is not None and result.confirmation.refund_status is None
    assert not result.confirmation.refunded


@pytest.mark.parametrize(("status", "amount", "sub_code"), [
    ("TRADE_SUCCESS", "10.00", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"),
    ("WAIT_BUYER_PAY", "1.00", "ACQ.TRADE_STATUS_ERROR"),
    (None, "1.00", "ACQ.TRADE_NOT_EXIST"),
], ids=["too_much", "unpaid", "no_trade"])
def test_refund_refused_is_a_business_error(stub, make_client, call, status, amount, sub_code):
    if status:
        stub.add_trade("R4", status, "9.90")
    with pytest.raises(AlipayApiError) as caught:
        call(make_client(), "refund", out_trade_no="R4", refund_amount=amount, out_request_no="R4-a")
    error = caught.value
    assert (error.code, error.sub_code, error.method, error.verified) == ("40004", sub_code, REFUND, True)
    assert error.msg == "Business Failed" and error.sub_msg
    assert stub.count() == 1


def test_close_unpaid_trade_and_again(stub, make_client, call):
    trade = stub.add_trade("C1", "WAIT_BUYER_PAY")
    client = make_client()
    result = call(client, "close", out_trade_no="C1")
    assert result == CloseResult("C1", trade.trade_no, result.raw) and trade.status == "TRADE_CLOSED"
    assert call(client, "close", out_trade_no="C1").out_trade_no == "C1"  # idempotent


@pytest.mark.parametrize(("status", "sub_code"), [("TRADE_SUCCESS", "ACQ.TRADE_STATUS_ERROR"),
                                                  (None, "ACQ.TRADE_NOT_EXIST")], ids=["paid", "no_trade"])
def test_close_refused(stub, make_client, call, status, sub_code):
    if status:
        stub.add_trade("C2", status)
    with pytest.raises(AlipayApiError) as caught:
        call(make_client(), "close", out_trade_no="C2")
    assert (caught.value.code, caught.value.sub_code) == ("40004", sub_code)
    assert stub.count() == 1


def test_refund_query(stub, make_client, call):
    trade = stub.add_trade("RQ1", "TRADE_SUCCESS", "9.90", refunds={"RQ1-a": "3.00"})
    client = make_client()
    found = call(client, "refund_query", out_trade_no="RQ1", out_request_no="RQ1-a")
    assert found.refunded and found.refund_status == "REFUND_SUCCESS"
    assert (found.out_trade_no, found.trade_no, found.out_request_no) == ("RQ1", trade.trade_no, "RQ1-a")
    assert (found.refund_amount, found.total_amount) == (Decimal("3.00"), Decimal("9.90"))
    assert found.gmt_refund_pay is not None and found.gmt_refund_pay.utcoffset() == CST_OFFSET
    missing = call(client, "refund_query", out_trade_no="RQ1", out_request_no="RQ1-zzz")
    assert not missing.refunded and missing.refund_status is None and missing.refund_amount is None
    assert missing.out_request_no == "RQ1-zzz"


# -- faults, for every call ----------------------------------------------------------------------------------


def prepare(stub: OpenApiGateway, name: str) -> dict[str, Any]:
    """A trade each call can succeed on, and the call's arguments."""
    if name == "query":
        stub.add_trade("F1", "TRADE_SUCCESS")
        return {"out_trade_no": "F1"}
    if name == "refund":
        stub.add_trade("F1", "TRADE_SUCCESS")
        return {"out_trade_no": "F1", "refund_amount": Decimal("1.00"), "out_request_no": "F1-r"}
    if name == "close":
        stub.add_trade("F1", "WAIT_BUYER_PAY")
        return {"out_trade_no": "F1"}
    stub.add_trade("F1", "TRADE_SUCCESS", refunds={"F1-r": "1.00"})
    return {"out_trade_no": "F1", "out_request_no": "F1-r"}


CALLS = ["query", "refund", "close", "refund_query"]

# fault -> (what an idempotent call raises, with which attribute values; the refund's OutcomeUnknown reason)
ANSWER_FAULTS: dict[str, tuple[type[Exception], dict[str, Any], str]] = {
    "service_unavailable": (AlipayApiError, {"code": "20000", "verified": True}, "service_unavailable"),
    "system_error": (AlipayApiError, {"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"}, "system_error"),
    "unsigned_error": (AlipayApiError, {"code": "40002", "sub_code": "isv.invalid-app-id", "verified": False},
                       "unsigned_error"),
    "unsigned_success": (AlipayApiError, {"code": "10000", "verified": False}, "unsigned_error"),
    "tampered": (ResponseError, {"reason": "bad_signature"}, "unverifiable_response"),
    "unsigned_response": (ResponseError, {"reason": "missing_sign"}, "unverifiable_response"),
    "duplicate_key": (ResponseError, {"reason": "duplicate_key"}, "unverifiable_response"),
    "truncated_json": (ResponseError, {"reason": "malformed_response"}, "unverifiable_response"),
    "mismatch": (ResponseMismatch, {"reason": "response_mismatch"}, "unverifiable_response"),
}


@pytest.mark.parametrize("fault", list(ANSWER_FAULTS))
@pytest.mark.parametrize("name", CALLS)
def test_answer_faults_are_never_data_and_never_retried(stub, make_client, call, name, fault):
    kwargs = prepare(stub, name)
    stub.fault(METHOD_OF[name], fault)
    error_type, attributes, refund_reason = ANSWER_FAULTS[fault]
    if name == "refund":
        with pytest.raises(OutcomeUnknown) as unknown:
            call(make_client(), name, **kwargs)
        assert (unknown.value.reason, unknown.value.method, unknown.value.out_request_no) == (
            refund_reason, REFUND, "F1-r")
        if error_type is AlipayApiError:
            assert unknown.value.code == attributes["code"]
        else:
            assert isinstance(unknown.value.__cause__, error_type)
            assert unknown.value.__cause__.reason == attributes["reason"]
    else:
        with pytest.raises(error_type) as caught:
            call(make_client(), name, **kwargs)
        for attribute, value in attributes.items():
            assert getattr(caught.value, attribute) == value
    assert stub.count() == 1


def test_tampered_paid_status_is_refused(stub, make_client, call):
    stub.add_trade("T1", "WAIT_BUYER_PAY")
    stub.fault(QUERY, "tampered", changes={"trade_status": "TRADE_SUCCESS"})
    with pytest.raises(ResponseError, match="bad_signature"):
        call(make_client(), "query", out_trade_no="T1")


@pytest.mark.parametrize(("answered_sn", "name"), [("SN-LOADED", "query"), ("SN-ROTATED", "query"),
                                                    ("SN-ROTATED", "refund")])
def test_certificate_serial_number_is_checked(stub, keys, call, answered_sn, name):
    kwargs = prepare(stub, name)
    config = make_config(keys, gateway=stub.url)
    object.__setattr__(config, "alipay_cert_sn", "SN-LOADED")  # as certificate mode sets it
    stub.fault(METHOD_OF[name], "cert_sn", sn=answered_sn)
    client = AlipayClient(config, timeout=TIMEOUT, backoff=0)
    if answered_sn == "SN-LOADED":
        assert call(client, name, **kwargs).exists
    elif name == "refund":
        with pytest.raises(OutcomeUnknown) as unknown:
            call(client, name, **kwargs)
        assert unknown.value.__cause__.reason == "cert_sn_mismatch"
    else:
        with pytest.raises(ResponseError, match="cert_sn_mismatch"):
            call(client, name, **kwargs)
    assert stub.count() == 1


def test_query_forced_not_exist_fault(stub, make_client, call):
    stub.add_trade("T2", "TRADE_SUCCESS")
    stub.fault(QUERY, "not_exist")
    assert call(make_client(), "query", out_trade_no="T2").exists is False


TRANSPORT_FAULTS = ["truncated", "drop", "http_502", "hang"]


def transport_client(make_client: Callable[..., AlipayClient], fault: str, **kwargs: Any) -> AlipayClient:
    return make_client(timeout=HANG_TIMEOUT, **kwargs) if fault == "hang" else make_client(**kwargs)


@pytest.mark.parametrize("fault", TRANSPORT_FAULTS)
@pytest.mark.parametrize("name", CALLS)
def test_transport_fault_once(stub, make_client, call, name, fault):
    """Idempotent calls retry and succeed; a refund that may have been sent is an unknown outcome."""
    kwargs = prepare(stub, name)
    stub.fault(METHOD_OF[name], fault)
    client = transport_client(make_client, fault)
    if name == "refund":
        with pytest.raises(OutcomeUnknown) as caught:
            call(client, name, **kwargs)
        reason = {"truncated": "connection_lost", "drop": "connection_lost", "http_502": "http_error",
                  "hang": "timeout"}[fault]
        assert caught.value.reason == reason
        assert "query" in str(caught.value)
        assert stub.count() == 1  # never retried
    else:
        result = call(client, name, **kwargs)
        assert result.out_trade_no == "F1"
        assert stub.count() == 2


@pytest.mark.parametrize("fault", TRANSPORT_FAULTS)
def test_transport_fault_persisting_exhausts_retries(stub, make_client, call, fault):
    stub.add_trade("F1", "TRADE_SUCCESS")
    stub.fault(QUERY, fault, times=10)
    with pytest.raises(GatewayUnavailable, match="after 3 attempts"):
        call(transport_client(make_client, fault), "query", out_trade_no="F1")
    assert stub.count() == 3


def test_http_404_from_the_gateway_is_not_retried(stub, make_client, call):
    # A 4xx is an answer (a wrong gateway URL, say), not network trouble: trying again cannot help.
    stub.add_trade("F1", "TRADE_SUCCESS")
    stub.fault(QUERY, "http_404", times=10)
    with pytest.raises(GatewayUnavailable, match="404"):
        call(make_client(retries=3, backoff=0.001), "query", out_trade_no="F1")
    assert stub.count() == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_are_bounded(stub, make_client, call, retries):
    stub.add_trade("F1", "TRADE_SUCCESS")
    stub.fault(REFUND_QUERY, "http_502", times=10)
    with pytest.raises(GatewayUnavailable):
        call(make_client(retries=retries, backoff=0.001), "refund_query", out_trade_no="F1", out_request_no="x")
    assert stub.count() == 1 + retries


@pytest.mark.parametrize("name", CALLS)
def test_connection_refused(stub, make_client, call, caplog, name):
    kwargs = prepare(stub, name)
    caplog.set_level(logging.INFO, logger="alipay_middleware")
    with pytest.raises(GatewayUnavailable) as caught:
        call(make_client(gateway=stub.refused_url()), name, **kwargs)
    assert "nothing was sent" in str(caught.value)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == (0 if name == "refund" else 2)  # a refund is never repeated automatically


def test_refund_timeout_after_sending_then_recovery(stub, make_client, call):
    trade = stub.add_trade("U1", "TRADE_SUCCESS", "9.90")
    stub.fault(REFUND, "apply_then_hang")
    client = make_client(timeout=HANG_TIMEOUT)
    with pytest.raises(OutcomeUnknown) as caught:
        call(client, "refund", out_trade_no="U1", refund_amount="4.00", out_request_no="U1-a")
    assert (caught.value.reason, caught.value.out_request_no) == ("timeout", "U1-a")
    # What the error says to do: ask first, then repeat with the same number.
    assert call(client, "refund_query", out_trade_no="U1", out_request_no="U1-a").refunded
    again = call(client, "refund", out_trade_no="U1", refund_amount="4.00", out_request_no="U1-a")
    assert not again.fund_change and again.confirmed
    assert trade.refunded == Decimal("4.00")  # the money moved once


def test_refund_20000_then_recovery(stub, make_client, call):
    trade = stub.add_trade("U2", "TRADE_SUCCESS", "9.90")
    stub.fault(REFUND, "service_unavailable")
    client = make_client()
    with pytest.raises(OutcomeUnknown) as caught:
        call(client, "refund", out_trade_no="U2", refund_amount="1.00", out_request_no="U2-a")
    assert (caught.value.code, caught.value.sub_code) == ("20000", "isp.unknow-error")
    assert not isinstance(caught.value, AlipayApiError)  # "we don't know" is not "Alipay said no"
    assert not call(client, "refund_query", out_trade_no="U2", out_request_no="U2-a").refunded
    assert call(client, "refund", out_trade_no="U2", refund_amount="1.00", out_request_no="U2-a").fund_change
    assert trade.refunded == Decimal("1.00")


def test_refund_n_with_unreachable_confirmation_is_unknown(stub, make_client, call):
    stub.add_trade("U3", "TRADE_SUCCESS", "9.90", refunds={"U3-a": "1.00"})
    stub.fault(REFUND_QUERY, "http_502", times=10)
    with pytest.raises(OutcomeUnknown) as caught:
        call(make_client(), "refund", out_trade_no="U3", refund_amount="1.00", out_request_no="U3-a")
    assert caught.value.reason == "unconfirmed"
    assert isinstance(caught.value.__cause__, GatewayUnavailable)
    assert (stub.count(REFUND), stub.count(REFUND_QUERY)) == (1, 3)


def test_oversized_answer_is_refused(stub, make_client, call):
    stub.add_trade("Z1", "TRADE_SUCCESS", body="x" * 5000)
    with pytest.raises(ResponseError, match="longer than 1024"):
        call(make_client(max_response=1024), "query", out_trade_no="Z1")
    assert stub.count() == 1


# -- async: never on the event loop --------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["to_thread", "alipay_executor", "own_executor"])
def test_async_call_leaves_the_event_loop_running(stub, keys, make_alipay, via):
    stub.add_trade("A1", "TRADE_SUCCESS")
    stub.fault(QUERY, "hold")
    owned = None
    if via == "alipay_executor":
        aclient = make_alipay(config={"gateway": stub.url}).aclient
    else:
        from concurrent.futures import ThreadPoolExecutor

        owned = ThreadPoolExecutor(1) if via == "own_executor" else None
        aclient = AsyncAlipayClient(make_config(keys, gateway=stub.url), timeout=10, executor=owned)

    async def main() -> tuple[TradeQuery, int, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        ticking = asyncio.create_task(ticker())
        query = asyncio.create_task(aclient.query(out_trade_no="A1"))
        for _ in range(2000):  # until the stub holds the request (a bound, not a timing assertion)
            if stub.holding.is_set():
                break
            await asyncio.sleep(0.005)
        assert stub.holding.is_set()
        held_at = ticks
        for _ in range(2000):
            if ticks >= held_at + 5:
                break
            await asyncio.sleep(0.005)
        assert not query.done()  # the call is in flight while the loop went on ticking
        ticks_while_held = ticks - held_at
        stub.release()
        result = await query
        stop.set()
        await ticking
        return result, ticks_while_held, stub.count()

    try:
        result, ticks_while_held, requests = asyncio.run(main())
    finally:
        if owned is not None:
            owned.shutdown()
    assert result.paid and ticks_while_held >= 5 and requests == 1


def test_async_refund_unknown_outcome(stub, keys):
    stub.add_trade("A2", "TRADE_SUCCESS")
    stub.fault(REFUND, "service_unavailable")
    aclient = AsyncAlipayClient(make_config(keys, gateway=stub.url), timeout=TIMEOUT, backoff=0)

    async def main() -> None:
        with pytest.raises(OutcomeUnknown):
            await aclient.refund(out_trade_no="A2", refund_amount=Decimal("1.00"), out_request_no="A2-a")
        assert (await aclient.refund_query(out_trade_no="A2", out_request_no="A2-a")).refunded is False
        assert (await aclient.refund(out_trade_no="A2", refund_amount=Decimal("1.00"),
                                     out_request_no="A2-a")).fund_change
        with pytest.raises(AlipayApiError, match="ACQ.TRADE_STATUS_ERROR"):  # a paid trade cannot be closed
            await aclient.close(out_trade_no="A2")

    asyncio.run(main())
    assert stub.count(REFUND) == 2


# -- the Alipay object ---------------------------------------------------------------------------------------


def test_alipay_client_properties(stub, make_alipay):
    alipay = make_alipay(config={"gateway": stub.url})
    assert isinstance(alipay.client, AlipayClient) and alipay.client is alipay.client
    assert isinstance(alipay.aclient, AsyncAlipayClient) and alipay.aclient is alipay.aclient
    assert alipay.client.protocol is alipay.protocol
    stub.add_trade("P1", "WAIT_BUYER_PAY")
    assert alipay.client.query(out_trade_no="P1").trade_status == "WAIT_BUYER_PAY"
    assert asyncio.run(alipay.aclient.close(out_trade_no="P1")).out_trade_no == "P1"
    alipay.close()  # drops the pool; the async client makes a new one on its next call
    assert asyncio.run(alipay.aclient.query(out_trade_no="P1")).trade_status == "TRADE_CLOSED"


def test_legacy_config_gets_the_legacy_client():
    from alipay_middleware import LegacyClient

    alipay = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY), ledger=":memory:")
    try:
        assert isinstance(alipay.client, LegacyClient) and isinstance(alipay.aclient.sync, LegacyClient)
    finally:
        alipay.close()
    with pytest.raises(TypeError, match="LegacyConfig"):
        AlipayClient(LegacyConfig(partner=PARTNER, key=MD5_KEY))  # type: ignore[arg-type]


# -- arguments are checked before anything is sent -----------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs", "error"), [
    ("refund", {"out_trade_no": "V1", "refund_amount": 1.5, "out_request_no": "r"}, TypeError),
    ("refund", {"out_trade_no": "V1", "refund_amount": Decimal("1.005"), "out_request_no": "r"}, ValueError),
    ("refund", {"out_trade_no": "V1", "refund_amount": Decimal("0"), "out_request_no": "r"}, ValueError),
    ("refund", {"out_trade_no": "V1", "refund_amount": "1.00", "out_request_no": "has space"}, ValueError),
    ("refund", {"out_trade_no": "V1", "refund_amount": "1.00", "out_request_no": "r", "refund_reason": 3},
     ValueError),
    ("query", {}, ValueError),
    ("close", {"out_trade_no": ""}, ValueError),
    ("refund_query", {"trade_no": "x" * 65, "out_request_no": "r"}, ValueError),
    ("refund_query", {"out_trade_no": "V1", "out_request_no": None}, ValueError),
], ids=["float", "three_decimals", "zero", "space_in_request_no", "reason_not_str", "no_trade", "empty_id",
        "long_trade_no", "no_request_no"])
def test_bad_arguments_send_nothing(stub, make_client, call, name, kwargs, error):
    with pytest.raises(error):
        call(make_client(), name, **kwargs)
    assert stub.count() == 0


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": True}, {"retries": -1}, {"retries": 11},
                                    {"backoff": float("nan")}, {"max_response": 10}])
def test_bad_client_settings(keys, kwargs):
    with pytest.raises(ValueError):
        AlipayClient(make_config(keys), **kwargs)


def test_request_signed_with_another_key_is_refused_by_the_stub(stub, keys, call):
    stranger = RSA.generate(2048)
    config = make_config(keys, gateway=stub.url, app_private_key=stranger.export_key().decode())
    with pytest.raises(AlipayApiError) as caught:
        call(AlipayClient(config, timeout=TIMEOUT, backoff=0), "query", out_trade_no="S1")
    assert caught.value.sub_code == "isv.invalid-signature"
    assert stub.problems == ["bad request signature"]
    stub.problems.clear()


# -- logs and the network ------------------------------------------------------------------------------------


def test_one_info_line_per_call_without_secrets(stub, make_client, caplog):
    stub.add_trade("L1", "TRADE_SUCCESS", "9.90", buyer_logon_id="secret-buyer@example.com")
    caplog.set_level(logging.INFO, logger="alipay_middleware")
    client = make_client()
    client.query(out_trade_no="L1")
    client.query(out_trade_no="NOPE")
    client.refund(out_trade_no="L1", refund_amount="1.00", out_request_no="L1-a")
    client.refund(out_trade_no="L1", refund_amount="1.00", out_request_no="L1-a")  # + its refund_query
    with pytest.raises(AlipayApiError):
        client.close(out_trade_no="L1")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == [
        f"alipay call method={QUERY} out_trade_no=L1 outcome=10000 attempts=1",
        f"alipay call method={QUERY} out_trade_no=NOPE outcome=40004/ACQ.TRADE_NOT_EXIST attempts=1",
        f"alipay call method={REFUND} out_trade_no=L1 outcome=10000/fund_change=Y attempts=1",
        f"alipay call method={REFUND} out_trade_no=L1 outcome=10000/fund_change=N attempts=1",
        f"alipay call method={REFUND_QUERY} trade_no={stub.trades['L1'].trade_no} outcome=10000/REFUND_SUCCESS "
        "attempts=1",
        f"alipay call method={CLOSE} out_trade_no=L1 outcome=40004/ACQ.TRADE_STATUS_ERROR attempts=1",
    ]
    text = caplog.text
    assert "secret-buyer" not in text and "sign" not in text and "BEGIN" not in text


def test_guard_blocks_the_real_gateway(keys, net_guard):
    client = AlipayClient(make_config(keys), timeout=TIMEOUT, retries=0)  # the production gateway
    assert client.config.gateway == PRODUCTION_GATEWAY
    with pytest.raises(GatewayUnavailable, match="nothing was sent"):
        client.query(out_trade_no="G1")
    assert net_guard.blocked == ["openapi.alipay.com"]


def test_client_module_is_pure():
    code = ("import sys, alipay_middleware.gateway.client; "
            "print([m for m in ('werkzeug', 'asgiref') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_calls_are_thread_safe(stub, make_client):
    for n in range(8):
        stub.add_trade(f"M{n}", "TRADE_SUCCESS")
    client = make_client()
    results: list[str] = []

    def work(n: int) -> None:
        results.append(client.query(out_trade_no=f"M{n}").out_trade_no)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [f"M{n}" for n in range(8)]


# -- call(): any other API ---------------------------------------------------------------------------------


def test_call_returns_the_verified_payload_and_sends_extra_common_params(stub, make_client, call):
    trade = stub.add_trade("C1", "TRADE_SUCCESS", "9.90")
    payload = call(make_client(), "call", method=QUERY, biz={"out_trade_no": "C1"}, idempotent=True,
                   app_auth_token="token-1")
    assert isinstance(payload, dict) and payload["code"] == "10000"
    assert (payload["trade_no"], payload["trade_status"], payload["total_amount"]) == (trade.trade_no, "TRADE_SUCCESS",
                                                                                       "9.90")
    sent = stub.received[-1]
    assert sent.method == QUERY and sent.biz == {"out_trade_no": "C1"} and sent.params["app_auth_token"] == "token-1"
    assert "idempotent" not in sent.params and "timeout" not in sent.params


def test_call_sends_decimals_as_their_exact_string_and_moves_money_once(stub, make_client, call):
    trade = stub.add_trade("C2", "TRADE_SUCCESS", "9.90")
    payload = call(make_client(), "call", method=REFUND,
                   biz={"out_trade_no": "C2", "refund_amount": Decimal("4.00"), "out_request_no": "C2-r1"})
    assert payload["fund_change"] == "Y" and stub.received[-1].biz["refund_amount"] == "4.00"
    assert trade.refunded == Decimal("4.00")


def test_call_raises_alipay_api_error_when_alipay_says_no(stub, make_client, call):
    with pytest.raises(AlipayApiError) as caught:
        call(make_client(), "call", method=QUERY, biz={"out_trade_no": "NOPE"}, idempotent=True)
    assert caught.value.sub_code == "ACQ.TRADE_NOT_EXIST" and caught.value.verified


def test_call_tampered_answer_is_an_error_and_for_a_non_idempotent_call_an_unknown_outcome(stub, make_client, call):
    stub.add_trade("C3", "TRADE_WAIT_BUYER_PAY", "9.90")
    stub.fault(QUERY, "tampered", changes={"trade_status": "TRADE_SUCCESS"})
    with pytest.raises(ResponseError):
        call(make_client(), "call", method=QUERY, biz={"out_trade_no": "C3"}, idempotent=True)
    stub.fault(QUERY, "tampered", changes={"trade_status": "TRADE_SUCCESS"})
    with pytest.raises(OutcomeUnknown) as caught:
        call(make_client(), "call", method=QUERY, biz={"out_trade_no": "C3"})
    assert caught.value.reason == "unverifiable_response" and caught.value.out_trade_no == "C3"


def test_call_retries_network_trouble_only_when_idempotent(stub, make_client, call):
    stub.add_trade("C4", "TRADE_SUCCESS", "9.90")
    stub.fault(QUERY, "http_502", times=10)
    with pytest.raises(GatewayUnavailable, match="after 3 attempts"):
        call(make_client(), "call", method=QUERY, biz={"out_trade_no": "C4"}, idempotent=True)
    assert stub.count() == 3
    with pytest.raises(OutcomeUnknown) as caught:  # sent, answered 502: it may have happened
        call(make_client(), "call", method=QUERY, biz={"out_trade_no": "C4"})
    assert caught.value.reason == "http_error" and stub.count() == 4


def test_call_timeout_applies_to_that_call(stub, make_client, call):
    stub.add_trade("C5", "TRADE_SUCCESS", "9.90")
    stub.fault(REFUND, "apply_then_hang")
    client = make_client(timeout=30)  # the client's own timeout would wait; the call's does not
    with pytest.raises(OutcomeUnknown) as caught:
        call(client, "call", method=REFUND, biz={"out_trade_no": "C5", "refund_amount": "1.00",
                                                 "out_request_no": "C5-r1"}, timeout=HANG_TIMEOUT)
    assert caught.value.reason == "timeout" and client.timeout == 30


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("alipay.trade.query", {}), {"sign": "x"}, ValueError, "sign is set by the client"),
    (("alipay.trade.query", {}), {"app_id": "2021"}, ValueError, "app_id is set by the client"),
    (("alipay.trade.query", {}), {"app_auth_token": 5}, TypeError, "app_auth_token must be a str"),
    (("trade query", {}), {}, ValueError, "Open Platform method name"),
    (("alipay.trade.query", ["out_trade_no"]), {}, TypeError, "biz must be a mapping"),
    (("alipay.trade.query", {"when": datetime(2026, 1, 1)}), {}, TypeError, "JSON-serialisable"),
    (("alipay.trade.query", {}), {"timeout": 0}, ValueError, "timeout must be"),
    (("alipay.trade.query", {}), {"idempotent": "yes"}, TypeError, "idempotent must be"),
])
def test_call_refuses_bad_arguments_before_sending(stub, make_client, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_client().call(*args, **kwargs)
    assert stub.count() == 0


def test_call_is_unsupported_for_a_legacy_merchant():
    from alipay_middleware import UnsupportedCall

    alipay = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY), ledger=":memory:")
    try:
        with pytest.raises(UnsupportedCall, match="Open Platform"):
            alipay.client.call("alipay.trade.query", {"out_trade_no": "A1"})
        with pytest.raises(UnsupportedCall, match="Open Platform"):
            asyncio.run(alipay.aclient.call("alipay.trade.query", {"out_trade_no": "A1"}))
    finally:
        alipay.close()
