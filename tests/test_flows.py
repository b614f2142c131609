"""The callback flows stepped by hand: no ledger, socket or thread.

A flow yields each blocking or user-supplied call; here a script answers them in order (a value, an
exception thrown in, or an :class:`Act` that runs with the call's arguments), and the test checks the
calls made and what the flow returned. The port is a stand-in with the attributes ``FlowPort`` names;
the protocols are small stand-ins too (one without and one with a legacy-style origin check), so these
tests pin the flows' order of steps and their answers, not the protocols' rules (tested elsewhere).
``test_every_yield_point_is_stepped`` checks that the table passes through every step of every flow.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from alipay_middleware.callbacks import confirm, flow, process
from alipay_middleware.callbacks.answers import Answer
from alipay_middleware.callbacks.confirm import Confirmation, confirm_flow
from alipay_middleware.callbacks.flow import notify_flow, replay_flow, return_flow
from alipay_middleware.callbacks.memory import VerifiedIds
from alipay_middleware.callbacks.steps import Call
from alipay_middleware.errors import (
    AlipayApiError,
    GatewayUnavailable,
    HookFailed,
    LedgerUnavailable,
    Rejection,
    RejectionReason,
)
from alipay_middleware.events import CLOSED, OTHER, PAID, Kind, PaymentEvent, ReturnResult
from alipay_middleware.ledger.base import ALREADY_DONE, BUSY, CLAIMED, Claim, StoredEvent
from alipay_middleware.protocols.base import Protocol

APP = "app1"
OWNER = "host:1:lease"
PAID_KEY = f"paid:{APP}:T1"
CLOSED_KEY = f"closed:{APP}:T1"
ORIGIN_URL = "https://gateway.example/?service=notify_verify&notify_id=N1"


# -- the stand-ins -----------------------------------------------------------------------------------------

class StandInProtocol(Protocol):
    """Signed when ``sign`` starts with ``good``; for us when ``app_id`` is ours; the trade status gives the kind."""

    account = APP
    app_id = APP
    helper_class = object

    def verify_notify(self, fields: Mapping[str, str], charset: str) -> None:
        if not fields.get("sign", "").startswith("good"):
            raise Rejection("bad_signature")

    def verify_return(self, fields: Mapping[str, str], charset: str) -> None:
        self.verify_notify(fields, charset)

    def recipient_problem(self, fields: Mapping[str, str]) -> RejectionReason | None:
        return None if fields.get("app_id") == APP else "app_id_mismatch"

    def event(self, fields: Mapping[str, str]) -> PaymentEvent:
        status = fields.get("trade_status", "")
        kinds: dict[str, Kind] = {"TRADE_SUCCESS": PAID, "TRADE_CLOSED": CLOSED}
        kind = kinds.get(status, OTHER)
        out_trade_no = fields.get("out_trade_no", "")
        return PaymentEvent(
            kind=kind, key=self.key(kind, out_trade_no), trade_key=f"{APP}:{out_trade_no}",
            out_trade_no=out_trade_no, trade_no="2024T1", trade_status=status,
            total_amount=Decimal(fields["total_amount"]) if "total_amount" in fields else None, refund_fee=None,
            out_biz_no="", notify_id=fields.get("notify_id", ""), gmt_payment=None, gmt_refund=None,
            app_id=fields.get("app_id", ""), seller_id="", raw=dict(fields))

    def return_result(self, fields: Mapping[str, str]) -> ReturnResult:
        return ReturnResult(out_trade_no=fields.get("out_trade_no", ""), trade_no="2024T1", total_amount=None,
                            app_id=APP, seller_id="", timestamp=None, raw=dict(fields))


class LegacyStyleProtocol(StandInProtocol):
    """Adds an origin check (``notify_id`` asked of the gateway) and returns that prove a payment."""

    def origin_url(self, fields: Mapping[str, str], *, on_return: bool) -> str | None:
        if not fields.get("notify_id"):
            raise Rejection("missing_notify_id")
        return f"https://gateway.example/?service=notify_verify&notify_id={fields['notify_id']}"

    def check_origin(self, answer: bytes) -> None:
        if answer in (b"false", b"invalid"):
            raise Rejection("origin_refused", 400, f"notify_verify answered {answer.decode()}")
        if answer != b"true":
            raise Rejection("origin_unclear", 503)

    def return_result(self, fields: Mapping[str, str]) -> ReturnResult:
        paid = fields.get("trade_status") == "TRADE_SUCCESS"
        return ReturnResult(out_trade_no=fields.get("out_trade_no", ""), trade_no="2024T1", total_amount=None,
                            app_id=APP, seller_id="", timestamp=None, raw=dict(fields),
                            trade_status=fields.get("trade_status", ""), paid=paid)

    def return_event(self, fields: Mapping[str, str]) -> PaymentEvent | None:
        event = self.event(fields)
        return event if event.kind == PAID else None


class Marks:
    """An object whose every method is a named marker: the script answers calls to it, nothing runs."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def marker(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{marker.__name__} is answered by the script, never called")

        marker.__name__ = f"{self.prefix}.{name}"
        return marker


