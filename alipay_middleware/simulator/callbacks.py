"""What the simulator sends back to the shop, signed as Alipay signs it: notifications and browser returns.

Open Platform messages are signed with the simulator's Alipay key under rule V1 (``sign`` and ``sign_type``
left out of the string), with the hash of the sign type the shop's request used; legacy messages with the
merchant's MD5 key or, for RSA merchants, the stand-in for Alipay's shared legacy key. Everything is
encoded in the charset of the shop's request (GBK included).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from urllib.parse import quote_plus, urlencode

from Crypto.PublicKey import RSA

from ..protocols.legacy import sign_request
from ..protocols.openapi import RULE_V1
from ..wire.signing import RsaSigner, sign_string
from . import legacy, openapi
from .model import OPENAPI, Faults, LegacyMerchant, SimTrade, TradeEvent
from .notifier import Notification
from .state import Store

#: Who the foreign-app fault pretends the notification was for (a valid, correctly signed message).
FOREIGN_APP_ID = "2021009999999999"
FOREIGN_PARTNER = "2088999999999999"


class Callbacks:
    def __init__(self, alipay_key: RSA.RsaKey, legacy_signer: RsaSigner, legacy_merchants: Mapping[str, LegacyMerchant],
                 store: Store) -> None:
        self._alipay_key = alipay_key
        self._legacy_signer = legacy_signer
        self._legacy = legacy_merchants
        self._store = store

    def return_url(self, trade: SimTrade, now: datetime) -> str:
        """The signed return_url the browser is redirected to."""
        if trade.return_url is None:
            raise ValueError(f"trade {trade.out_trade_no} has no return_url")
        if trade.kind == OPENAPI:
            fields = openapi.return_fields(trade, now)
            fields["sign"] = RsaSigner(self._alipay_key, trade.sign_type).sign(
                sign_string(fields, RULE_V1).encode(trade.charset))
        else:
            merchant = self._legacy[trade.merchant_id]
            notify_id = self._store.issue_notify_id(merchant.partner, legacy.RETURN_ID_LIFETIME)
            fields = sign_request(legacy.return_fields(trade, notify_id, now),
                                  legacy.signer_for(trade.sign_type, merchant, self._legacy_signer), trade.charset)
        separator = "&" if "?" in trade.return_url else "?"
        return trade.return_url + separator + urlencode(fields, quote_via=quote_plus, encoding=trade.charset)

    # -- notifications -------------------------------------------------------------------------------

    def notifications(self, event: TradeEvent, faults: Faults, now: datetime) -> list[Notification]:
        """The notification for ``event`` (none without a notify_url), plus the foreign-app copy when
        that fault is on. Built now, so each carries the trade's state at the time of the event."""
        trade = event.trade
        if not trade.notify_url:
            return []
        copies = [""] + (["foreign_app_id"] if faults.foreign_app_id else [])
        # The tampered amount is *signed*: the signature verifies, so what catches it is the shop's own
        # check of total_amount against its order (the check this fault exists to exercise).
        amount = None
        if faults.tamper_amount:
            amount = Decimal("0.01") if trade.total_amount != Decimal("0.01") else Decimal("0.02")
        return [self._notification(event, copy_kind, amount, now) for copy_kind in copies]

    def _notification(self, event: TradeEvent, copy_kind: str, amount: Decimal | None,
                      now: datetime) -> Notification:
        trade = event.trade
        if trade.notify_url is None:
            raise ValueError(f"trade {trade.out_trade_no} has no notify_url")
        notify_id = self._store.issue_notify_id(trade.merchant_id, None)
        foreign = copy_kind == "foreign_app_id"
        if trade.kind == OPENAPI:
            fields = openapi.notify_fields(event, notify_id, now, app_id=FOREIGN_APP_ID if foreign else None,
                                           amount=amount)
            fields["sign"] = RsaSigner(self._alipay_key, trade.sign_type).sign(
                sign_string(fields, RULE_V1).encode(trade.charset))
        else:
            merchant = self._legacy[trade.merchant_id]
            unsigned = legacy.notify_fields(event, notify_id, now, amount=amount,
                                            seller_id=FOREIGN_PARTNER if foreign else None)
            fields = sign_request(unsigned, legacy.signer_for(trade.sign_type, merchant, self._legacy_signer),
                                  trade.charset)
        body = urlencode(fields, quote_via=quote_plus, encoding=trade.charset).encode("ascii")
        return Notification(notify_id, trade.notify_url, body, trade.charset, fields, trade.out_trade_no,
                            f"{trade.merchant_id}:{trade.out_trade_no}", copy_kind)
