"""The notify flow, written once, with no I/O of its own.

``notify_flow`` is a generator in the style of httpx's auth flows: it decides everything and *yields*
each blocking or user-supplied step as a :class:`Call` (ledger writes, ``order_amount``, the hook). A
driver performs the call and sends the result back (or throws the exception in). The WSGI front drives
it synchronously, the ASGI front with ``await`` and a thread pool; the order of the steps and every
answer live only here.

Order: parse and verify (cheap rejections, no writes) -> recipient check (recorded) -> claim in the
ledger (recorded before anything else happens; done -> ``success``, leased -> 503) -> order and
amount check -> hook -> mark done -> ``success``.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import LedgerUnavailable, Rejection
from .events import CLOSED, PaymentEvent, ReturnResult
from .ledger.base import ALREADY_DONE, BUSY

if TYPE_CHECKING:
    from .core import Alipay

log = logging.getLogger("alipay_middleware")

_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


@dataclass(frozen=True)
class Answer:
    """What the notify path sends back. Only a 200 carries the 7 bytes ``success``."""

    status: int
    reason: str
    body: bytes = b"fail"
    headers: tuple[tuple[str, str], ...] = _TEXT


SUCCESS = Answer(200, "ok", b"success")
TOO_LARGE = Answer(413, "body_too_large")
INTERNAL_ERROR = Answer(500, "internal_error")


@dataclass(frozen=True)
class Call:
    """One step for the driver: call ``fn(*args)`` (sync or async) and send back the result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


Flow = Generator[Call, Any, Answer]


def precheck(method: str, content_length: str | None, max_body: int) -> Answer | None:
    """The checks made before a single body byte is read."""
    if method != "POST":
        return Answer(405, "method_not_allowed", headers=_TEXT + (("Allow", "POST"),))
    if content_length:
        if not content_length.isdigit():
            return Answer(400, "bad_content_length")
        if int(content_length) > max_body:
            return TOO_LARGE
    return None


def notify_flow(alipay: Alipay, raw: bytes, content_type: str | None) -> Flow:
    protocol = alipay.protocol
    ledger = alipay.ledger
    try:
        fields, charset = protocol.parse(raw, content_type)
        protocol.verify_notify(fields, charset)
        event = protocol.event(fields)
    except Rejection as rejection:
        log.info("alipay notify rejected reason=%s status=%d", rejection.reason, rejection.status)
        return Answer(rejection.status, rejection.reason)

    problem = protocol.recipient_problem(fields)
    if problem is not None:
        log.warning("alipay notify rejected reason=%s status=400 app_id=%s seller_id=%s out_trade_no=%s",
                    problem, event.app_id, event.seller_id, event.out_trade_no)
        try:
            yield Call(ledger.record_foreign, (event, raw, charset, problem))
        except LedgerUnavailable as exc:
            return _unavailable(event, exc)
        return Answer(400, problem)

    owner = alipay.lease_owner()
    try:
        claim = yield Call(ledger.claim, (event, raw, charset, owner, alipay.lease_seconds))
    except LedgerUnavailable as exc:
        return _unavailable(event, exc)
    if claim.state == ALREADY_DONE:
        log.info("alipay notify duplicate reason=already_done key=%s", event.key)
        return SUCCESS
    if claim.state == BUSY:
        log.info("alipay notify busy reason=in_progress key=%s", event.key)
        retry_after = str(max(1, math.ceil(claim.retry_after)))
        return Answer(503, "in_progress", headers=_TEXT + (("Retry-After", retry_after),))
    event = replace(event, attempt=claim.attempt)

    # From here on we hold the lease: every way out releases it (done, rejected or failed).
    step = "ledger"
    try:
        if alipay.order_amount_fn is not None and event.out_trade_no:
            step = "order_amount"
            expected = yield Call(alipay.order_amount_fn, (event.out_trade_no,))
            problem = _amount_problem(expected, event)
            if problem is not None:
                log.warning("alipay notify rejected reason=%s status=409 out_trade_no=%s expected=%s got=%s",
                            problem, event.out_trade_no, expected, event.total_amount)
                yield Call(ledger.reject, (event.key, owner, problem))
                return Answer(409, problem)
        note = None
        hook = alipay.hooks.get(event.kind)
        if event.kind == CLOSED:
            step = "ledger"
            if (yield Call(ledger.is_done, (protocol.paid_key(event),))):
                # A trade closes unpaid or fully refunded (the latter is a refund event). A "closed"
                # after "paid" is stale: state never goes backwards.
                hook, note = None, "not closed: the trade is already paid"
        if hook is not None:
            step = "hook"
            yield Call(hook, (event,))
        step = "ledger"
        yield Call(ledger.finish, (event.key, note))
    except LedgerUnavailable as exc:
        yield from _release(ledger, event, owner, "ledger unavailable")
        return _unavailable(event, exc)
    except Exception as exc:
        reason = f"{step}_failed"
        log.error("alipay notify failed reason=%s status=500 key=%s attempt=%d error=%s",
                  reason, event.key, event.attempt, type(exc).__name__, exc_info=True)
        yield from _release(ledger, event, owner, traceback.format_exc())
        return Answer(500, reason)
    log.info("alipay notify processed kind=%s key=%s attempt=%d", event.kind, event.key, event.attempt)
    return SUCCESS


def _amount_problem(expected: object, event: PaymentEvent) -> str | None:
    if expected is None:
        return "unknown_order"
    if isinstance(expected, (float, bool)) or not isinstance(expected, (Decimal, int)):
        raise TypeError(f"order_amount must return a Decimal or None, not {type(expected).__name__}")
    if event.total_amount is None:
        return "amount_missing"
    if Decimal(expected) != event.total_amount:
        return "amount_mismatch"
    return None


def _release(ledger: Any, event: PaymentEvent, owner: str, error: str) -> Generator[Call, Any, None]:
    try:
        yield Call(ledger.fail, (event.key, owner, error))
    except LedgerUnavailable:
        pass  # the lease runs out by itself and a resend retakes it


def _unavailable(event: PaymentEvent, exc: Exception) -> Answer:
    log.error("alipay notify deferred reason=ledger_unavailable status=503 key=%s error=%s", event.key, exc)
    return Answer(503, "ledger_unavailable")


def read_return(alipay: Alipay, method: str, query: bytes) -> ReturnResult | None:
    """Verify a browser return (pure: no I/O). None when it does not verify, is not for us, or is not
    a GET (Alipay sends the browser back with GET; anything else is not Alipay's return)."""
    if method not in ("GET", "HEAD"):
        return None
    protocol = alipay.protocol
    try:
        fields, charset = protocol.parse(query, None)
        protocol.verify_return(fields, charset)
        problem = protocol.recipient_problem(fields)
        if problem is not None:
            raise Rejection(problem)
        result: ReturnResult = protocol.return_result(fields)
        return result
    except Rejection as rejection:
        log.info("alipay return not verified reason=%s", rejection.reason)
        return None