def named(name: str) -> Any:
    """A user function (hook, order_amount) as a marker."""
    return getattr(Marks("user"), name)


@dataclass
class Port:
    """A stand-in for ``Alipay``: exactly the attributes ``FlowPort`` names."""

    protocol: Protocol = field(default_factory=StandInProtocol)
    ledger: Any = field(default_factory=lambda: Marks("ledger"))
    hooks: dict[str, Any] = field(default_factory=lambda: {PAID: SimpleNamespace(fn=named("on_paid"),
                                                                                   transactional=False)})
    order_amount_fn: Callable[[str], object] | None = field(default_factory=lambda: named("order_amount"))
    lease_seconds: float = 30.0
    finishes: Any = field(default_factory=lambda: Marks("finishes"))
    verified_notifications: VerifiedIds = field(default_factory=lambda: VerifiedIds(VerifiedIds.NOTIFY_LIFE))
    verified_returns: VerifiedIds = field(default_factory=lambda: VerifiedIds(VerifiedIds.RETURN_LIFE))
    return_gate: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(1))
    confirm_returns: bool = False
    client: Any = field(default_factory=lambda: Marks("client"))

    def lease_owner(self) -> str:
        return OWNER

    def ask_origin(self, url: str, timeout: float) -> bytes:
        raise AssertionError("answered by the script, never called")


def legacy_port(**kwargs: Any) -> Port:
    return Port(protocol=LegacyStyleProtocol(), **kwargs)


def transactional_port() -> Port:
    """A transactional ``on_paid``: not a step of its own, it runs inside ``run_in_transaction``'s work."""
    return Port(hooks={PAID: SimpleNamespace(fn=lambda event, tx: None, transactional=True)})


def full_gate_port(**kwargs: Any) -> Port:
    port = Port(**kwargs)
    port.return_gate.acquire()  # the only slot is taken
    return port


# -- the stepper -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Act:
    """An answer computed from the call's arguments (it may raise, to be thrown in)."""

    fn: Callable[..., Any]


Script = list[tuple[str, Any]]


def describe(call: Call) -> tuple[str, tuple[Any, ...]]:
    fn, args = call.fn, call.args
    if isinstance(fn, functools.partial):
        return fn.func.__name__, (*fn.args, *args, *sorted(fn.keywords.items()))
    return fn.__name__, args


def yield_point(gen: Any) -> tuple[str, int]:
    """The file and line of the ``yield from step(...)`` the flow is suspended at."""
    while gen.gi_yieldfrom is not None and gen.gi_yieldfrom.gi_code.co_name != "step":
        gen = gen.gi_yieldfrom
    return Path(gen.gi_code.co_filename).name, gen.gi_frame.f_lineno


