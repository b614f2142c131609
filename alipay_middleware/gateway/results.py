"""The answers of the gateway calls: TradeQuery, RefundResult, RefundQuery and CloseResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..protocols.openapi import PAID_STATUSES

__all__ = ["REFUND_SUCCESS", "CloseResult", "RefundQuery", "RefundResult", "TradeQuery"]

REFUND_SUCCESS = "REFUND_SUCCESS"


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
