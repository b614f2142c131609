"""Talking back to Alipay: trade query, refund, close and refund query, and ``call()`` for any other API.

    client = alipay.client                      # or AlipayClient(config, timeout=10.0, retries=2)
    trade = client.query(out_trade_no="A1")     # TradeQuery; trade.exists is False until the buyer acts
    result = client.refund(out_trade_no="A1", refund_amount=Decimal("9.90"), out_request_no="A1-r1")

    result = await alipay.aclient.refund(...)   # the same calls as coroutines, run in a thread
    payload = client.call("alipay.trade.query", {"out_trade_no": "A1"}, idempotent=True)  # any other API

Money safety, up front:

- A refund is never retried automatically and never guessed. Code ``20000``, ``ACQ.SYSTEM_ERROR``, an
  unsigned ``error_response``, a timeout or a lost connection *after the request was sent*, or an answer
  that fails verification all raise :class:`~alipay_middleware.errors.OutcomeUnknown`: call
  :meth:`AlipayClient.refund_query` with the same ``out_request_no`` before anything else, and retry
  only with that same ``out_request_no`` (Alipay deduplicates it). A connection that could not even be
  opened raises :class:`~alipay_middleware.errors.GatewayUnavailable`: nothing was sent.
- ``fund_change=Y`` says this call moved money. ``fund_change=N`` is also what a retry of a refund that
  already happened answers, so it is confirmed with ``refund_query`` (``REFUND_SUCCESS``) and reported
  as ``RefundResult.confirmed``.
- Every answer goes through :func:`~alipay_middleware.wire.response.verify_response` (the exact signed text,
  duplicate keys refused); a tampered answer raises :class:`~alipay_middleware.errors.ResponseError` and
  is never returned as data. A signed answer about another trade or refund request (a replay) raises
  :class:`~alipay_middleware.errors.ResponseMismatch`.
- Only idempotent calls (``query``, ``refund_query``, ``close``) are retried, at most ``retries`` times
  with a short backoff, and only on network trouble: a refused or reset connection, a timeout, an HTTP
  5xx. Never on an answer from Alipay (a business error, ``20000``) or on a verification failure.

For a legacy merchant (``LegacyConfig``), ``alipay.client`` is a
:class:`~alipay_middleware.gateway.legacy_client.LegacyClient` instead: ``single_trade_query`` only, on the same
transport, timeout and retry policy.

Every call goes through :class:`~alipay_middleware.gateway.transport.Transport`, the one policy for all calls to
Alipay: standard library only (``http.client``); environment proxy settings are not used, the config's
``proxy`` is (an HTTP ``CONNECT`` tunnel); redirects are errors, never followed. ``timeout`` bounds a
whole attempt (connect, send, wait, read). One INFO log line per call (method, ``out_trade_no``,
outcome), never keys, bodies or credentials.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from ..errors import AlipayApiError, AlipayError, OutcomeUnknown, ResponseError, ResponseMismatch
from ..protocols.openapi import OpenApiConfig, OpenApiProtocol
from ..wire.form import format_amount, parse_cst
from ..wire.response import GatewayResponse, verify_response
from .base import Call, GatewayClient, Host, config_and_protocol
from .fields import amount_field, check_identifier, text_field, trade_biz
from .results import CloseResult, RefundQuery, RefundResult, TradeQuery
from .transport import USER_AGENT, Transport

__all__ = ["CLOSE", "QUERY", "REFUND", "REFUND_QUERY", "RESERVED_PARAMS", "AlipayClient"]

QUERY = "alipay.trade.query"
REFUND = "alipay.trade.refund"
CLOSE = "alipay.trade.close"
REFUND_QUERY = "alipay.trade.fastpay.refund.query"

#: The common parameters the client sets itself; ``call()`` refuses them as keywords.
RESERVED_PARAMS = frozenset({"app_id", "method", "format", "charset", "sign_type", "sign", "timestamp", "version",
                             "biz_content", "app_cert_sn", "alipay_root_cert_sn"})
_METHOD = re.compile(r"[a-z][a-z0-9]*(?:\.[a-z0-9_]+)+")

SERVICE_UNAVAILABLE = "20000"
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
# Alipay's refund documentation: "系统错误, 请使用相同的参数再次调用" (system error, call again with the
# same parameters): the refund may be under way, so for a refund it is an unknown outcome, not a "no".
SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"


# -- the client ------------------------------------------------------------------------------------------


class AlipayClient(GatewayClient):
    """Server-to-server calls to the Open Platform gateway, synchronous, on the standard library.

    ``alipay_or_config``: an :class:`~alipay_middleware.Alipay` on an ``OpenApiConfig`` (its protocol and
    gateway are used) or an ``OpenApiConfig``. For the legacy service (``LegacyConfig``) use
    :class:`~alipay_middleware.gateway.legacy_client.LegacyClient` (``alipay.client`` picks the right one).
    ``timeout``: seconds for one whole attempt. ``retries``: extra attempts for idempotent calls after
    network trouble, ``backoff`` seconds apart, doubling. ``max_response``: larger answers are refused.
    Thread-safe: each call opens its own connection.
    """

    def __init__(
        self,
        alipay_or_config: Host | OpenApiConfig,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response: int = 1024 * 1024,
    ) -> None:
        config, protocol = config_and_protocol(alipay_or_config)
        if not isinstance(config, OpenApiConfig) or not isinstance(protocol, OpenApiProtocol):
            raise TypeError(
                "AlipayClient speaks the Open Platform gateway (app id + RSA2: alipay.trade.query, .refund, "
                f".close); it does not support {type(config).__name__}. The legacy service's lookups "
                "(single_trade_query, refund_fastpay_by_platform_pwd) are not implemented by this client: "
                "for a LegacyConfig use LegacyClient (alipay.client picks it)"
            )
        self._setup(config.gateway, timeout, retries, backoff, max_response, config.proxy)
        self.config = config
        self.protocol = protocol
        # charset in the URL too (as gateway_form does), so the gateway decodes the form body as UTF-8.
        self._target = self._transport.target("charset=utf-8")

    def __repr__(self) -> str:
        return f"<AlipayClient {self.config.app_id} {self.host}>"

    @property
    def account(self) -> str:
        return self.config.app_id

    # -- the four calls ----------------------------------------------------------------------------------

    def query(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> TradeQuery:
        """``alipay.trade.query``: the trade's status and amounts; ``exists=False`` for
        ``ACQ.TRADE_NOT_EXIST``. Retried on network trouble. Raises :class:`AlipayApiError` for any other
        failure (including ``20000``), :class:`GatewayUnavailable`, :class:`ResponseError`."""
        biz = trade_biz(out_trade_no, trade_no)
        with self._logged(QUERY, out_trade_no, trade_no) as call:
            response = self._exchange(QUERY, biz, idempotent=True, call=call)
            payload = response.payload
            if response.verified and not response.is_error and text_field(payload, "sub_code") == TRADE_NOT_EXIST:
                call.outcome = f"{response.code}/{TRADE_NOT_EXIST}"
                return TradeQuery(False, out_trade_no or "", trade_no or "", None, None, None, None, None, payload)
            _raise_unless_success(QUERY, response)
            _check_echo(QUERY, payload, out_trade_no=out_trade_no, trade_no=trade_no)
            status = payload.get("trade_status")
            return TradeQuery(
                exists=True,
                out_trade_no=text_field(payload, "out_trade_no") or out_trade_no or "",
                trade_no=text_field(payload, "trade_no") or trade_no or "",
                trade_status=status if isinstance(status, str) and status else None,
                total_amount=amount_field(QUERY, payload, "total_amount"),
                buyer_pay_amount=amount_field(QUERY, payload, "buyer_pay_amount"),
                receipt_amount=amount_field(QUERY, payload, "receipt_amount"),
                send_pay_date=parse_cst(text_field(payload, "send_pay_date")),
                raw=payload,
            )

    def refund(
        self,
        *,
        out_trade_no: str | None = None,
        trade_no: str | None = None,
        refund_amount: Decimal | str,
        out_request_no: str,
        refund_reason: str | None = None,
    ) -> RefundResult:
        """``alipay.trade.refund`` for ``refund_amount`` under the request number ``out_request_no`` (your
        idempotency key: one per intended refund, reused for every retry of it). Never retried
        automatically. Raises :class:`OutcomeUnknown` whenever the refund may or may not have happened,
        :class:`AlipayApiError` when Alipay refused it (nothing moved), :class:`GatewayUnavailable` when
        no connection could be opened (nothing was sent)."""
        biz = trade_biz(out_trade_no, trade_no)
        amount = format_amount(refund_amount, "refund_amount")
        request_no = check_identifier(out_request_no, "out_request_no")
        biz["refund_amount"] = amount
        biz["out_request_no"] = request_no
        if refund_reason is not None:
            if not isinstance(refund_reason, str) or len(refund_reason) > 256:
                raise ValueError("refund_reason must be a str of at most 256 characters")
            biz["refund_reason"] = refund_reason

        def unknown(reason: str, detail: str = "", response: GatewayResponse | None = None) -> OutcomeUnknown:
            payload = response.payload if response is not None else {}
            return OutcomeUnknown(
                REFUND, reason, detail, code=text_field(payload, "code"), msg=text_field(payload, "msg"),
                sub_code=text_field(payload, "sub_code"), sub_msg=text_field(payload, "sub_msg"),
                out_trade_no=out_trade_no, trade_no=trade_no, out_request_no=request_no,
            )

        with self._logged(REFUND, out_trade_no, trade_no) as call:
            try:
                response = self._exchange(REFUND, biz, idempotent=False, call=call, unknown=unknown)
            except ResponseError as exc:
                raise unknown("unverifiable_response", exc.reason) from exc
            payload = response.payload
            if not response.verified:
                raise unknown("unsigned_error", "an unsigned error_response proves nothing", response)
            if response.code == SERVICE_UNAVAILABLE:
                raise unknown("service_unavailable", "", response)
            if text_field(payload, "sub_code") == SYSTEM_ERROR:
                raise unknown("system_error", "", response)
            _raise_unless_success(REFUND, response)
            try:
                _check_echo(REFUND, payload, out_trade_no=out_trade_no, trade_no=trade_no)
                refund_fee = amount_field(REFUND, payload, "refund_fee")
            except ResponseError as exc:
                raise unknown("unverifiable_response", exc.reason) from exc
            fund_change = text_field(payload, "fund_change") == "Y"
            call.outcome = f"{response.code}/fund_change={'Y' if fund_change else 'N'}"
        out_trade_no = text_field(payload, "out_trade_no") or out_trade_no
        trade_no = text_field(payload, "trade_no") or trade_no
        confirmation = None
        if not fund_change:
            # "N" is also what a repeated request answers for a refund that already happened: ask.
            try:
                confirmation = self.refund_query(
                    out_trade_no=None if trade_no else out_trade_no, trade_no=trade_no, out_request_no=request_no
                )
            except AlipayError as exc:
                raise unknown("unconfirmed", f"fund_change=N and refund_query failed: {exc}"[:300]) from exc
        return RefundResult(
            out_trade_no=out_trade_no or "",
            trade_no=trade_no or "",
            out_request_no=request_no,
            refund_amount=Decimal(amount),
            refund_fee=refund_fee,
            fund_change=fund_change,
            confirmed=fund_change or (confirmation is not None and confirmation.refunded),
            confirmation=confirmation,
            raw=payload,
        )

    def close(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> CloseResult:
        """``alipay.trade.close``: close an unpaid trade. Idempotent at Alipay, so retried on network
        trouble. ``ACQ.TRADE_NOT_EXIST`` is an :class:`AlipayApiError` here: a page-pay trade the buyer
        has not opened yet cannot be closed (the pay URL stays usable until its ``time_expire``)."""
        biz = trade_biz(out_trade_no, trade_no)
        with self._logged(CLOSE, out_trade_no, trade_no) as call:
            response = self._exchange(CLOSE, biz, idempotent=True, call=call)
            _raise_unless_success(CLOSE, response)
            payload = response.payload
            _check_echo(CLOSE, payload, out_trade_no=out_trade_no, trade_no=trade_no)
            return CloseResult(
                out_trade_no=text_field(payload, "out_trade_no") or out_trade_no or "",
                trade_no=text_field(payload, "trade_no") or trade_no or "",
                raw=payload,
            )

    def refund_query(
        self, *, out_trade_no: str | None = None, trade_no: str | None = None, out_request_no: str
    ) -> RefundQuery:
        """``alipay.trade.fastpay.refund.query``: has the refund ``out_request_no`` happened? (``refunded``).
        Retried on network trouble; failures as for :meth:`query`."""
        biz = trade_biz(out_trade_no, trade_no)
        request_no = check_identifier(out_request_no, "out_request_no")
        biz["out_request_no"] = request_no
        with self._logged(REFUND_QUERY, out_trade_no, trade_no) as call:
            response = self._exchange(REFUND_QUERY, biz, idempotent=True, call=call)
            _raise_unless_success(REFUND_QUERY, response)
            payload = response.payload
            _check_echo(REFUND_QUERY, payload, out_trade_no=out_trade_no, trade_no=trade_no,
                        out_request_no=request_no)
            status = payload.get("refund_status")
            result = RefundQuery(
                out_trade_no=text_field(payload, "out_trade_no") or out_trade_no or "",
                trade_no=text_field(payload, "trade_no") or trade_no or "",
                out_request_no=request_no,
                refund_status=status if isinstance(status, str) and status else None,
                refund_amount=amount_field(REFUND_QUERY, payload, "refund_amount"),
                total_amount=amount_field(REFUND_QUERY, payload, "total_amount"),
                gmt_refund_pay=parse_cst(text_field(payload, "gmt_refund_pay")),
                raw=payload,
            )
            call.outcome = f"{response.code}/{result.refund_status or 'no_refund'}"
            return result

    # -- any other API -------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        biz: Mapping[str, Any] | None = None,
        *,
        idempotent: bool = False,
        timeout: float | None = None,
        **common_params: str,
    ) -> dict[str, Any]:
        """Any Open Platform API (``alipay.trade.royalty.relation.bind``, ``alipay.trade.pay``, ...): the
        verified payload of ``<method>_response`` when Alipay answered code 10000, as a dict.

        ``biz``: the ``biz_content`` (JSON-serialisable; Decimals become strings). ``common_params``: more
        common parameters, as str (``app_auth_token="..."``, ``notify_url="..."``); the ones this client
        sets (:data:`RESERVED_PARAMS`) are refused. ``idempotent`` and ``timeout`` are not sent:
        ``idempotent=True`` lets network trouble be retried (``retries``); the default never retries, and
        then a request that was sent but got no trustworthy answer (a timeout, a lost connection, an
        unverifiable or unsigned answer, code ``20000`` or ``ACQ.SYSTEM_ERROR``) raises
        :class:`OutcomeUnknown`: find out with a query before calling again. ``timeout``: seconds for
        each attempt of this call, instead of the client's. Alipay saying no raises :class:`AlipayApiError`.
        """
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            raise ValueError(f"method must be an Open Platform method name such as 'alipay.trade.query', "
                             f"got {method!r}")
        if biz is not None and not isinstance(biz, Mapping):
            raise TypeError(f"biz must be a mapping (the biz_content), got {type(biz).__name__}")
        if not isinstance(idempotent, bool):
            raise TypeError("idempotent must be True or False")
        for name, value in common_params.items():
            if name in RESERVED_PARAMS:
                raise ValueError(f"{name} is set by the client and cannot be passed to call()")
            if not isinstance(value, str):
                raise TypeError(f"common parameter {name} must be a str, got {type(value).__name__}")
        transport = None
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
                raise ValueError(f"timeout must be a number of seconds in (0, 600], got {timeout!r}")
            transport = copy.copy(self._transport)
            transport.timeout = float(timeout)
        content = {k: _json_value(v) for k, v in (biz or {}).items()}
        try:
            json.dumps(content)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"biz must be JSON-serialisable (str, int, Decimal, bool, None, lists, dicts): {exc}") \
                from None
        out_trade_no, trade_no = content.get("out_trade_no"), content.get("trade_no")

        def unknown(reason: str, detail: str = "", response: GatewayResponse | None = None) -> OutcomeUnknown:
            payload = response.payload if response is not None else {}
            return OutcomeUnknown(
                method, reason, detail, code=text_field(payload, "code"), msg=text_field(payload, "msg"),
                sub_code=text_field(payload, "sub_code"), sub_msg=text_field(payload, "sub_msg"),
                out_trade_no=out_trade_no if isinstance(out_trade_no, str) else None,
                trade_no=trade_no if isinstance(trade_no, str) else None,
            )

        with self._logged(method, out_trade_no if isinstance(out_trade_no, str) else None,
                          trade_no if isinstance(trade_no, str) else None) as call:
            try:
                response = self._exchange(method, content, idempotent=idempotent, call=call,
                                          unknown=None if idempotent else unknown, extra=common_params,
                                          transport=transport)
            except ResponseError as exc:
                if idempotent:
                    raise
                raise unknown("unverifiable_response", exc.reason) from exc
            if not idempotent:
                if not response.verified:
                    raise unknown("unsigned_error", "an unsigned error_response proves nothing", response)
                if response.code == SERVICE_UNAVAILABLE:
                    raise unknown("service_unavailable", "", response)
                if text_field(response.payload, "sub_code") == SYSTEM_ERROR:
                    raise unknown("system_error", "", response)
            _raise_unless_success(method, response)
            return dict(response.payload)

    # -- one gateway call ----------------------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        biz: Mapping[str, Any],
        *,
        idempotent: bool,
        call: Call,
        unknown: Callable[[str, str], OutcomeUnknown] | None = None,
        extra: Mapping[str, str] | None = None,
        transport: Transport | None = None,
    ) -> GatewayResponse:
        """Sign, POST, read and verify; retried on network trouble only when ``idempotent``."""

        def attempt() -> bytes:
            params = self.protocol.signed_params(method, biz, extra=extra)  # a fresh timestamp every attempt
            body = urlencode(params).encode("ascii")
            if transport is not None:
                return transport.request("POST", self._target, body, self._headers)
            return self._post(body)

        raw = self._attempts(method, attempt, idempotent=idempotent, call=call, unknown=unknown)
        response = verify_response(
            raw, method, self.protocol.verifier, expected_cert_sn=getattr(self.config, "alipay_cert_sn", None)
        )
        call.outcome = response.code or "no_code"
        return response

    _headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }

    def _post(self, body: bytes) -> bytes:
        """One POST within ``timeout``: the 200 answer's body, or a :class:`TransportError`."""
        return self._send("POST", self._target, body, self._headers)


# -- request and response fields -------------------------------------------------------------------------


def _raise_unless_success(method: str, response: GatewayResponse) -> None:
    if response.succeeded:
        return
    payload = response.payload
    raise AlipayApiError(method, response.code or "no_code", text_field(payload, "msg"),
                         text_field(payload, "sub_code"), text_field(payload, "sub_msg"), verified=response.verified)


def _json_value(value: Any) -> Any:
    """A biz_content value as Alipay expects it: amounts (Decimal) as their exact string, nested alike."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _check_echo(method: str, payload: Mapping[str, Any], **asked: str | None) -> None:
    """A signed answer naming another trade or request than the one asked about is a replay."""
    for name, value in asked.items():
        got = payload.get(name)
        if value is not None and got not in (None, "") and got != value:
            raise ResponseMismatch("response_mismatch", f"{method} answered about another {name}")
