"""The notify, return and replay flows, written once, with no I/O of their own.

``notify_flow`` is a generator in the style of httpx's auth flows: it decides everything and *yields*
each blocking or user-supplied step as a :class:`Call` (ledger writes, ``order_amount``, the hook). A
driver performs the call and sends the result back (or throws the exception in). The WSGI front drives
it synchronously, the ASGI front with ``await`` and a thread pool; the order of the steps and every
answer live only here. A flow touches nothing but its port (:class:`~.ports.FlowPort`: the protocol, the
ledger, the hooks, the origin check and the trade query), which ``Alipay`` provides; each step is made with
:func:`~.steps.step`, so that its result carries the called function's type.

Order: parse and verify (cheap rejections, no writes) -> origin check where the protocol has one
(the legacy ``notify_verify`` call; unreachable -> 503; a resend of an event the ledger has done is
answered ``success`` before it, and a message Alipay confirmed is not asked about again within its
id's life) -> recipient check (recorded) -> claim in the ledger (recorded before anything else happens;
done -> ``success``, leased -> 503) -> order and amount check -> hook -> mark done -> ``success``.

``return_flow`` verifies the browser's return the same way and, when the return itself proves a
payment (the legacy service), hands it to the very same claim-check-hook steps: whichever of return
and notify comes first runs ``on_paid``, the other finds it done (or busy) in the ledger. So does
``replay_flow``, the operator's ``replay``, for an event already in the ledger.

A buyer's signed return URL never expires and anyone holding it can replay it, so a return asks the
ledger before Alipay, and its calls to Alipay (origin check, ``confirm_returns`` query) take one of
``Alipay(return_checks=N)`` slots, never waiting for one: when all are taken the page is told "not
confirmed yet" (``ReturnResult.confirmed`` False). Notifications' origin checks are not bounded by it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from ..errors import GatewayUnavailable, LedgerUnavailable, Rejection
from ..events import PAID, ReturnResult
from ..ledger.base import Ledger, StoredEvent
from . import alerts
from .answers import DUPLICATE, Answer
from .confirm import CHECKS_FULL, confirm_flow
from .ports import FlowPort
from .process import process, unavailable
from .steps import Flow, Steps, step

log = logging.getLogger("alipay_middleware")


def notify_flow(port: FlowPort, raw: bytes, content_type: str | None) -> Flow:
    protocol = port.protocol
    ledger = port.ledger
    try:
        fields, charset = protocol.parse(raw, content_type)
        protocol.verify_notify(fields, charset)
        event = protocol.event(fields)
        if protocol.origin_url(fields, on_return=False) is not None and protocol.recipient_problem(fields) is None:
            # A resend of an event already done needs no word from Alipay: the ledger answers it, so
            # replaying a done notification sends no call to Alipay under the merchant's partner id.
            if (yield from _known_done(ledger, event.key)):
                log.info("alipay notify duplicate reason=already_done key=%s", event.key)
                return DUPLICATE
        yield from _origin_checked(port, fields, on_return=False)
    except Rejection as rejection:
        _log_rejection(rejection)
        return Answer(rejection.status, rejection.reason)

    problem = protocol.recipient_problem(fields)
    if problem is not None:
        log.warning("alipay notify rejected reason=%s status=400 app_id=%s seller_id=%s out_trade_no=%s",
                    problem, event.app_id, event.seller_id, event.out_trade_no)
        try:
            yield from step(ledger.record_foreign, event, raw, charset, problem)
        except LedgerUnavailable as exc:
            return unavailable("notify", event, exc)
        return Answer(400, problem)
    answer = yield from process(port, event, raw, charset, "notify")
    return answer


def _log_rejection(rejection: Rejection) -> None:
    """One line per rejection. A signed message that Alipay disowns, or an origin check that cannot be
    made, is worth a look: WARNING. A bad signature or another sign_type usually means a wrong key or
    sign_type when it happens to every notification: WARNING with the likely causes, at most once a
    minute per reason (see :mod:`.alerts`); INFO otherwise."""
    reason = rejection.reason
    detail = f" detail={rejection.detail}" if rejection.detail else ""
    if reason in alerts.LIKELY_CAUSES:
        suppressed = alerts.REJECTIONS.admit(reason)
        if suppressed is not None:
            more = f"; {suppressed} more since the last were logged at INFO" if suppressed else ""
            log.warning("alipay notify rejected reason=%s status=%d%s: %s (at most one such WARNING every %gs%s)",
                        reason, rejection.status, detail, alerts.LIKELY_CAUSES[reason], alerts.REJECTIONS.interval,
                        more)
            return
    level = logging.WARNING if reason.startswith("origin") else logging.INFO
    log.log(level, "alipay notify rejected reason=%s status=%d%s", reason, rejection.status, detail)


def _known_done(ledger: Ledger, key: str) -> Steps[bool]:
    """Whether the ledger has ``key`` done; False when it cannot say (the steps after it answer an outage)."""
    try:
        done = yield from step(ledger.is_done, key)
    except LedgerUnavailable:
        return False
    return bool(done)


def _origin_checked(port: FlowPort, fields: Mapping[str, str], *, on_return: bool) -> Steps[bool]:
    """The origin check (if the protocol has one), asked of Alipay at most once per message within its
    id's life; for a return, only in one of ``return_checks`` free slots. False when a return found none
    free: its check was not made and the return is not confirmed. Rejections pass through."""
    if port.protocol.origin_url(fields, on_return=on_return) is None:
        return True
    memory = port.verified_returns if on_return else port.verified_notifications
    key = (fields.get("notify_id", ""), fields.get("sign", ""))
    if memory.recall(key):
        return True
    gate = port.return_gate if on_return else None
    if gate is not None and not gate.acquire(blocking=False):
        return False
    try:
        yield from _check_origin(port, fields, on_return=on_return)
    finally:
        if gate is not None:
            gate.release()
    memory.remember(key)
    return True


def _check_origin(port: FlowPort, fields: Mapping[str, str], *, on_return: bool) -> Steps[None]:
    """The protocol's origin check, if it has one: ask Alipay whether it sent this message."""
    protocol = port.protocol
    url = protocol.origin_url(fields, on_return=on_return)
    if url is None:
        return
    try:
        answer = yield from step(port.ask_origin, url, protocol.origin_timeout)
    except GatewayUnavailable as exc:
        raise Rejection("origin_unreachable", 503, str(exc)) from None
    protocol.check_origin(answer)


