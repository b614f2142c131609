"""Talking back to Alipay: ``alipay.trade.query``, ``.refund``, ``.close`` and ``.fastpay.refund.query``.

    client = alipay.client                      # or AlipayClient(config, timeout=10.0, retries=2)
    trade = client.query(out_trade_no="A1")     # TradeQuery; trade.exists is False until the buyer acts
    result = client.refund(out_trade_no="A1", refund_amount=Decimal("9.90"), out_request_no="A1-r1")

    result = await alipay.aclient.refund(...)   # the same calls as coroutines, run in a thread

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

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from ..alipay import Alipay
from ..errors import AlipayApiError, AlipayError, GatewayUnavailable, OutcomeUnknown, ResponseError, ResponseMismatch
from ..protocols.legacy import LegacyConfig
from ..protocols.openapi import PAID_STATUSES, OpenApiConfig, OpenApiProtocol
from ..wire.form import format_amount, parse_amount, parse_cst
from ..wire.response import GatewayResponse, verify_response
from .transport import USER_AGENT, Transport, TransportError

if TYPE_CHECKING:
    from .legacy_client import LegacyClient

__all__ = ["AlipayClient", "AsyncAlipayClient", "CloseResult", "RefundQuery", "RefundResult", "TradeQuery"]

log = logging.getLogger("alipay_middleware.client")

QUERY = "alipay.trade.query"
REFUND = "alipay.trade.refund"
CLOSE = "alipay.trade.close"
REFUND_QUERY = "alipay.trade.fastpay.refund.query"

SERVICE_UNAVAILABLE = "20000"
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
# Alipay's refund documentation: "系统错误, 请使用相同的参数再次调用" (system error, call again with the
# same parameters): the refund may be under way, so for a refund it is an unknown outcome, not a "no".
SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"
REFUND_SUCCESS = "REFUND_SUCCESS"

_ID = re.compile(r"[\x21-\x7e]{1,64}")


# -- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TradeQuery:
    """``alipay.trade.query``'s answer.

    ``exists`` is False when Alipay answered ``ACQ.TRADE_NOT_EXIST``: a page-pay trade is created at
    Alipay only when the buyer acts on the pay page, so this is a normal answer for an order nobody has
    paid yet (or an unknown one), not an error. Then ``trade_status`` and the amounts are None and
    ``out_trade_no``/``trade_no`` are the ones asked about. ``raw`` is the verified payload.
    """

    exists: bool
    out_trade_no: str
    trade_no: str
    trade_status: str | None
    total_amount: Decimal | None
    buyer_pay_amount: Decimal | None
    receipt_amount: Decimal | None
    send_pay_date: datetime | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def paid(self) -> bool:
        """``TRADE_SUCCESS`` or ``TRADE_FINISHED``."""
        return self.trade_status in PAID_STATUSES


@dataclass(frozen=True)
class RefundResult:
    """``alipay.trade.refund``'s answer (code 10000).

    ``fund_change`` is Alipay's ``fund_change == "Y"``: this call moved money. ``confirmed`` says the
    refund ``out_request_no`` has happened: True with ``fund_change``; otherwise (a retry of a refund
    that already happened answers ``N``) the result of the confirming ``refund_query`` (kept in
    ``confirmation``) being ``REFUND_SUCCESS``. ``confirmed=False``: Alipay accepted the request but does
    not show the refund as done; ask ``refund_query`` again later, or repeat the refund with the *same*
    ``out_request_no``, never a new one. ``refund_amount`` is what this call asked for; ``refund_fee``
    is the trade's total refunded so far, as Alipay reports it.
    """

    out_trade_no: str
    trade_no: str
    out_request_no: str
    refund_amount: Decimal
    refund_fee: Decimal | None
    fund_change: bool
    confirmed: bool
    confirmation: RefundQuery | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RefundQuery:
    """``alipay.trade.fastpay.refund.query``'s answer. Alipay answers code 10000 without a refund for a
    request number it does not know (or not yet): then ``refund_status`` and the amounts are None."""

    out_trade_no: str
    trade_no: str
    out_request_no: str
    refund_status: str | None
    refund_amount: Decimal | None
    total_amount: Decimal | None
    gmt_refund_pay: datetime | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def refunded(self) -> bool:
        """``refund_status == "REFUND_SUCCESS"``: the refund has happened."""
        return self.refund_status == REFUND_SUCCESS


@dataclass(frozen=True)
class CloseResult:
    """``alipay.trade.close`` succeeded: the unpaid trade is closed and can no longer be paid."""

    out_trade_no: str
    trade_no: str
    raw: dict[str, Any] = field(repr=False)


# -- what every gateway client shares ---------------------------------------------------------------------


class _Call:
    """What the log line of one public call says; filled in as the call goes."""

    def __init__(self) -> None:
        self.outcome = "error"
        self.attempts = 0


def _config_and_protocol(alipay_or_config: object) -> tuple[object, object]:
    """The configuration and its protocol, from an ``Alipay`` or a bare config (checked by the caller)."""
    if isinstance(alipay_or_config, Alipay):
        return alipay_or_config.config, alipay_or_config.protocol
    factory = getattr(alipay_or_config, "protocol", None)
    return alipay_or_config, factory() if callable(factory) else None


class _GatewayClient:
    """Settings, the transport (one HTTP exchange within ``timeout``, through the config's ``proxy``), the
    retry loop and the log line, shared by :class:`AlipayClient` and the legacy service's
    :class:`~alipay_middleware.gateway.legacy_client.LegacyClient`."""

    timeout: float
    retries: int
    backoff: float
    max_response: int

    def _setup(self, gateway: str, timeout: float, retries: int, backoff: float, max_response: int,
               proxy: str | None) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ValueError(f"timeout must be a number of seconds in (0, 600], got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValueError(f"retries must be an int between 0 and 10, got {retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= 60 \
                or not math.isfinite(backoff):
            raise ValueError(f"backoff must be a number of seconds between 0 and 60, got {backoff!r}")
        if isinstance(max_response, bool) or not isinstance(max_response, int) \
                or not 1024 <= max_response <= 16 * 2**20:
            raise ValueError(f"max_response must be an int between 1024 and 16 MiB, got {max_response!r}")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_response = max_response
        self._transport = Transport(gateway, timeout=self.timeout, max_response=max_response, proxy=proxy)
        self._host = self._transport.host

    @property
    def _ident(self) -> str:
        """The merchant identity for reprs (app id or partner id)."""
        raise NotImplementedError  # pragma: no cover

    @contextmanager
    def _logged(self, method: str, out_trade_no: str | None, trade_no: str | None) -> Iterator[_Call]:
        call = _Call()
        try:
            yield call
        except AlipayApiError as exc:
            call.outcome = f"{exc.code}/{exc.sub_code}" if exc.sub_code else exc.code
            if not exc.verified:
                call.outcome += "/unsigned"
            raise
        except OutcomeUnknown as exc:
            call.outcome = f"unknown/{exc.reason}" + (f"/{exc.code}" if exc.code else "")
            raise
        except GatewayUnavailable:
            call.outcome = "unavailable"
            raise
        except ResponseError as exc:
            call.outcome = exc.reason
            raise
        finally:
            who = f"out_trade_no={out_trade_no}" if out_trade_no is not None else f"trade_no={trade_no}"
            log.info("alipay call method=%s %s outcome=%s attempts=%d", method, who, call.outcome, call.attempts)

    def _attempts(
        self,
        method: str,
        attempt: Callable[[], bytes],
        *,
        idempotent: bool,
        call: _Call,
        unknown: Callable[[str, str], OutcomeUnknown] | None = None,
    ) -> bytes:
        """``attempt()`` (build, sign and send one request; a fresh one each time), retried on network
        trouble only when ``idempotent``: the raw answer, or :class:`GatewayUnavailable`."""
        attempts = 1 + self.retries if idempotent else 1
        sent_any = False
        for number in range(1, attempts + 1):
            call.attempts = number
            try:
                return attempt()
            except TransportError as exc:
                if exc.sent and unknown is not None:
                    raise unknown(exc.reason, exc.detail) from None
                sent_any = sent_any or exc.sent
                if not exc.retryable or number == attempts:
                    tries = f" after {number} attempts" if number > 1 else ""
                    sent = "" if sent_any else " (nothing was sent)"
                    raise GatewayUnavailable(f"{method}: {exc.reason}{tries}{sent}: {exc.detail}") from None
                log.warning("alipay call retrying method=%s attempt=%d reason=%s", method, number, exc.reason)
                if self.backoff:
                    time.sleep(self.backoff * 2 ** (number - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, verb: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """One request within ``timeout``: the 200 answer's body, or a :class:`TransportError`."""
        return self._transport.request(verb, target, body, headers)


# -- the client ------------------------------------------------------------------------------------------


class AlipayClient(_GatewayClient):
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
        alipay_or_config: Alipay | OpenApiConfig,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response: int = 1024 * 1024,
    ) -> None:
        config, protocol = _config_and_protocol(alipay_or_config)
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
        return f"<AlipayClient {self.config.app_id} {self._host}>"

    @property
    def _ident(self) -> str:
        return self.config.app_id

    # -- the four calls ----------------------------------------------------------------------------------

    def query(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> TradeQuery:
        """``alipay.trade.query``: the trade's status and amounts; ``exists=False`` for
        ``ACQ.TRADE_NOT_EXIST``. Retried on network trouble. Raises :class:`AlipayApiError` for any other
        failure (including ``20000``), :class:`GatewayUnavailable`, :class:`ResponseError`."""
        biz = _trade_biz(out_trade_no, trade_no)
        with self._logged(QUERY, out_trade_no, trade_no) as call:
            response = self._exchange(QUERY, biz, idempotent=True, call=call)
            payload = response.payload
            if response.verified and not response.is_error and _text(payload, "sub_code") == TRADE_NOT_EXIST:
                call.outcome = f"{response.code}/{TRADE_NOT_EXIST}"
                return TradeQuery(False, out_trade_no or "", trade_no or "", None, None, None, None, None, payload)
            _raise_unless_success(QUERY, response)
            _check_echo(QUERY, payload, out_trade_no=out_trade_no, trade_no=trade_no)
            status = payload.get("trade_status")
            return TradeQuery(
                exists=True,
                out_trade_no=_text(payload, "out_trade_no") or out_trade_no or "",
                trade_no=_text(payload, "trade_no") or trade_no or "",
                trade_status=status if isinstance(status, str) and status else None,
                total_amount=_amount(QUERY, payload, "total_amount"),
                buyer_pay_amount=_amount(QUERY, payload, "buyer_pay_amount"),
                receipt_amount=_amount(QUERY, payload, "receipt_amount"),
                send_pay_date=parse_cst(_text(payload, "send_pay_date")),
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
        biz = _trade_biz(out_trade_no, trade_no)
        amount = format_amount(refund_amount, "refund_amount")
        request_no = _identifier(out_request_no, "out_request_no")
        biz["refund_amount"] = amount
        biz["out_request_no"] = request_no
        if refund_reason is not None:
            if not isinstance(refund_reason, str) or len(refund_reason) > 256:
                raise ValueError("refund_reason must be a str of at most 256 characters")
            biz["refund_reason"] = refund_reason

        def unknown(reason: str, detail: str = "", response: GatewayResponse | None = None) -> OutcomeUnknown:
            payload = response.payload if response is not None else {}
            return OutcomeUnknown(
                REFUND, reason, detail, code=_text(payload, "code"), msg=_text(payload, "msg"),
                sub_code=_text(payload, "sub_code"), sub_msg=_text(payload, "sub_msg"),
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
            if _text(payload, "sub_code") == SYSTEM_ERROR:
                raise unknown("system_error", "", response)
            _raise_unless_success(REFUND, response)
            try:
                _check_echo(REFUND, payload, out_trade_no=out_trade_no, trade_no=trade_no)
                refund_fee = _amount(REFUND, payload, "refund_fee")
            except ResponseError as exc:
                raise unknown("unverifiable_response", exc.reason) from exc
            fund_change = _text(payload, "fund_change") == "Y"
            call.outcome = f"{response.code}/fund_change={'Y' if fund_change else 'N'}"
        out_trade_no = _text(payload, "out_trade_no") or out_trade_no
        trade_no = _text(payload, "trade_no") or trade_no
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
        biz = _trade_biz(out_trade_no, trade_no)
        with self._logged(CLOSE, out_trade_no, trade_no) as call:
            response = self._exchange(CLOSE, biz, idempotent=True, call=call)
            _raise_unless_success(CLOSE, response)
            payload = response.payload
            _check_echo(CLOSE, payload, out_trade_no=out_trade_no, trade_no=trade_no)
            return CloseResult(
                out_trade_no=_text(payload, "out_trade_no") or out_trade_no or "",
                trade_no=_text(payload, "trade_no") or trade_no or "",
                raw=payload,
            )

    def refund_query(
        self, *, out_trade_no: str | None = None, trade_no: str | None = None, out_request_no: str
    ) -> RefundQuery:
        """``alipay.trade.fastpay.refund.query``: has the refund ``out_request_no`` happened? (``refunded``).
        Retried on network trouble; failures as for :meth:`query`."""
        biz = _trade_biz(out_trade_no, trade_no)
        request_no = _identifier(out_request_no, "out_request_no")
        biz["out_request_no"] = request_no
        with self._logged(REFUND_QUERY, out_trade_no, trade_no) as call:
            response = self._exchange(REFUND_QUERY, biz, idempotent=True, call=call)
            _raise_unless_success(REFUND_QUERY, response)
            payload = response.payload
            _check_echo(REFUND_QUERY, payload, out_trade_no=out_trade_no, trade_no=trade_no,
                        out_request_no=request_no)
            status = payload.get("refund_status")
            result = RefundQuery(
                out_trade_no=_text(payload, "out_trade_no") or out_trade_no or "",
                trade_no=_text(payload, "trade_no") or trade_no or "",
                out_request_no=request_no,
                refund_status=status if isinstance(status, str) and status else None,
                refund_amount=_amount(REFUND_QUERY, payload, "refund_amount"),
                total_amount=_amount(REFUND_QUERY, payload, "total_amount"),
                gmt_refund_pay=parse_cst(_text(payload, "gmt_refund_pay")),
                raw=payload,
            )
            call.outcome = f"{response.code}/{result.refund_status or 'no_refund'}"
            return result

    # -- one gateway call ----------------------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        biz: Mapping[str, Any],
        *,
        idempotent: bool,
        call: _Call,
        unknown: Callable[[str, str], OutcomeUnknown] | None = None,
    ) -> GatewayResponse:
        """Sign, POST, read and verify; retried on network trouble only when ``idempotent``."""

        def attempt() -> bytes:
            params = self.protocol.signed_params(method, biz)  # a fresh timestamp for every attempt
            return self._post(urlencode(params).encode("ascii"))

        raw = self._attempts(method, attempt, idempotent=idempotent, call=call, unknown=unknown)
        response = verify_response(
            raw, method, self.protocol.verifier, expected_cert_sn=getattr(self.config, "alipay_cert_sn", None)
        )
        call.outcome = response.code or "no_code"
        return response

    def _post(self, body: bytes) -> bytes:
        """One POST within ``timeout``: the 200 answer's body, or a :class:`TransportError`."""
        return self._send("POST", self._target, body, {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        })


# -- request and response fields -------------------------------------------------------------------------


def _identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{name} must be 1-64 printable ASCII characters without spaces, got {value!r:.80}")
    return value


def _trade_biz(out_trade_no: str | None, trade_no: str | None) -> dict[str, Any]:
    if out_trade_no is None and trade_no is None:
        raise ValueError("give out_trade_no (your order number) or trade_no (Alipay's), or both")
    biz: dict[str, Any] = {}
    if out_trade_no is not None:
        biz["out_trade_no"] = _identifier(out_trade_no, "out_trade_no")
    if trade_no is not None:
        biz["trade_no"] = _identifier(trade_no, "trade_no")
    return biz


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    return value if isinstance(value, str) else ""


def _amount(method: str, payload: Mapping[str, Any], name: str) -> Decimal | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_amount(value if isinstance(value, str) else str(value))
    except ValueError:
        raise ResponseError("malformed_response", f"{method}: {name} is not an amount") from None


def _raise_unless_success(method: str, response: GatewayResponse) -> None:
    if response.succeeded:
        return
    payload = response.payload
    raise AlipayApiError(method, response.code or "no_code", _text(payload, "msg"), _text(payload, "sub_code"),
                         _text(payload, "sub_msg"), verified=response.verified)


def _check_echo(method: str, payload: Mapping[str, Any], **asked: str | None) -> None:
    """A signed answer naming another trade or request than the one asked about is a replay."""
    for name, value in asked.items():
        got = payload.get(name)
        if value is not None and got not in (None, "") and got != value:
            raise ResponseMismatch("response_mismatch", f"{method} answered about another {name}")


# -- async -----------------------------------------------------------------------------------------------

T = TypeVar("T")


class AsyncAlipayClient:
    """The same four calls as coroutines. Each runs the synchronous client in a thread, never on the event
    loop: in the ``Alipay`` instance's pool when built from one (``alipay.aclient``), else in ``executor``,
    else via :func:`asyncio.to_thread`. The synchronous client (``sync``) is an :class:`AlipayClient`, or a
    :class:`~alipay_middleware.gateway.legacy_client.LegacyClient` for a ``LegacyConfig`` (only ``query`` works there).

    Cancelling the awaiting task does not stop a request already sent: a cancelled ``refund`` has an
    unknown outcome (ask ``refund_query``).
    """

    def __init__(
        self,
        alipay_or_config: Alipay | OpenApiConfig | LegacyConfig,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response: int = 1024 * 1024,
        executor: Executor | None = None,
    ) -> None:
        self.sync: AlipayClient | LegacyClient
        if isinstance(alipay_or_config, LegacyConfig) or (
                isinstance(alipay_or_config, Alipay) and isinstance(alipay_or_config.config, LegacyConfig)):
            from .legacy_client import LegacyClient

            self.sync = LegacyClient(alipay_or_config, timeout=timeout, retries=retries, backoff=backoff,
                                     max_response=max_response)
        else:
            self.sync = AlipayClient(alipay_or_config, timeout=timeout, retries=retries, backoff=backoff,
                                     max_response=max_response)
        self._alipay = alipay_or_config if isinstance(alipay_or_config, Alipay) else None
        self._executor = executor

    def __repr__(self) -> str:
        return f"<AsyncAlipayClient {self.sync._ident} {self.sync._host}>"

    async def _run(self, fn: Callable[[], T]) -> T:
        # Looked up per call: Alipay.close() drops its pool and the next use makes a new one.
        executor = self._executor if self._executor is not None else (
            self._alipay.executor if self._alipay is not None else None)
        if executor is None:
            return await asyncio.to_thread(fn)
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def query(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> TradeQuery:
        """:meth:`AlipayClient.query`, in a thread."""
        return await self._run(functools.partial(self.sync.query, out_trade_no=out_trade_no, trade_no=trade_no))

    async def refund(
        self,
        *,
        out_trade_no: str | None = None,
        trade_no: str | None = None,
        refund_amount: Decimal | str,
        out_request_no: str,
        refund_reason: str | None = None,
    ) -> RefundResult:
        """:meth:`AlipayClient.refund`, in a thread."""
        return await self._run(functools.partial(
            self.sync.refund, out_trade_no=out_trade_no, trade_no=trade_no, refund_amount=refund_amount,
            out_request_no=out_request_no, refund_reason=refund_reason,
        ))

    async def close(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> CloseResult:
        """:meth:`AlipayClient.close`, in a thread."""
        return await self._run(functools.partial(self.sync.close, out_trade_no=out_trade_no, trade_no=trade_no))

    async def refund_query(
        self, *, out_trade_no: str | None = None, trade_no: str | None = None, out_request_no: str
    ) -> RefundQuery:
        """:meth:`AlipayClient.refund_query`, in a thread."""
        return await self._run(functools.partial(
            self.sync.refund_query, out_trade_no=out_trade_no, trade_no=trade_no, out_request_no=out_request_no,
        ))
