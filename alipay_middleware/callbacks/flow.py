"""The callback flows (notify, return, confirm, replay), written once, with no I/O of their own.

``notify_flow`` is a generator in the style of httpx's auth flows: it decides everything and *yields*
each blocking or user-supplied step as a :class:`Call` (ledger writes, ``order_amount``, the hook). A
driver performs the call and sends the result back (or throws the exception in). The WSGI front drives
it synchronously, the ASGI front with ``await`` and a thread pool; the order of the steps and every
answer live only here.

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

import functools
import json
import logging
import math
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import AlipayError, GatewayUnavailable, HookFailed, LedgerUnavailable, Rejection
from ..events import CLOSED, PAID, PaymentEvent, ReturnResult
from ..gateway.transport import notify_verify
from ..ledger.base import ALREADY_DONE, BUSY, StoredEvent

if TYPE_CHECKING:
    from ..alipay import Alipay

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
DUPLICATE = Answer(200, "already_done", b"success")  # the same bytes on the wire; replay tells them apart
TOO_LARGE = Answer(413, "body_too_large")
INTERNAL_ERROR = Answer(500, "internal_error")
#: Why a return was not confirmed: every ``return_checks`` slot was taken.
CHECKS_FULL = "return_checks_full"


@dataclass(frozen=True)
class Call:
    """One step for the driver: call ``fn(*args)`` (sync or async) and send back the result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


T = TypeVar("T")
Steps = Generator[Call, Any, T]
Flow = Steps[Answer]


def precheck(method: str, content_length: str | None, max_body: int) -> Answer | None:
    """The checks made before a single body byte is read."""
    if method != "POST":
        return Answer(405, "method_not_allowed", headers=_TEXT + (("Allow", "POST"),))
    if content_length:
        # Only ASCII digits, and few of them: str.isdigit() alone also passes "²" (a latin-1 header byte
        # decodes to it), which int() refuses, and int() refuses more than 4,300 digits. 18 digits are
        # far beyond any body and still a plain machine integer.
        if not (content_length.isascii() and content_length.isdigit()) or len(content_length) > 18:
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
        if protocol.origin_url(fields, on_return=False) is not None and protocol.recipient_problem(fields) is None:
            # A resend of an event already done needs no word from Alipay: the ledger answers it, so
            # replaying a done notification sends no call to Alipay under the merchant's partner id.
            if (yield from _known_done(ledger, event.key)):
                log.info("alipay notify duplicate reason=already_done key=%s", event.key)
                return DUPLICATE
        yield from _origin_checked(alipay, fields, on_return=False)
    except Rejection as rejection:
        # A signed message that Alipay disowns, or an origin check that cannot be made, is worth a look.
        level = logging.WARNING if rejection.reason.startswith("origin") else logging.INFO
        log.log(level, "alipay notify rejected reason=%s status=%d%s", rejection.reason, rejection.status,
                f" detail={rejection.detail}" if rejection.detail else "")
        return Answer(rejection.status, rejection.reason)

    problem = protocol.recipient_problem(fields)
    if problem is not None:
        log.warning("alipay notify rejected reason=%s status=400 app_id=%s seller_id=%s out_trade_no=%s",
                    problem, event.app_id, event.seller_id, event.out_trade_no)
        try:
            yield Call(ledger.record_foreign, (event, raw, charset, problem))
        except LedgerUnavailable as exc:
            return _unavailable("notify", event, exc)
        return Answer(400, problem)
    answer = yield from _process(alipay, event, raw, charset, "notify")
    return answer