def replay_flow(port: FlowPort, stored: StoredEvent) -> Flow:
    """Run an event already in the ledger through the claim -> order check -> hook -> done steps again.

    The operator's ``replay``: a done event answers ``already_done`` without a call, a leased one
    ``in_progress``, and the outcome is recorded as for a notification. The stored fields must still pass
    what the notify checked before recording them: the signature (with this app's Alipay key, so a row
    written into the database by hand cannot run a hook), the recipient, and the dedupe key they give
    must be the stored one. The legacy origin check is not asked again: it passed when the event was
    recorded, and Alipay answers it for a short while only.
    """
    protocol = port.protocol
    try:
        protocol.verify_notify(stored.fields, stored.charset)
        problem = protocol.recipient_problem(stored.fields)
        if problem is not None:
            raise Rejection(problem)
        event = protocol.event(stored.fields)
        if event.key != stored.key:
            raise Rejection("key_mismatch", 400, f"the fields give the key {event.key!r}")
    except Rejection as rejection:
        log.warning("alipay replay refused reason=%s key=%s%s", rejection.reason, stored.key,
                    f" detail={rejection.detail}" if rejection.detail else "")
        return Answer(rejection.status, rejection.reason)
    answer = yield from process(port, event, stored.raw_body or b"", stored.charset, "replay")
    return answer


def return_flow(port: FlowPort, method: str, query: bytes) -> Steps[ReturnResult | None]:
    """Verify a browser return; None when it does not verify, is not for us, or is not a GET (Alipay
    sends the browser back with GET; anything else is not Alipay's return).

    A return that proves a payment by itself (legacy: origin-checked, ``TRADE_SUCCESS``/``FINISHED``)
    goes through the notify's claim-check-hook steps before the shop's page sees it. With
    ``Alipay(confirm_returns=True)`` an Open Platform return asks Alipay (``confirm_flow``) instead. Their outcome
    does not change what the page gets: a hook that fails or is busy elsewhere is retried by the
    notify, which Alipay keeps sending until it gets ``success``.

    Before asking Alipay anything, the ledger: a legacy return of a trade whose payment is done there
    gets ``paid=True`` with no origin check. A return whose call to Alipay finds no free
    ``return_checks`` slot gets ``confirmed=False`` and ``paid=None`` at once, and runs no hook.
    """
    if method not in ("GET", "HEAD"):
        return None
    protocol = port.protocol
    try:
        fields, charset = protocol.parse(query, None)
        protocol.verify_return(fields, charset)
        problem = protocol.recipient_problem(fields)
        if problem is not None:
            raise Rejection(problem)
        result: ReturnResult = protocol.return_result(fields)
        event = protocol.return_event(fields)
        if protocol.origin_url(fields, on_return=True) is not None:
            # The return URL never expires: a reload or a stranger's replay of a trade already paid is
            # answered from the ledger, and costs neither a thread waiting on Alipay nor a call to it.
            if result.out_trade_no and (yield from _known_done(port.ledger, protocol.key(PAID, result.out_trade_no))):
                return replace(result, paid=True)
            if not (yield from _origin_checked(port, fields, on_return=True)):
                log.info("alipay return not confirmed reason=%s out_trade_no=%s", CHECKS_FULL, result.out_trade_no)
                return replace(result, paid=None, confirmed=False)
    except Rejection as rejection:
        log.info("alipay return not verified reason=%s%s", rejection.reason,
                 f" detail={rejection.detail}" if rejection.detail else "")
        return None
    if event is not None and event.kind == PAID:
        yield from process(port, event, query, charset, "return")
    elif port.confirm_returns and result.paid is None and result.out_trade_no:
        confirmation = yield from confirm_flow(port, result.out_trade_no, "confirm", port.return_gate)
        if confirmation.outcome == CHECKS_FULL:
            result = replace(result, confirmed=False)
        else:
            result = replace(result, paid=confirmation.paid,
                             trade_status=confirmation.trade_status or result.trade_status)
    return result
