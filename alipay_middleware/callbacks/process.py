"""The steps every accepted event goes through: claim in the ledger -> order and amount check -> hook -> done."""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import HookFailed, LedgerUnavailable
from ..events import CLOSED, PaymentEvent
from ..ledger.base import ALREADY_DONE, BUSY, Ledger
from .answers import _TEXT, DUPLICATE, SUCCESS, Answer, Reason
from .ports import FlowPort
from .steps import Flow, Steps, step

log = logging.getLogger("alipay_middleware")


def process(port: FlowPort, event: PaymentEvent, raw: bytes, charset: str, source: str) -> Flow:
    """Claim -> order and amount check -> hook -> done: the steps every accepted event goes through."""
    protocol = port.protocol
    ledger = port.ledger
    owner = port.lease_owner()
    try:
        claim = yield from step(ledger.claim, event, raw, charset, owner, port.lease_seconds)
    except LedgerUnavailable as exc:
        return unavailable(source, event, exc)
    if claim.state == ALREADY_DONE:
        log.info("alipay %s duplicate reason=already_done key=%s", source, event.key)
        return DUPLICATE
    if claim.state == BUSY:
        log.info("alipay %s busy reason=in_progress key=%s", source, event.key)
        retry_after = str(max(1, math.ceil(claim.retry_after)))
        return Answer(503, "in_progress", headers=_TEXT + (("Retry-After", retry_after),))
    event = replace(event, attempt=claim.attempt)

    # From here on we hold the lease: every way out releases it (done, rejected or failed).
    failure: Reason = "ledger_failed"
    order_amount = port.order_amount_fn
    try:
        if order_amount is not None and event.out_trade_no:
            failure = "order_amount_failed"
            expected = yield from step(order_amount, event.out_trade_no)
            problem = protocol.amount_problem(expected, event)
            if problem is not None:
                log.warning("alipay %s rejected reason=%s status=409 out_trade_no=%s expected=%s got=%s",
                            source, problem, event.out_trade_no, expected, event.total_amount)
                yield from step(ledger.reject, event.key, owner, problem)
                return Answer(409, problem)
        note = None
        hook = port.hooks.get(event.kind)
        if event.kind == CLOSED:
            failure = "ledger_failed"
            if (yield from step(ledger.is_done, protocol.paid_key(event))):
                # A trade closes unpaid or fully refunded (the latter is a refund event). A "closed"
                # after "paid" is stale: state never goes backwards.
                hook, note = None, "not closed: the trade is already paid"
        if hook is not None and hook.transactional:
            answer = yield from _transactional(ledger, hook.fn, event, owner, note, source)
            return answer
        if hook is not None:
            failure = "hook_failed"
            yield from step(hook.fn, event)
    except LedgerUnavailable as exc:
        yield from _release(ledger, event, owner, "ledger unavailable")
        return unavailable(source, event, exc)
    except Exception as exc:
        log.error("alipay %s failed reason=%s status=500 key=%s attempt=%d error=%s",
                  source, failure, event.key, event.attempt, type(exc).__name__, exc_info=True)
        yield from _release(ledger, event, owner, traceback.format_exc())
        return Answer(500, failure)
    # The hook returned: from here on the event is never released for another run. The done mark is
    # retried until it lands (ledger/pending.py); meanwhile this worker keeps the lease and copies get 503.
    if not (yield from step(port.finishes.finish, event.key, note)):
        return Answer(503, "finish_pending", headers=_TEXT + (("Retry-After", _FINISH_RETRY_AFTER),))
    log.info("alipay %s processed kind=%s key=%s attempt=%d", source, event.kind, event.key, event.attempt)
    return SUCCESS


#: What a 503 ``finish_pending`` asks for; Alipay keeps its own schedule (minutes) whatever it is told.
_FINISH_RETRY_AFTER = "60"


def _transactional(ledger: Ledger, hook: Callable[..., object], event: PaymentEvent, owner: str, note: str | None,
                   source: str) -> Flow:
    """A transactional hook: ``hook(event, tx)`` and the done mark in one ledger transaction (see
    ``Ledger.run_in_transaction``). A failure of either rolls back both, so a retry is always right."""
    started: list[bool] = []

    def work(tx: Any) -> None:
        started.append(True)
        hook(event, tx)

    try:
        landed = yield from step(ledger.run_in_transaction, event.key, owner, work, note)
    except HookFailed as exc:
        cause = exc.__cause__ or exc
        log.error("alipay %s failed reason=hook_failed status=500 key=%s attempt=%d error=%s (rolled back)",
                  source, event.key, event.attempt, type(cause).__name__, exc_info=cause)
        yield from _release(ledger, event, owner, "".join(traceback.format_exception(cause)))
        return Answer(500, "hook_failed")
    except LedgerUnavailable as exc:
        # Before the hook: the ledger is down. After it: the commit failed, so nothing of the hook's effect
        # landed and a retry is right (a release only touches a row still received under this owner, so a
        # commit that did land, its acknowledgement lost, is left done).
        reason: Reason = "commit_failed" if started else "ledger_unavailable"
        log.error("alipay %s deferred reason=%s status=503 key=%s error=%s", source, reason, event.key, exc)
        yield from _release(ledger, event, owner, f"{reason}: {exc}")
        return Answer(503, reason)
    if not landed:
        # The lease is no longer ours (it ran out and a copy retook it, or an operator intervened): nothing
        # ran. Whoever holds it now answers for the event.
        if (yield from step(ledger.is_done, event.key)):
            return DUPLICATE
        log.warning("alipay %s busy reason=lease_lost key=%s", source, event.key)
        return Answer(503, "lease_lost", headers=_TEXT + (("Retry-After", "1"),))
    log.info("alipay %s processed kind=%s key=%s attempt=%d transactional", source, event.kind, event.key,
             event.attempt)
    return SUCCESS


def _release(ledger: Ledger, event: PaymentEvent, owner: str, error: str) -> Steps[None]:
    try:
        yield from step(ledger.fail, event.key, owner, error)
    except LedgerUnavailable:
        pass  # the lease runs out by itself and a resend retakes it


def unavailable(source: str, event: PaymentEvent, exc: Exception) -> Answer:
    log.error("alipay %s deferred reason=ledger_unavailable status=503 key=%s error=%s", source, event.key, exc)
    return Answer(503, "ledger_unavailable")