class VerifiedIds:
    """Origin checks Alipay confirmed, remembered for the life of their ``notify_id`` (per process).

    Keyed by the message's ``notify_id`` *and* its signature: only a replay of the very message Alipay
    vouched for is answered from memory, never another message carrying the same id. Every entry has the
    same life, so the oldest is the first to expire: each call is O(1) (amortised), thread-safe, and at
    most ``capacity`` entries are kept (the oldest go first; forgetting one only costs a call to Alipay).
    """

    #: A return's ``notify_id`` lives about a minute at Alipay: remembered no longer, so a replay after
    #: that is asked again, and Alipay refuses it as it always did.
    RETURN_LIFE = 60.0
    #: Alipay answers ``true`` for a notification's id until it reads ``success``; a notification answered
    #: ``success`` is done in the ledger, which answers its resends before this memory is asked. An hour
    #: covers the resends of a notification whose hook failed (about 4, 10, 10 and 60 minutes apart).
    NOTIFY_LIFE = 3600.0
    CAPACITY = 4096

    def __init__(self, life: float, capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic) -> None:
        self.life = life
        self.capacity = capacity
        self.clock = clock
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def recall(self, key: tuple[str, str]) -> bool:
        now = self.clock()
        with self._lock:
            self._forget_expired(now)
            return key in self._expiry

    def remember(self, key: tuple[str, str]) -> None:
        now = self.clock()
        with self._lock:
            self._expiry[key] = now + self.life
            self._expiry.move_to_end(key)
            self._forget_expired(now)
            while len(self._expiry) > self.capacity:
                self._expiry.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and next(iter(expiry.values())) <= now:
            expiry.popitem(last=False)


def _known_done(ledger: Any, key: str) -> Steps[bool]:
    """Whether the ledger has ``key`` done; False when it cannot say (the steps after it answer an outage)."""
    try:
        done = yield Call(ledger.is_done, (key,))
    except LedgerUnavailable:
        return False
    return bool(done)


def _origin_checked(alipay: Alipay, fields: Mapping[str, str], *, on_return: bool) -> Steps[bool]:
    """The origin check (if the protocol has one), asked of Alipay at most once per message within its
    id's life; for a return, only in one of ``return_checks`` free slots. False when a return found none
    free: its check was not made and the return is not confirmed. Rejections pass through."""
    if alipay.protocol.origin_url(fields, on_return=on_return) is None:
        return True
    memory = alipay.verified_returns if on_return else alipay.verified_notifications
    key = (fields.get("notify_id", ""), fields.get("sign", ""))
    if memory.recall(key):
        return True
    gate = alipay.return_gate if on_return else None
    if gate is not None and not gate.acquire(blocking=False):
        return False
    try:
        yield from _check_origin(alipay, fields, on_return=on_return)
    finally:
        if gate is not None:
            gate.release()
    memory.remember(key)
    return True


def _check_origin(alipay: Alipay, fields: Mapping[str, str], *, on_return: bool) -> Steps[None]:
    """The protocol's origin check, if it has one: ask Alipay whether it sent this message."""
    protocol = alipay.protocol
    url = protocol.origin_url(fields, on_return=on_return)
    if url is None:
        return
    try:
        answer = yield Call(notify_verify, (url, protocol.origin_timeout, alipay.config.proxy))
    except GatewayUnavailable as exc:
        raise Rejection("origin_unreachable", 503, str(exc)) from None
    protocol.check_origin(answer)


