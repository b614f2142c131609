"""The few error types the package raises.

A :class:`Rejection` is what the callback core produces for anything it will not accept: it carries a
stable machine-readable ``reason`` (it appears in log lines as ``reason=...``) and the HTTP status the
fronts answer with. The fronts never decide semantics themselves; they only turn a rejection into bytes.
"""

from __future__ import annotations

from typing import Literal

#: Why a callback is refused: a :class:`Rejection`'s ``reason``, or a recipient's or an order's problem. The one
#: spelling of each code (the callback core adds its own to these in ``callbacks/answers.py``): a misspelled or
#: renamed code is a type error wherever it is raised, returned or compared.
RejectionReason = Literal[
    # the body (400)
    "malformed_body", "undecodable", "unknown_charset", "duplicate_field",
    # the signature, and the fields it covers (400)
    "missing_sign", "sign_type_mismatch", "bad_signature", "bad_amount",
    # the legacy origin check, notify_verify (400, or 503 while Alipay cannot be asked or answers no verdict)
    "missing_notify_id", "bad_notify_id", "origin_refused", "origin_unreachable", "origin_unclear",
    # addressed to another app or seller (400, recorded)
    "app_id_mismatch", "seller_id_mismatch", "seller_email_mismatch",
    # not our order, or not its amount (409, recorded)
    "unknown_order", "amount_missing", "amount_mismatch", "amount_mismatch_coupon",
    # the operator's replay only: the stored fields give another dedupe key
    "key_mismatch",
]


class AlipayError(Exception):
    """Base class of every error raised by alipay_middleware."""


