"""A loopback stand-in for the Open Platform gateway's server-side APIs (query, refund, close, refund query).

It checks requests the way Alipay does (form body, ``charset=utf-8`` in the URL, the RSA2 signature over
every parameter but ``sign`` with ``sign_type`` kept, sorted; app id, timestamp within ten minutes of
Beijing time), keeps trades in memory, and answers ``{"<method>_response": {...}, "sign": "..."}`` signed
with the stand-in Alipay key, serialized with ``ensure_ascii=False`` and whitespace, so that the client
has to verify the exact raw text. Anything wrong with a request lands in ``problems`` (a test fixture
asserts it stays empty).

``fault(method, kind, times=1)`` makes the next ``times`` requests for ``method`` misbehave:

- answers: ``service_unavailable`` (code 20000), ``system_error`` (40004 ``ACQ.SYSTEM_ERROR``),
  ``not_exist`` (40004 ``ACQ.TRADE_NOT_EXIST``), ``fund_change_n`` (a refund answered ``N`` without
  refunding), ``no_fund_change`` (a refund answered without ``fund_change`` at all, without refunding),
  ``tampered`` (the text changed after signing), ``unsigned_error`` (an ``error_response``
  without ``sign``), ``unsigned_success`` (the same claiming code 10000), ``unsigned_response`` (the
  method's response without ``sign``), ``duplicate_key`` (a signed payload repeating ``code``),
  ``mismatch`` (a correctly signed answer about another trade), ``truncated_json`` (half the body with a
  matching Content-Length), ``cert_sn`` (a signed answer with a top-level ``alipay_cert_sn`` of
  ``sn=...``);
- transport: ``truncated`` (Content-Length of the whole body, half of it sent, then the connection
  closed), ``drop`` (connection closed without an answer), ``hang`` (no answer until the stub closes),
  ``http_502``, ``apply_then_hang`` (the request takes effect, then no answer), ``hold`` (no answer until
  ``release()``, then a normal one).

``refused_url()`` gives a loopback URL whose port refuses connections (bound, never listening). The server,
the fault queue and the transport faults shared with the legacy stub are in ``fake_gateway.py``.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from fake_gateway import FakeGateway

CST = timezone(timedelta(hours=8))
METHODS = ("alipay.trade.query", "alipay.trade.refund", "alipay.trade.close", "alipay.trade.fastpay.refund.query")
SUCCESS = {"code": "10000", "msg": "Success"}
JSON = "application/json;charset=utf-8"


def failed(sub_code: str, sub_msg: str, **extra: str) -> dict[str, str]:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg, **extra}


@dataclass
class Trade:
    out_trade_no: str
    trade_no: str
    status: str
    total_amount: Decimal
    refunds: dict[str, Decimal] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def refunded(self) -> Decimal:
        return sum(self.refunds.values(), Decimal("0.00"))


@dataclass
class Received:
    method: str
    params: dict[str, str]
    biz: dict[str, Any]


class OpenApiGateway(FakeGateway[Trade]):
    accepts = "POST"

    def __init__(self, app_public_key: RSA.RsaKey, alipay_key: RSA.RsaKey, app_id: str) -> None:
        self.app_public_key = app_public_key
        self.alipay_key = alipay_key
        self.app_id = app_id
        self.received: list[Received] = []
        self.holding = threading.Event()
        self.released = threading.Event()
        super().__init__()

    # -- test controls ---------------------------------------------------------------------------------

    def add_trade(self, out_trade_no: str, status: str = "TRADE_SUCCESS", total_amount: str = "9.90",
                  refunds: dict[str, str] | None = None, **extra: str) -> Trade:
        trade = Trade(out_trade_no, self._next_trade_no("2024010122001400"), status, Decimal(total_amount),
                      {k: Decimal(v) for k, v in (refunds or {}).items()}, dict(extra))
        with self.lock:
            self.trades[out_trade_no] = trade
        return trade

    def fault(self, method: str, kind: str, times: int = 1, **options: Any) -> None:
        assert method in METHODS, method
        self._queue_fault(method, kind, times, options)

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.received if method is None or r.method == method)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        super().close()

    # -- one request -------------------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        params = self._check_request(handler, body)
        if params is None:
            self._send(handler, self._body("error_response", {
                "code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature",
                "sub_msg": "验签出错"}), JSON)
            return
        method = params["method"]
        biz = json.loads(params["biz_content"])
        with self.lock:
            self.received.append(Received(method, params, biz))
            kind, options = self._take_fault(method)
        if self._transport_fault(handler, kind):
            return
        if kind == "hold":
            self.holding.set()
            self.released.wait(30)
        with self.lock:
            payload = self._answer(method, biz, kind)
        if kind == "apply_then_hang":
            self.closing.wait(30)
            return
        key = method.replace(".", "_") + "_response"
        raw = self._faulty_body(key, payload, kind, options)
        if kind == "truncated":
            handler.send_response(200)
            handler.send_header("Content-Type", JSON)
            handler.send_header("Content-Length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw[: len(raw) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if kind == "truncated_json":
            raw = raw[: len(raw) // 2]
        self._send(handler, raw, JSON)

    def _check_request(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> dict[str, str] | None:
        problems = self.problems
        query = dict(parse_qsl(urlsplit(handler.path).query))
        if query.get("charset") != "utf-8":
            problems.append("charset missing from the URL query")
        content_type = handler.headers.get("Content-Type", "")
        if not re.fullmatch(r"application/x-www-form-urlencoded;\s*charset=utf-8", content_type, re.IGNORECASE):
            problems.append(f"content type {content_type!r}")
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                              encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            problems.append("form body does not parse")
            return None
        params = dict(pairs)
        if len(params) != len(pairs):
            problems.append("duplicate form fields")
        sign = params.get("sign", "")
        text = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v)
        try:
            pkcs1_15.new(self.app_public_key).verify(SHA256.new(text.encode("utf-8")), base64.b64decode(sign))
        except (ValueError, TypeError):
            problems.append("bad request signature")
            return None
        expected = {"app_id": self.app_id, "sign_type": "RSA2", "charset": "utf-8", "format": "JSON",
                    "version": "1.0"}
        for name, value in expected.items():
            if params.get(name) != value:
                problems.append(f"{name}={params.get(name)!r}")
        if params.get("method") not in METHODS:
            problems.append(f"method {params.get('method')!r}")
            return None
        for name in ("notify_url", "return_url"):
            if name in params:
                problems.append(f"{name} sent to a server-side API")
        try:
            sent_at = datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
            if abs(datetime.now(CST) - sent_at) > timedelta(minutes=10):
                problems.append(f"timestamp {params['timestamp']} is not Beijing time now")
        except ValueError:
            problems.append("timestamp malformed")
        try:
            biz = json.loads(params.get("biz_content", ""))
        except ValueError:
            problems.append("biz_content is not JSON")
            return None
        if not isinstance(biz, dict) or not (biz.get("out_trade_no") or biz.get("trade_no")):
            problems.append("biz_content names no trade")
            return None
        return params

    # -- what Alipay would answer ------------------------------------------------------------------------

    def _answer(self, method: str, biz: dict[str, Any], kind: str) -> dict[str, Any]:
        if kind == "service_unavailable":
            return {"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error",
                    "sub_msg": "系统繁忙"}
        if kind == "system_error":
            return failed("ACQ.SYSTEM_ERROR", "系统错误")
        trade = None if kind == "not_exist" else self._find(biz)
        if trade is None:
            return failed("ACQ.TRADE_NOT_EXIST", "交易不存在", out_trade_no=biz.get("out_trade_no", ""))
        ids = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}
        if method == "alipay.trade.query":
            paid = trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED") or trade.refunds
            amounts = {"total_amount": f"{trade.total_amount:.2f}",
                       "buyer_pay_amount": f"{trade.total_amount:.2f}" if paid else "0.00",
                       "receipt_amount": f"{trade.total_amount:.2f}" if paid else "0.00"}
            answer = {**SUCCESS, **ids, "buyer_logon_id": "159****5620", "trade_status": trade.status, **amounts}
            if paid:
                answer["send_pay_date"] = "2024-01-01 12:00:06"
            return {**answer, **trade.extra}
        if method == "alipay.trade.close":
            if trade.status in ("WAIT_BUYER_PAY", "TRADE_CLOSED") and not trade.refunds:
                trade.status = "TRADE_CLOSED"
                return {**SUCCESS, **ids}
            return failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        request_no = biz.get("out_request_no", "")
        if method == "alipay.trade.fastpay.refund.query":
            if request_no not in trade.refunds:
                return dict(SUCCESS)
            return {**SUCCESS, **ids, "out_request_no": request_no,
                    "refund_amount": f"{trade.refunds[request_no]:.2f}",
                    "total_amount": f"{trade.total_amount:.2f}", "refund_status": "REFUND_SUCCESS",
                    "gmt_refund_pay": "2024-01-02 10:00:00"}
        # alipay.trade.refund
        amount = Decimal(biz["refund_amount"])
        answer = {**SUCCESS, **ids, "buyer_logon_id": "159****5620", "gmt_refund_pay": "2024-01-02 10:00:00"}
        if kind == "fund_change_n":
            return {**answer, "fund_change": "N", "refund_fee": f"{trade.refunded:.2f}"}
        if kind == "no_fund_change":
            return {**answer, "refund_fee": f"{trade.refunded:.2f}"}
        if request_no in trade.refunds:  # a repeated request: no money moves, and it says so
            if trade.refunds[request_no] != amount:
                return failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与原请求不一致")
            return {**answer, "fund_change": "N", "refund_fee": f"{trade.refunded:.2f}"}
        if trade.status != "TRADE_SUCCESS":
            return failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.refunded + amount > trade.total_amount:
            return failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        trade.refunds[request_no] = amount
        if trade.refunded == trade.total_amount:
            trade.status = "TRADE_CLOSED"
        return {**answer, "fund_change": "Y", "refund_fee": f"{trade.refunded:.2f}"}

    # -- bodies ------------------------------------------------------------------------------------------

    def sign(self, text: str) -> str:
        digest = SHA256.new(text.encode("utf-8"))
        return base64.b64encode(pkcs1_15.new(self.alipay_key).sign(digest)).decode("ascii")

    @staticmethod
    def _text(payload: dict[str, Any]) -> str:
        return json.dumps(payload, ensure_ascii=False, indent=2)

    def _body(self, key: str, payload: dict[str, Any] | str, *, sign: str | None = "auto") -> bytes:
        text = payload if isinstance(payload, str) else self._text(payload)
        members = [f'"{key}" : {text}']
        if sign == "auto":
            sign = self.sign(text)
        if sign is not None:
            members.append(f'"sign" : "{sign}"')
        return ("{\n  " + " ,\n  ".join(members) + "\n}\n").encode("utf-8")

    def _faulty_body(self, key: str, payload: dict[str, Any], kind: str, options: dict[str, Any]) -> bytes:
        if kind == "tampered":
            changes = options.get("changes") or {"msg": "Success."}
            return self._body(key, self._text({**payload, **changes}), sign=self.sign(self._text(payload)))
        if kind == "unsigned_error":
            return self._body("error_response", {"code": "40002", "msg": "Invalid Arguments",
                                                 "sub_code": "isv.invalid-app-id", "sub_msg": "无效的AppID参数"},
                              sign=None)
        if kind == "unsigned_success":
            return self._body("error_response", {**payload, "code": "10000", "msg": "Success"}, sign=None)
        if kind == "unsigned_response":
            return self._body(key, payload, sign=None)
        if kind == "duplicate_key":
            # Signed by Alipay's key, so only the duplicate-key rule stands between it and a forged success.
            first = self._text(failed("ACQ.TRADE_NOT_EXIST", "交易不存在"))[:-2]
            return self._body(key, first + ",\n" + self._text(payload)[1:])
        if kind == "cert_sn":  # certificate mode: a top-level, unsigned alipay_cert_sn
            text = self._text(payload)
            return (f'{{"{key}":{text},"sign":"{self.sign(text)}","alipay_cert_sn":"{options["sn"]}"}}'
                    ).encode()
        if kind == "mismatch":
            return self._body(key, {**payload, "out_trade_no": "SOMEONE-ELSE", "out_request_no": "SOMEONE-ELSE"})
        return self._body(key, payload)