def _process(alipay: Alipay, event: PaymentEvent, raw: bytes, charset: str, source: str) -> Flow:
    """Claim -> order and amount check -> hook -> done: the steps every accepted event goes through."""
    protocol = alipay.protocol
    ledger = alipay.ledger
    owner = alipay.lease_owner()
    try:
        claim = yield Call(ledger.claim, (event, raw, charset, owner, alipay.lease_seconds))
    except LedgerUnavailable as exc:
        return _unavailable(source, event, exc)
    if claim.state == ALREADY_DONE:
        log.info("alipay %s duplicate reason=already_done key=%s", source, event.key)
        return DUPLICATE
    if claim.state == BUSY:
        log.info("alipay %s busy reason=in_progress key=%s", source, event.key)
        retry_after = str(max(1, math.ceil(claim.retry_after)))
        return Answer(503, "in_progress", headers=_TEXT + (("Retry-After", retry_after),))
    event = replace(event, attempt=claim.attempt)

    # From here on we hold the lease: every way out releases it (done, rejected or failed).
    step = "ledger"
    try:
        if alipay.order_amount_fn is not None and event.out_trade_no:
            step = "order_amount"
            expected = yield Call(alipay.order_amount_fn, (event.out_trade_no,))
            problem = protocol.amount_problem(expected, event)
            if problem is not None:
                log.warning("alipay %s rejected reason=%s status=409 out_trade_no=%s expected=%s got=%s",
                            source, problem, event.out_trade_no, expected, event.total_amount)
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
        if hook is not None and hook.transactional:
            answer = yield from _transactional(alipay, hook.fn, event, owner, note, source)
            return answer
        if hook is not None:
            step = "hook"
            yield Call(hook.fn, (event,))
    except LedgerUnavailable as exc:
        yield from _release(ledger, event, owner, "ledger unavailable")
        return _unavailable(source, event, exc)
    except Exception as exc:
        reason = f"{step}_failed"
        log.error("alipay %s failed reason=%s status=500 key=%s attempt=%d error=%s",
                  source, reason, event.key, event.attempt, type(exc).__name__, exc_info=True)
        yield from _release(ledger, event, owner, traceback.format_exc())
        return Answer(500, reason)
    # The hook returned: from here on the event is never released for another run. The done mark is
    # retried until it lands (finish.py); meanwhile this worker keeps the lease and copies get 503.
    if not (yield Call(alipay.finishes.finish, (event.key, note))):
        return Answer(503, "finish_pending", headers=_TEXT + (("Retry-After", _FINISH_RETRY_AFTER),))
    log.info("alipay %s processed kind=%s key=%s attempt=%d", source, event.kind, event.key, event.attempt)
    return SUCCESS


#: What a 503 ``finish_pending`` asks for; Alipay keeps its own schedule (minutes) whatever it is told.
_FINISH_RETRY_AFTER = "60"


def _transactional(alipay: Alipay, hook: Callable[..., Any], event: PaymentEvent, owner: str, note: str | None,
                   source: str) -> Flow:
    """A transactional hook: ``hook(event, tx)`` and the done mark in one ledger transaction (see
    ``Ledger.run_in_transaction``). A failure of either rolls back both, so a retry is always right."""
    ledger = alipay.ledger
    started: list[bool] = []

    def work(tx: Any) -> None:
        started.append(True)
        hook(event, tx)

    try:
        landed = yield Call(ledger.run_in_transaction, (event.key, owner, work, note))
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
        reason = "commit_failed" if started else "ledger_unavailable"
        log.error("alipay %s deferred reason=%s status=503 key=%s error=%s", source, reason, event.key, exc)
        yield from _release(ledger, event, owner, f"{reason}: {exc}")
        return Answer(503, reason)
    if not landed:
        # The lease is no longer ours (it ran out and a copy retook it, or an operator intervened): nothing
        # ran. Whoever holds it now answers for the event.
        if (yield Call(ledger.is_done, (event.key,))):
            return DUPLICATE
        log.warning("alipay %s busy reason=lease_lost key=%s", source, event.key)
        return Answer(503, "lease_lost", headers=_TEXT + (("Retry-After", "1"),))
    log.info("alipay %s processed kind=%s key=%s attempt=%d transactional", source, event.kind, event.key,
             event.attempt)
    return SUCCESS


def replay_flow(alipay: Alipay, stored: StoredEvent) -> Flow:
    """Run an event already in the ledger through the claim -> order check -> hook -> done steps again.

    The operator's ``replay``: a done event answers ``already_done`` without a call, a leased one
    ``in_progress``, and the outcome is recorded as for a notification. The stored fields must still pass
    what the notify checked before recording them: the signature (with this app's Alipay key, so a row
    written into the database by hand cannot run a hook), the recipient, and the dedupe key they give
    must be the stored one. The legacy origin check is not asked again: it passed when the event was
    recorded, and Alipay answers it for a short while only.
    """
    protocol = alipay.protocol
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
    answer = yield from _process(alipay, event, stored.raw_body or b"", stored.charset, "replay")
    return answer


def _release(ledger: Any, event: PaymentEvent, owner: str, error: str) -> Steps[None]:
    try:
        yield Call(ledger.fail, (event.key, owner, error))
    except LedgerUnavailable:
        pass  # the lease runs out by itself and a resend retakes it