class Rejection(AlipayError):
    """A callback that is not accepted. Never escapes the callback paths as a traceback."""

    def __init__(self, reason: RejectionReason, status: int = 400, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: RejectionReason = reason
        self.status = status
        self.detail = detail


class UntrustedHost(AlipayError, ValueError):
    """The pay helper was asked to derive a callback URL (``notify_url`` or ``return_url``) from a request
    whose Host header it does not trust: missing, malformed, or neither loopback nor in
    ``Alipay(allowed_hosts=...)``. Nothing was signed.

    ``reason`` is stable: ``missing_host``, ``malformed_host`` or ``host_not_allowed``; ``settings`` names
    the URLs that would have been derived (``("notify_url", "return_url")`` or one of them). The message
    says how to fix it and quotes at most a short, escaped piece of the Host. Also a :class:`ValueError`.
    """

    def __init__(self, reason: str, settings: tuple[str, ...], host: str | None) -> None:
        names = " and ".join(settings)
        if host is None:
            why = "the request has no Host header"
        else:
            shown = ascii(host[:32]) + ("..." if len(host) > 32 else "")
            why = (f"its Host {shown} is not a well-formed host[:port]" if reason == "malformed_host"
                   else f"its Host {shown} is neither loopback nor in allowed_hosts")
        super().__init__(
            f"cannot build {names} from this request: {why}. Set {names} in the config "
            f"(OpenApiConfig/LegacyConfig), or list the shop's host names in Alipay(allowed_hosts=[...])")
        self.reason = reason
        self.settings = settings


class LedgerUnavailable(AlipayError):
    """The ledger could not be read or written (locked too long, disk error, server down).

    The notify path answers 503 so that Alipay resends later; nothing is acknowledged.
    """


class TransactionControlRefused(AlipayError):
    """A transactional hook tried to end the ledger's transaction (``commit()``, ``rollback()``, ``close()``,
    ``COMMIT``/``ROLLBACK``/``BEGIN`` in SQL). Its writes commit together with the event's done mark, so that
    is the ledger's job; raise an exception to roll them back. Raised inside the hook, it fails the hook like
    any exception: the transaction is rolled back and the event is retried.
    """


class HookFailed(AlipayError):
    """A transactional hook raised and its transaction was rolled back; the hook's exception is ``__cause__``.

    Internal to the callback flow (it records the failure and answers 500 ``hook_failed``); a plain hook's
    exception is handled without it.
    """


class GatewayUnavailable(AlipayError):
    """Alipay's gateway could not be asked (network error, timeout, an HTTP error status).

    On the notify path this answers 503 so that Alipay resends; nothing is acknowledged.
    """


class ResponseError(AlipayError):
    """A synchronous gateway response that cannot be read or trusted (see :mod:`.response`).

    ``reason`` is stable and machine-readable (``malformed_response``, ``duplicate_key``,
    ``missing_response``, ``ambiguous_response``, ``missing_sign``, ``bad_signature``,
    ``cert_sn_mismatch``, ``bad_encoding``); ``detail`` is for people and never quotes the body.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ResponseMismatch(ResponseError):
    """A correctly signed gateway response that answers another question: another trade or another refund
    request than the one asked about (``reason`` is ``response_mismatch``). Alipay's responses carry no
    nonce, so this is what a replayed old response looks like; it is never returned as data.
    """


class AlipayApiError(AlipayError):
    """Alipay answered, and the answer is not a success: a business failure (``code`` ``40004`` with a
    ``sub_code`` such as ``ACQ.TRADE_STATUS_ERROR``), a gateway error (``40002``, ``20001``, ...), or
    ``20000`` for a call that does not move money.

    ``verified`` is False for an unsigned ``error_response``: anyone on the path could have written it, so
    it only ever means "this call did not succeed", never evidence about the trade.
    """

    def __init__(self, method: str, code: str, msg: str = "", sub_code: str = "", sub_msg: str = "",
                 *, verified: bool = True) -> None:
        text = f"{method} failed: code={code} msg={msg[:100]}"
        if sub_code:
            text += f" sub_code={sub_code[:100]} sub_msg={sub_msg[:200]}"
        if not verified:
            text += " (unsigned error_response)"
        super().__init__(text)
        self.method = method
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.verified = verified


class OutcomeUnknown(AlipayError):
    """A call that moves money (a refund, a non-idempotent ``call()``) got no trustworthy answer: it may or
    may not have happened.

    Never treat it as a failure and never retry with a *new* request number. Ask first
    (``refund_query`` with the same ``out_request_no``), then, if the refund is not there, call again
    with the same ``out_request_no``, which Alipay deduplicates. Deliberately not an
    :class:`AlipayApiError`, so a handler written for "Alipay said no" does not swallow "we don't know".

    ``reason`` is stable: ``service_unavailable`` (code 20000), ``system_error`` (``ACQ.SYSTEM_ERROR``),
    ``unsigned_error`` (an unsigned ``error_response``), ``timeout``, ``connection_lost``, ``http_error``
    (a non-200 status after the request was sent), ``unverifiable_response`` (the answer failed
    verification; the :class:`ResponseError` is ``__cause__``), ``unconfirmed`` (``fund_change=N`` and the
    confirming ``refund_query`` could not be asked). ``code``/``msg``/``sub_code``/``sub_msg`` are set when
    the gateway answered.
    """

    def __init__(self, method: str, reason: str, detail: str = "", *, code: str = "", msg: str = "",
                 sub_code: str = "", sub_msg: str = "", out_trade_no: str | None = None,
                 trade_no: str | None = None, out_request_no: str | None = None) -> None:
        text = f"{method} outcome unknown ({reason})"
        if detail:
            text += f": {detail}"
        if code:
            text += f" code={code} sub_code={sub_code[:100]}"
        text += "; query (refund_query) before retrying, and retry only with the same out_request_no"
        super().__init__(text)
        self.method = method
        self.reason = reason
        self.detail = detail
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.out_trade_no = out_trade_no
        self.trade_no = trade_no
        self.out_request_no = out_request_no


class UnsupportedCall(AlipayError, NotImplementedError):
    """A call this client cannot make for this kind of merchant, by design (e.g. a refund through the
    legacy service, whose refunds need the merchant's password page). Nothing was sent. Also a
    :class:`NotImplementedError`, so generic handlers for "not available here" catch it.
    """