@dataclass
class Run:
    result: Any
    calls: list[tuple[str, tuple[Any, ...]]]
    points: set[tuple[str, int]]

    def args(self, name: str) -> tuple[Any, ...]:
        [args] = [args for called, args in self.calls if called == name]
        return args


def step_through(steps: Any, script: Script) -> Run:
    """Drive ``steps`` by hand: each call it yields must be the script's next ``(name, answer)``."""
    pending = list(script)
    run = Run(None, [], set())
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            assert not pending, f"the flow returned {stop.value!r} before {[name for name, _ in pending]}"
            run.result = stop.value
            return run
        name, args = describe(call)
        run.calls.append((name, args))
        run.points.add(yield_point(steps))
        assert pending, f"unscripted call {name}{args}"
        expected, answer = pending.pop(0)
        assert name == expected, f"called {name}, the script expected {expected}"
        value, error = None, None
        if isinstance(answer, Act):
            try:
                value = answer.fn(*args)
            except Exception as exc:
                error = exc
        elif isinstance(answer, BaseException):
            error = answer
        else:
            value = answer


def summary(result: Any) -> Any:
    """What a flow returned, in a form the table can spell."""
    if isinstance(result, Answer):
        headers = dict(result.headers)
        return result.status, result.reason, headers.get("Retry-After")
    if isinstance(result, ReturnResult):
        return "return", result.paid, result.confirmed
    if isinstance(result, Confirmation):
        return "confirmation", result.outcome, result.paid
    return result


# -- inputs ------------------------------------------------------------------------------------------------

def body(**changes: str | None) -> bytes:
    fields: dict[str, str | None] = {"sign": "good", "app_id": APP, "out_trade_no": "T1",
                                     "trade_status": "TRADE_SUCCESS", "total_amount": "9.90", "notify_id": "N1"}
    fields.update(changes)
    return urlencode({k: v for k, v in fields.items() if v is not None}).encode()


def notify(raw: bytes | None = None) -> Callable[[Port], Any]:
    return lambda port: notify_flow(port, body() if raw is None else raw, "application/x-www-form-urlencoded")


def returning(query: bytes | None = None, method: str = "GET") -> Callable[[Port], Any]:
    return lambda port: return_flow(port, method, body() if query is None else query)


def confirming(gate: bool = False) -> Callable[[Port], Any]:
    return lambda port: confirm_flow(port, "T1", "reconcile", port.return_gate if gate else None)


def stored(**changes: str | None) -> StoredEvent:
    raw = body(**changes)
    fields = dict(pair.split("=") for pair in raw.decode().split("&"))
    now = datetime.now(timezone.utc)
    return StoredEvent(key=PAID_KEY, trade_key=f"{APP}:T1", kind=PAID, status="failed", out_trade_no="T1",
                       trade_no="", trade_status="TRADE_SUCCESS", notify_id="N1", charset="utf-8", raw_body=raw,
                       fields=fields, reason=None, error="boom", attempts=1, received_at=now, updated_at=now)


def replaying(**changes: str | None) -> Callable[[Port], Any]:
    return lambda port: replay_flow(port, stored(**changes))


def paid_query(**changes: Any) -> SimpleNamespace:
    answer = dict(exists=True, out_trade_no="T1", trade_no="2024T1", trade_status="TRADE_SUCCESS",
                  total_amount=Decimal("9.90"), send_pay_date=datetime(2024, 5, 1, tzinfo=timezone.utc),
                  raw={"out_trade_no": "T1", "total_amount": "9.90"}, paid=True)
    answer.update(changes)
    return SimpleNamespace(**answer)


def raise_(exc: BaseException) -> Act:
    def act(*args: Any) -> Any:
        raise exc

    return Act(act)


def commit_fails(key: str, owner: str, work: Callable[[Any], None], note: str | None) -> bool:
    work("tx")
    raise LedgerUnavailable("the COMMIT failed")