def _unavailable(source: str, event: PaymentEvent, exc: Exception) -> Answer:
    log.error("alipay %s deferred reason=ledger_unavailable status=503 key=%s error=%s", source, event.key, exc)
    return Answer(503, "ledger_unavailable")


@dataclass(frozen=True)
class Confirmation:
    """What asking Alipay about one trade found and did (confirmation on return, reconciliation).

    ``paid``: True when Alipay says paid (or the ledger already has the payment), False when it says
    not paid, None when it could not be asked. ``outcome``: ``already_paid`` (known, not asked),
    ``processed`` (the hook ran now), ``already_done``, ``in_progress`` (another worker holds the
    trade), ``not_paid``, ``error`` (Alipay could not be asked or answered an error),
    ``return_checks_full`` (a return's confirmation found every ``return_checks`` slot taken: not
    asked), or the notify path's reason for a refusal or failure (``amount_mismatch``, ``hook_failed``, ...).
    """

    out_trade_no: str
    trade_status: str | None
    paid: bool | None
    outcome: str


def confirm_flow(alipay: Alipay, out_trade_no: str, source: str,
                 gate: threading.Semaphore | None = None) -> Steps[Confirmation]:
    """Query the trade and feed what the verified answer proves (paid, or closed unpaid) through the
    notify's claim-check-hook steps, under the notify's dedupe key: the hook still runs once.

    The ledger is asked first. With ``gate`` (the returns' bound) the query is made only in a free slot,
    never waiting for one; otherwise the outcome is ``return_checks_full`` and Alipay is not asked."""
    protocol = alipay.protocol
    try:
        if (yield Call(alipay.ledger.is_done, (protocol.key(PAID, out_trade_no),))):
            return Confirmation(out_trade_no, None, True, "already_paid")
        if gate is not None and not gate.acquire(blocking=False):
            log.info("alipay %s not confirmed reason=%s out_trade_no=%s", source, CHECKS_FULL, out_trade_no)
            return Confirmation(out_trade_no, None, None, CHECKS_FULL)
        try:
            query = yield Call(functools.partial(alipay.client.query, out_trade_no=out_trade_no), ())
        finally:
            if gate is not None:
                gate.release()
    except AlipayError as exc:
        log.warning("alipay %s error out_trade_no=%s error=%s: %s", source, out_trade_no, type(exc).__name__, exc)
        return Confirmation(out_trade_no, None, None, "error")
    event = protocol.query_event(query)
    if event is None:
        return Confirmation(out_trade_no, query.trade_status, query.paid, "not_paid")
    raw = json.dumps(query.raw, ensure_ascii=False, default=str).encode("utf-8")
    answer = yield from _process(alipay, event, raw, "utf-8", source)
    outcome = "processed" if answer is SUCCESS else answer.reason
    return Confirmation(out_trade_no, query.trade_status, event.kind == PAID, outcome)


def return_flow(alipay: Alipay, method: str, query: bytes) -> Steps[ReturnResult | None]:
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
    protocol = alipay.protocol
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
            if result.out_trade_no and (yield from _known_done(alipay.ledger, protocol.key(PAID, result.out_trade_no))):
                return replace(result, paid=True)
            if not (yield from _origin_checked(alipay, fields, on_return=True)):
                log.info("alipay return not confirmed reason=%s out_trade_no=%s", CHECKS_FULL, result.out_trade_no)
                return replace(result, paid=None, confirmed=False)
    except Rejection as rejection:
        log.info("alipay return not verified reason=%s%s", rejection.reason,
                 f" detail={rejection.detail}" if rejection.detail else "")
        return None
    if event is not None and event.kind == PAID:
        yield from _process(alipay, event, query, charset, "return")
    elif alipay.confirm_returns and result.paid is None and result.out_trade_no:
        confirmation = yield from confirm_flow(alipay, result.out_trade_no, "confirm", alipay.return_gate)
        if confirmation.outcome == CHECKS_FULL:
            result = replace(result, confirmed=False)
        else:
            result = replace(result, paid=confirmation.paid,
                             trade_status=confirmation.trade_status or result.trade_status)
    return result
