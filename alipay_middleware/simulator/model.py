"""What the simulator knows: merchants, trades, refunds, notification attempts and the fault switches."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from Crypto.PublicKey import RSA

from ..wire.keys import load_public_key

OPENAPI = "openapi"
LEGACY = "legacy"
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})

_APP_ID = re.compile(r"[0-9]{16}")
# 16 digits; real partner ids start with 2088, the public test vectors use 1000...: both are accepted here.
_PARTNER = re.compile(r"[0-9]{16}")
_MD5_KEY = re.compile(r"[0-9A-Za-z]{32}")


@dataclass(frozen=True)
class Merchant:
    """An Open Platform app registered with the simulator. ``public_key``: the app's public key, in any
    of the four shapes the console and key tools produce (PKCS#1/PKCS#8, with or without PEM armour)."""

    app_id: str
    public_key: str = field(repr=False)
    seller_id: str = "2088000000000000"
    name: str = "Simulated merchant"
    key: RSA.RsaKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, str) or not _APP_ID.fullmatch(self.app_id):
            raise ValueError(f"app_id must be a 16-digit app id, got {self.app_id!r}")
        if not isinstance(self.seller_id, str) or not _PARTNER.fullmatch(self.seller_id):
            raise ValueError(f"seller_id must be a 16-digit 2088... id, got {self.seller_id!r}")
        object.__setattr__(self, "key", load_public_key(self.public_key, f"public key of app {self.app_id}"))


@dataclass(frozen=True)
class LegacyMerchant:
    """A legacy (``create_direct_pay_by_user``) merchant: partner id and an MD5 key and/or the merchant's
    1024-bit RSA public key (what the merchant uploaded for ``sign_type=RSA``)."""

    partner: str
    md5_key: str | None = field(default=None, repr=False)
    rsa_public_key: str | None = field(default=None, repr=False)
    name: str = "Simulated legacy merchant"
    key: RSA.RsaKey | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.partner, str) or not _PARTNER.fullmatch(self.partner):
            raise ValueError(f"partner must be a 16-digit partner id (2088...), got {self.partner!r}")
        if self.md5_key is None and self.rsa_public_key is None:
            raise ValueError(f"legacy merchant {self.partner} needs md5_key=... or rsa_public_key=... (or both)")
        if self.md5_key is not None and not _MD5_KEY.fullmatch(self.md5_key):
            raise ValueError("md5_key must be the 32-character MD5 key (letters and digits)")
        if self.rsa_public_key is not None:
            object.__setattr__(self, "key", load_public_key(self.rsa_public_key,
                                                            f"rsa_public_key of partner {self.partner}"))


@dataclass
class Faults:
    """Misbehaviours Alipay is known for, all off by default (see the package docstring)."""

    duplicate_notify: bool = False
    out_of_order: bool = False
    notify_before_return: bool = False
    foreign_app_id: bool = False
    tamper_amount: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return ("duplicate_notify", "out_of_order", "notify_before_return", "foreign_app_id", "tamper_amount")

    @staticmethod
    def explain(name: str) -> str:
        """One line on what the switch does (the admin page shows it next to the switch)."""
        return _FAULT_LINES[name]


_FAULT_LINES = {
    "duplicate_notify": "Every delivery is sent twice at once: the shop must act on it only once.",
    "out_of_order": "A trade's notification is held back until its next one (a refund, a close) has gone, "
                    "or until the first resend interval passes.",
    "notify_before_return": "The notification is sent and answered before the browser returns to the shop "
                            "(otherwise the return goes first).",
    "foreign_app_id": "A correctly signed copy for another app id (legacy: another seller_id) is sent too: "
                      "the shop must refuse it.",
    "tamper_amount": "The notification is signed with a wrong total_amount (0.01): only the shop's own amount "
                     "check can catch it.",
}


@dataclass(frozen=True)
class PayRequest:
    """A verified pay request (Open Platform page/wap pay, or a legacy pay service), before it is a trade."""

    kind: str  # OPENAPI | LEGACY
    merchant_id: str  # app id or partner
    seller_id: str
    method: str  # the Open Platform method, or the legacy service
    out_trade_no: str
    total_amount: Decimal
    subject: str
    charset: str
    sign_type: str
    notify_url: str | None
    return_url: str | None
    body: str
    passback: str
    quit_url: str = ""


@dataclass
class Refund:
    out_request_no: str
    amount: Decimal
    at: datetime


@dataclass
class SimTrade:
    """One trade as the simulator sees it. ``sim.trades()`` hands out copies."""

    kind: str  # OPENAPI | LEGACY
    merchant_id: str  # app id or partner id
    out_trade_no: str
    trade_no: str
    subject: str
    total_amount: Decimal
    status: str
    charset: str
    notify_url: str | None
    return_url: str | None
    created_at: datetime
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    refunded_amount: Decimal = Decimal("0.00")
    #: The pay method (``alipay.trade.page.pay``...) or legacy service, and what echoes back verbatim.
    method: str = ""
    sign_type: str = "RSA2"
    seller_id: str = ""
    body: str = ""
    passback: str = ""
    quit_url: str = ""
    #: A page-pay trade exists at Alipay only once the buyer acted on the cashier page.
    buyer_acted: bool = False
    refunds: dict[str, Refund] = field(default_factory=dict)


@dataclass
class NotifyId:
    """An id ``notify_verify`` answers for (legacy service)."""

    notify_id: str
    merchant_id: str
    #: time.time() after which notify_verify answers false; None: until the notification is acknowledged.
    expires: float | None
    alive: bool = True


@dataclass(frozen=True)
class Delivery:
    """One notification attempt: what was sent where, and what came back."""

    notify_id: str
    url: str
    fields: dict[str, str]
    charset: str
    attempt: int
    status: int | None  # HTTP status, None when no answer arrived
    answer: str  # the body (at most 200 characters) or the network error
    at: datetime
    out_trade_no: str = ""
    copy: str = ""  # "" for the real notification, else which fault made it ("duplicate", "foreign_app_id")

    @property
    def acknowledged(self) -> bool:
        return self.status == 200 and self.answer == "success"


class GatewayError(Exception):
    """A request the gateway refuses. ``code``/``msg``: the public code (``40002 Invalid Arguments``);
    ``sub_code``/``sub_msg``: the precise reason (``isv.invalid-signature``). Legacy errors have only
    ``sub_code`` (``ILLEGAL_SIGN``)."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str = "") -> None:
        super().__init__(f"{sub_code}: {sub_msg}" if sub_msg else sub_code)
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg

    @property
    def page_code(self) -> str:
        """What Alipay's cashier error page shows: the sub code without its ``isv.`` prefix."""
        return self.sub_code.removeprefix("isv.")


@dataclass(frozen=True)
class TradeEvent:
    """Something that happened to a trade and that Alipay notifies: ``paid``, ``refunded``, ``closed``.
    ``trade`` is a copy taken when it happened: the notification describes that moment, even when it is
    built or resent after later changes."""

    trade: SimTrade
    kind: str
    refund: Refund | None = None