def hook_fails(key: str, owner: str, work: Callable[[Any], None], note: str | None) -> bool:
    try:
        raise RuntimeError("the hook's own error")
    except RuntimeError as exc:
        raise HookFailed("rolled back") from exc


# -- the scripts ---------------------------------------------------------------------------------------------

CLAIM = ("ledger.claim", Claim(CLAIMED, attempt=1))
AMOUNT_OK = ("user.order_amount", Decimal("9.90"))
HOOK_OK = ("user.on_paid", None)
FINISHED = ("finishes.finish", True)
RELEASED = ("ledger.fail", None)
PROCESSED = [CLAIM, AMOUNT_OK, HOOK_OK, FINISHED]
NOT_DONE = ("ledger.is_done", False)
ORIGIN_TRUE = ("ask_origin", b"true")

OK = (200, "ok", None)
DUPLICATE = (200, "already_done", None)
UNAVAILABLE = (503, "ledger_unavailable", None)

CASES: list[tuple[str, Callable[[], Port], Callable[[Port], Any], Script, Any]] = [
    # -- notify: the claim's three states, and what follows a claim
    ("notify-claimed-processed", Port, notify(), PROCESSED, OK),
    ("notify-claim-done", Port, notify(), [("ledger.claim", Claim(ALREADY_DONE))], DUPLICATE),
    ("notify-claim-busy", Port, notify(), [("ledger.claim", Claim(BUSY, retry_after=2.2))],
     (503, "in_progress", "3")),
    ("notify-claim-ledger-unavailable", Port, notify(), [("ledger.claim", LedgerUnavailable("locked"))], UNAVAILABLE),
    ("notify-unknown-order", Port, notify(), [CLAIM, ("user.order_amount", None), ("ledger.reject", None)],
     (409, "unknown_order", None)),
    ("notify-amount-mismatch", Port, notify(), [CLAIM, ("user.order_amount", Decimal("1.00")), ("ledger.reject", None)],
     (409, "amount_mismatch", None)),
    ("notify-reject-ledger-unavailable", Port, notify(),
     [CLAIM, ("user.order_amount", None), ("ledger.reject", LedgerUnavailable("down")), RELEASED], UNAVAILABLE),
    ("notify-order-amount-raises", Port, notify(), [CLAIM, ("user.order_amount", LookupError("db")), RELEASED],
     (500, "order_amount_failed", None)),
    ("notify-order-amount-float", Port, notify(), [CLAIM, ("user.order_amount", 9.9), RELEASED],
     (500, "order_amount_failed", None)),
    ("notify-hook-raises", Port, notify(), [CLAIM, AMOUNT_OK, ("user.on_paid", ValueError("bug")), RELEASED],
     (500, "hook_failed", None)),
    ("notify-hook-raises-release-fails", Port, notify(),
     [CLAIM, AMOUNT_OK, ("user.on_paid", ValueError("bug")), ("ledger.fail", LedgerUnavailable("down"))],
     (500, "hook_failed", None)),
    ("notify-finish-pending", Port, notify(), [CLAIM, AMOUNT_OK, HOOK_OK, ("finishes.finish", False)],
     (503, "finish_pending", "60")),
    ("notify-no-order-amount", lambda: Port(order_amount_fn=None), notify(), [CLAIM, HOOK_OK, FINISHED], OK),
    ("notify-no-hook", lambda: Port(hooks={}), notify(), [CLAIM, AMOUNT_OK, FINISHED], OK),
    ("notify-other-kind", Port, notify(body(trade_status="WAIT_BUYER_PAY")), [CLAIM, AMOUNT_OK, FINISHED], OK),
    ("notify-closed-unpaid", lambda: Port(hooks={CLOSED: SimpleNamespace(fn=named("on_closed"), transactional=False)}),
     notify(body(trade_status="TRADE_CLOSED")), [CLAIM, AMOUNT_OK, NOT_DONE, ("user.on_closed", None), FINISHED], OK),
    ("notify-closed-after-paid", lambda: Port(hooks={CLOSED: SimpleNamespace(fn=named("on_closed"),
                                                                             transactional=False)}),
     notify(body(trade_status="TRADE_CLOSED")), [CLAIM, AMOUNT_OK, ("ledger.is_done", True), FINISHED], OK),
    ("notify-closed-ledger-unavailable", Port, notify(body(trade_status="TRADE_CLOSED")),
     [CLAIM, AMOUNT_OK, ("ledger.is_done", LedgerUnavailable("down")), RELEASED], UNAVAILABLE),
    ("notify-closed-ledger-raises", Port, notify(body(trade_status="TRADE_CLOSED")),
     [CLAIM, AMOUNT_OK, ("ledger.is_done", OSError("disk")), RELEASED], (500, "ledger_failed", None)),
    # -- notify: a transactional hook
    ("notify-transactional-landed", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", Act(lambda key, owner, work, note: work("tx") or True))], OK),
    ("notify-transactional-lease-lost", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", False), NOT_DONE], (503, "lease_lost", "1")),
    ("notify-transactional-lease-lost-done", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", False), ("ledger.is_done", True)], DUPLICATE),
    ("notify-transactional-hook-failed", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", Act(hook_fails)), RELEASED], (500, "hook_failed", None)),
    ("notify-transactional-commit-failed", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", Act(commit_fails)), RELEASED], (503, "commit_failed", None)),
    ("notify-transactional-ledger-unavailable", transactional_port, notify(),
     [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", LedgerUnavailable("down")), RELEASED], UNAVAILABLE),
    # -- notify: refused before the ledger
    ("notify-bad-signature", Port, notify(body(sign="forged")), [], (400, "bad_signature", None)),
    ("notify-foreign-recipient", Port, notify(body(app_id="someone-else")), [("ledger.record_foreign", None)],
     (400, "app_id_mismatch", None)),
    ("notify-foreign-recipient-ledger-unavailable", Port, notify(body(app_id="someone-else")),
     [("ledger.record_foreign", LedgerUnavailable("down"))], UNAVAILABLE),
    # -- notify: a legacy-style origin check
    ("legacy-origin-true", legacy_port, notify(), [NOT_DONE, ORIGIN_TRUE, *PROCESSED], OK),
    ("legacy-done-before-origin", legacy_port, notify(), [("ledger.is_done", True)], DUPLICATE),
    ("legacy-ledger-silent-before-origin", legacy_port, notify(),
     [("ledger.is_done", LedgerUnavailable("down")), ORIGIN_TRUE, ("ledger.claim", LedgerUnavailable("down"))],
     UNAVAILABLE),
    ("legacy-origin-refused", legacy_port, notify(), [NOT_DONE, ("ask_origin", b"false")],
     (400, "origin_refused", None)),
    ("legacy-origin-unclear", legacy_port, notify(), [NOT_DONE, ("ask_origin", b"<html>true</html>")],
     (503, "origin_unclear", None)),
    ("legacy-origin-unreachable", legacy_port, notify(), [NOT_DONE, ("ask_origin", GatewayUnavailable("timeout"))],
     (503, "origin_unreachable", None)),
    ("legacy-missing-notify-id", legacy_port, notify(body(notify_id=None)), [], (400, "missing_notify_id", None)),
    ("legacy-foreign-recipient", legacy_port, notify(body(app_id="someone-else")),
     [ORIGIN_TRUE, ("ledger.record_foreign", None)], (400, "app_id_mismatch", None)),
    # -- return
    ("return-post", Port, returning(method="POST"), [], None),
    ("return-bad-signature", Port, returning(body(sign="forged")), [], None),
    ("return-foreign", Port, returning(body(app_id="someone-else")), [], None),
    ("return-open-platform", Port, returning(), [], ("return", None, True)),
    ("return-legacy-ledger-first", legacy_port, returning(), [("ledger.is_done", True)], ("return", True, True)),
    ("return-legacy-origin-then-process", legacy_port, returning(), [NOT_DONE, ORIGIN_TRUE, *PROCESSED],
     ("return", True, True)),
    ("return-legacy-busy", legacy_port, returning(), [NOT_DONE, ORIGIN_TRUE, ("ledger.claim", Claim(BUSY, 0, 5.0))],
     ("return", True, True)),
    ("return-legacy-origin-refused", legacy_port, returning(), [NOT_DONE, ("ask_origin", b"false")], None),
    ("return-legacy-checks-full", lambda: full_gate_port(protocol=LegacyStyleProtocol()), returning(), [NOT_DONE],
     ("return", None, False)),
    ("return-confirmed-paid", lambda: Port(confirm_returns=True), returning(),
     [NOT_DONE, ("client.query", paid_query()), *PROCESSED], ("return", True, True)),
    ("return-confirmed-not-paid", lambda: Port(confirm_returns=True), returning(),
     [NOT_DONE, ("client.query", paid_query(trade_status="WAIT_BUYER_PAY", paid=False))], ("return", False, True)),
    ("return-confirm-checks-full", lambda: full_gate_port(confirm_returns=True), returning(), [NOT_DONE],
     ("return", None, False)),
    # -- confirm (reconcile, and returns with confirm_returns)
    ("confirm-already-paid", Port, confirming(), [("ledger.is_done", True)], ("confirmation", "already_paid", True)),
    ("confirm-not-paid", Port, confirming(), [NOT_DONE, ("client.query", paid_query(trade_status="WAIT_BUYER_PAY",
                                                                                     paid=False))],
     ("confirmation", "not_paid", False)),
    ("confirm-unknown-trade", Port, confirming(), [NOT_DONE, ("client.query", paid_query(exists=False, paid=False,
                                                                                         trade_status=None))],
     ("confirmation", "not_paid", False)),
    ("confirm-query-error", Port, confirming(), [NOT_DONE, ("client.query", AlipayApiError("alipay.trade.query",
                                                                                           "40004"))],
     ("confirmation", "error", None)),
    ("confirm-gateway-unavailable", Port, confirming(), [NOT_DONE, ("client.query", GatewayUnavailable("down"))],
     ("confirmation", "error", None)),
    ("confirm-ledger-unavailable", Port, confirming(), [("ledger.is_done", LedgerUnavailable("down"))],
     ("confirmation", "error", None)),
    ("confirm-processed", Port, confirming(), [NOT_DONE, ("client.query", paid_query()), *PROCESSED],
     ("confirmation", "processed", True)),
    ("confirm-busy-trade", Port, confirming(),
     [NOT_DONE, ("client.query", paid_query()), ("ledger.claim", Claim(BUSY, retry_after=1.0))],
     ("confirmation", "in_progress", True)),
    ("confirm-closed-unpaid", Port, confirming(),
     [NOT_DONE, ("client.query", paid_query(trade_status="TRADE_CLOSED", paid=False, send_pay_date=None)),
      CLAIM, AMOUNT_OK, NOT_DONE, FINISHED], ("confirmation", "processed", False)),
    ("confirm-checks-full", full_gate_port, confirming(gate=True), [NOT_DONE],
     ("confirmation", "return_checks_full", None)),
    # -- replay (the operator's)
    ("replay-claimed", Port, replaying(), PROCESSED, OK),
    ("replay-done", Port, replaying(), [("ledger.claim", Claim(ALREADY_DONE))], DUPLICATE),
    ("replay-busy", Port, replaying(), [("ledger.claim", Claim(BUSY, retry_after=0.2))], (503, "in_progress", "1")),
    ("replay-legacy-asks-no-origin", legacy_port, replaying(), PROCESSED, OK),
    ("replay-key-mismatch", Port, replaying(out_trade_no="T2"), [], (400, "key_mismatch", None)),
    ("replay-foreign", Port, replaying(app_id="someone-else"), [], (400, "app_id_mismatch", None)),
    ("replay-bad-signature", Port, replaying(sign="forged"), [], (400, "bad_signature", None)),
]


def run_case(make_port: Callable[[], Port], make_flow: Callable[[Port], Any], script: Script) -> Run:
    return step_through(make_flow(make_port()), script)


@pytest.mark.parametrize(("make_port", "make_flow", "script", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_flow(make_port: Callable[[], Port], make_flow: Callable[[Port], Any], script: Script, expected: Any) -> None:
    assert summary(run_case(make_port, make_flow, script).result) == expected


# -- what the steps are called with ----------------------------------------------------------------------

def test_the_claim_records_the_raw_body_under_a_fresh_lease_and_the_hook_sees_the_attempt() -> None:
    raw = body()
    run = step_through(notify_flow(Port(), raw, None), [("ledger.claim", Claim(CLAIMED, attempt=3)), AMOUNT_OK,
                                                        HOOK_OK, FINISHED])
    event, claimed_raw, charset, owner, lease = run.args("ledger.claim")
    assert (event.key, claimed_raw, charset, owner, lease) == (PAID_KEY, raw, "utf-8", OWNER, 30.0)
    assert run.args("user.order_amount") == ("T1",)
    (hooked,) = run.args("user.on_paid")
    assert (hooked.key, hooked.attempt) == (PAID_KEY, 3)
    assert run.args("finishes.finish") == (PAID_KEY, None)


def test_a_refusal_is_recorded_with_its_reason_under_the_lease() -> None:
    run = run_case(Port, notify(), [CLAIM, ("user.order_amount", Decimal("1.00")), ("ledger.reject", None)])
    assert run.args("ledger.reject") == (PAID_KEY, OWNER, "amount_mismatch")


def test_a_failed_hook_is_released_with_its_traceback() -> None:
    run = run_case(Port, notify(), [CLAIM, AMOUNT_OK, ("user.on_paid", ValueError("bug in the shop")), RELEASED])
    key, owner, error = run.args("ledger.fail")
    assert (key, owner) == (PAID_KEY, OWNER) and "ValueError: bug in the shop" in error and "Traceback" in error


def test_a_transactional_hook_runs_inside_the_ledgers_transaction() -> None:
    ran: list[tuple[str, Any]] = []

    def landed(key: str, owner: str, work: Callable[[Any], None], note: str | None) -> bool:
        ran.append(("before", None))
        work("the-tx")
        return True

    port = transactional_port()
    port.hooks[PAID] = SimpleNamespace(fn=lambda event, tx: ran.append((event.key, tx)), transactional=True)
    run = step_through(notify_flow(port, body(), None), [CLAIM, AMOUNT_OK, ("ledger.run_in_transaction", Act(landed))])
    assert summary(run.result) == OK and ran == [("before", None), (PAID_KEY, "the-tx")]
    key, owner, _, note = run.args("ledger.run_in_transaction")
    assert (key, owner, note) == (PAID_KEY, OWNER, None)


def test_a_stale_close_is_marked_done_with_a_note_and_calls_no_hook() -> None:
    port = Port(hooks={CLOSED: SimpleNamespace(fn=named("on_closed"), transactional=False)})
    run = step_through(notify_flow(port, body(trade_status="TRADE_CLOSED"), None),
                       [CLAIM, AMOUNT_OK, ("ledger.is_done", True), FINISHED])
    assert run.args("ledger.is_done") == (PAID_KEY,)
    assert run.args("finishes.finish") == (CLOSED_KEY, "not closed: the trade is already paid")


def test_a_foreign_message_is_recorded_with_its_body_and_reason() -> None:
    raw = body(app_id="someone-else")
    run = step_through(notify_flow(Port(), raw, None), [("ledger.record_foreign", None)])
    event, recorded, charset, reason = run.args("ledger.record_foreign")
    assert (event.app_id, recorded, charset, reason) == ("someone-else", raw, "utf-8", "app_id_mismatch")


def test_the_origin_check_asks_the_protocols_url_within_its_timeout_once_per_message() -> None:
    port = legacy_port()
    first = step_through(notify_flow(port, body(), None), [NOT_DONE, ORIGIN_TRUE, CLAIM, AMOUNT_OK, HOOK_OK,
                                                           ("finishes.finish", False)])
    assert first.args("ask_origin") == (ORIGIN_URL, port.protocol.origin_timeout)
    again = step_through(notify_flow(port, body(), None), [NOT_DONE, *PROCESSED])  # remembered: not asked again
    assert summary(again.result) == OK
    other = step_through(notify_flow(port, body(sign="good-other"), None),
                         [NOT_DONE, ORIGIN_TRUE, *PROCESSED])  # another message under the same id is asked
    assert summary(other.result) == OK


def test_a_refused_origin_is_not_remembered() -> None:
    port = legacy_port()
    step_through(notify_flow(port, body(), None), [NOT_DONE, ("ask_origin", b"false")])
    run = step_through(notify_flow(port, body(), None), [NOT_DONE, ORIGIN_TRUE, *PROCESSED])
    assert summary(run.result) == OK


def test_a_returns_origin_check_takes_a_slot_and_gives_it_back() -> None:
    port = legacy_port()
    gate = port.return_gate
    seen: list[bool] = []

    def origin(url: str, timeout: float) -> bytes:
        seen.append(gate.acquire(blocking=False))  # the return holds the only slot meanwhile
        return b"true"

    step_through(return_flow(port, "GET", body(notify_id="N2")), [NOT_DONE, ("ask_origin", Act(origin)),
                                                                   *PROCESSED])
    assert seen == [False] and gate.acquire(blocking=False)


def test_a_returns_slot_is_given_back_when_the_check_fails() -> None:
    port = legacy_port()
    step_through(return_flow(port, "GET", body()), [NOT_DONE, ("ask_origin", GatewayUnavailable("down"))])
    assert port.return_gate.acquire(blocking=False)


def test_confirm_asks_the_ledger_for_the_paid_key_and_the_client_for_the_trade() -> None:
    run = run_case(Port, confirming(), [NOT_DONE, ("client.query", paid_query()), *PROCESSED])
    assert run.args("ledger.is_done") == (PAID_KEY,)
    assert run.args("client.query") == (("out_trade_no", "T1"),)
    event, raw, charset, _, _ = run.args("ledger.claim")
    assert (event.key, event.trade_key, event.total_amount, charset) == (PAID_KEY, f"{APP}:T1", Decimal("9.90"),
                                                                          "utf-8")
    assert raw == b'{"out_trade_no": "T1", "total_amount": "9.90"}'


def test_replay_claims_the_stored_body() -> None:
    event = stored()
    run = step_through(replay_flow(Port(), event), PROCESSED)
    assert run.args("ledger.claim")[1:3] == (event.raw_body, "utf-8")


# -- coverage of the flows' steps ----------------------------------------------------------------------------

def step_sites() -> Iterator[tuple[str, int]]:
    """Every ``yield from step(...)`` in the flows' modules."""
    for module in (flow, process, confirm):
        path = Path(module.__file__ or "")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"yield from step\(", line):
                yield path.name, number


def test_every_yield_point_is_stepped() -> None:
    reached: set[tuple[str, int]] = set()
    for _, make_port, make_flow, script, _ in CASES:
        reached |= run_case(make_port, make_flow, script).points
    sites = set(step_sites())
    assert len(sites) >= 14
    assert sites - reached == set()
