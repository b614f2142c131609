"""The confirmation flow: ask Alipay about one trade and feed what it proves through the claim-check-hook steps."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from ..errors import AlipayError
from ..events import CLOSED, PAID, Kind, PaymentEvent
from .answers import SUCCESS, Reason
from .ports import FlowPort, TradeAnswer
from .process import process
from .steps import Steps, step

if TYPE_CHECKING:
    from ..protocols.base import Protocol

log = logging.getLogger("alipay_middleware")

#: Why a return was not confirmed: every ``return_checks`` slot was taken.
CHECKS_FULL: Final = "return_checks_full"
#: What a confirmation found and did: see :class:`Confirmation`.
Outcome = Literal[Reason, "already_paid", "processed", "not_paid", "error", "return_checks_full"]


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
    outcome: Outcome


def confirm_flow(port: FlowPort, out_trade_no: str, source: str,
                 gate: threading.Semaphore | None = None) -> Steps[Confirmation]:
    """Query the trade and feed what the verified answer proves (paid, or closed unpaid) through the
    notify's claim-check-hook steps, under the notify's dedupe key: the hook still runs once.

    The ledger is asked first. With ``gate`` (the returns' bound) the query is made only in a free slot,
    never waiting for one; otherwise the outcome is ``return_checks_full`` and Alipay is not asked."""
    protocol = port.protocol
    try:
        if (yield from step(port.ledger.is_done, protocol.key(PAID, out_trade_no))):
            return Confirmation(out_trade_no, None, True, "already_paid")
        if gate is not None and not gate.acquire(blocking=False):
            log.info("alipay %s not confirmed reason=%s out_trade_no=%s", source, CHECKS_FULL, out_trade_no)
            return Confirmation(out_trade_no, None, None, CHECKS_FULL)
        try:
            query = yield from step(port.client.query, out_trade_no=out_trade_no)
        finally:
            if gate is not None:
                gate.release()
    except AlipayError as exc:
        log.warning("alipay %s error out_trade_no=%s error=%s: %s", source, out_trade_no, type(exc).__name__, exc)
        return Confirmation(out_trade_no, None, None, "error")
    event = query_event(protocol, query)
    if event is None:
        return Confirmation(out_trade_no, query.trade_status, query.paid, "not_paid")
    raw = json.dumps(query.raw, ensure_ascii=False, default=str).encode("utf-8")
    answer = yield from process(port, event, raw, "utf-8", source)
    outcome: Outcome = "processed" if answer is SUCCESS else answer.reason
    return Confirmation(out_trade_no, query.trade_status, event.kind == PAID, outcome)


def query_event(protocol: Protocol, query: TradeAnswer) -> PaymentEvent | None:
    """The event a verified trade query answer (``alipay.trade.query`` or the legacy
    ``single_trade_query``) proves by itself: paid, or closed unpaid.

    None for anything else (waiting, ``TRADE_PENDING``, unknown to Alipay, and a closed trade that had
    been paid: a full refund, which the refund notification reports with its own key). The keys are the
    notify's, so whichever of the two comes first runs the hook.
    """
    if not query.exists or not query.out_trade_no:
        return None
    kind: Kind
    if query.paid:
        kind = PAID
    elif query.trade_status == "TRADE_CLOSED" and query.send_pay_date is None:
        kind = CLOSED
    else:
        return None
    raw = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
           for k, v in query.raw.items()}
    return PaymentEvent(
        kind=kind,
        key=protocol.key(kind, query.out_trade_no),
        trade_key=f"{protocol.account}:{query.out_trade_no}",
        out_trade_no=query.out_trade_no,
        trade_no=query.trade_no,
        trade_status=query.trade_status or "",
        total_amount=query.total_amount,
        refund_fee=None,
        out_biz_no="",
        notify_id="",
        gmt_payment=query.send_pay_date,
        gmt_refund=None,
        app_id=protocol.app_id,
        seller_id=raw.get("seller_id", ""),
        raw=raw,
        buyer_id=raw.get("buyer_user_id") or None,  # alipay.trade.query's name for it
        buyer_open_id=raw.get("buyer_open_id") or None,
    )
