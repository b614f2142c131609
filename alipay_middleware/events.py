"""What hooks and shop pages receive: frozen, typed views of verified callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

#: What a verified event is: its hook (``on_paid``, ``on_closed``, ``on_refunded``) and its dedupe key's first part.
Kind = Literal["paid", "closed", "refunded", "other"]
PAID: Final = "paid"
CLOSED: Final = "closed"
REFUNDED: Final = "refunded"
OTHER: Final = "other"  # verified, recorded and acknowledged, but no hook (e.g. WAIT_BUYER_PAY)
KINDS: tuple[Kind, ...] = (PAID, CLOSED, REFUNDED, OTHER)


@dataclass(frozen=True)
class PaymentEvent:
    """One verified notification, as handed to ``on_paid`` / ``on_closed`` / ``on_refunded``.

    ``key`` is the dedupe key the ledger keeps forever (e.g. ``paid:<app_id>:<out_trade_no>``): a stable
    idempotency key for the hook's own writes. Events sharing a ``trade_key`` never run their hooks at
    the same time. ``attempt`` counts the hook calls for this event (1 first). ``buyer_id`` /
    ``buyer_open_id``: the buyer, as the message names them (None when absent).
    """

    kind: Kind
    key: str
    trade_key: str
    out_trade_no: str
    trade_no: str
    trade_status: str
    total_amount: Decimal | None
    refund_fee: Decimal | None
    out_biz_no: str
    notify_id: str
    gmt_payment: datetime | None
    gmt_refund: datetime | None
    app_id: str
    seller_id: str
    raw: dict[str, str] = field(repr=False)
    attempt: int = 1
    #: Who paid: the 2088... user id, or (apps created since 2023) the app-scoped ``buyer_open_id``; None
    #: when the message does not say (a legacy notification has no open id).
    buyer_id: str | None = None
    buyer_open_id: str | None = None


@dataclass(frozen=True)
class ReturnResult:
    """A verified browser return, found in ``environ["alipay.return"]`` / ``scope["alipay.return"]``.

    It proves the customer came back from Alipay's page for this order. ``paid`` says what the return
    itself proves: ``None`` for the Open Platform, whose return carries no trade status (paid-ness comes
    from the notify); ``True``/``False`` for the legacy service, whose origin-checked return does carry
    one (and a paid one has already been handed to ``on_paid``, see the README's hook contract). A legacy
    return (or one confirmed with ``confirm_returns``) is ``paid=True`` when the ledger has the payment.

    ``confirmed`` is ``False`` for "not confirmed yet": the signature verified, but the call to Alipay
    that would confirm the return (the legacy origin check, the ``confirm_returns`` query) was not made
    because ``Alipay(return_checks=N)`` such calls were already in flight. Then ``paid`` is ``None`` and
    no hook ran: show "confirming" and let ``on_paid`` (or a reload) settle it.
    """

    out_trade_no: str
    trade_no: str
    total_amount: Decimal | None
    app_id: str
    seller_id: str
    timestamp: datetime | None
    raw: dict[str, str] = field(repr=False)
    trade_status: str = ""
    paid: bool | None = None
    confirmed: bool = True
