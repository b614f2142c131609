"""The legacy service on ``gateway.do``: the two direct pay services, ``notify_verify``, ``single_trade_query``.

The pay services are ``create_direct_pay_by_user`` and its wap twin.

Requests are signed over every parameter but ``sign`` and ``sign_type``, empty values dropped, sorted,
raw ``k=v`` joined with ``&``, in ``_input_charset`` (GBK when it is missing, as at Alipay): ``MD5`` is
md5(string + key) in lowercase hex, ``RSA`` is SHA1withRSA with the merchant's 1024-bit key. Errors
carry the legacy codes (``ILLEGAL_PARTNER``, ``ILLEGAL_SIGN_TYPE``, ``ILLEGAL_SIGN``, ``ILLEGAL_SERVICE``,
``ILLEGAL_CHARSET``, ``ILLEGAL_ARGUMENT``). Callbacks are signed with the merchant's MD5 key, or, for
``RSA`` merchants, with the simulator's stand-in for Alipay's shared legacy key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from xml.sax.saxutils import escape

from ..protocols.legacy import DIRECT_PAY, RULE, WAP_DIRECT_PAY
from ..wire.signing import Md5Signer, RsaSigner, RsaVerifier, Signer, Verifier, sign_string
from .model import LEGACY, GatewayError, LegacyMerchant, PayRequest, SimTrade, TradeEvent
from .notifier import is_loopback_url
from .openapi import cst, fmt, strict_amount
from .state import Store

NOTIFY_VERIFY = "notify_verify"
SINGLE_TRADE_QUERY = "single_trade_query"
PAY_SERVICES = (DIRECT_PAY, WAP_DIRECT_PAY)
#: A return's notify_id answers notify_verify for about a minute.
RETURN_ID_LIFETIME = 60.0
BUYER_ID = "2088102000000009"
BUYER_EMAIL = "buyer@example.com"

_OUT_TRADE_NO = re.compile(r"[\x21-\x7e]{1,64}")
_QUANTITY = re.compile(r"[1-9][0-9]{0,5}")


def refused(code: str, detail: str = "") -> GatewayError:
    return GatewayError("", "", code, detail)


def authenticate(params: Mapping[str, str], merchants: Mapping[str, LegacyMerchant], charset: str) -> LegacyMerchant:
    merchant = merchants.get(params.get("partner", ""))
    if merchant is None:
        raise refused("ILLEGAL_PARTNER", "partner 未注册")
    sign_type = params.get("sign_type", "")
    verifier: Verifier
    if sign_type == "MD5" and merchant.md5_key is not None:
        verifier = Md5Signer(merchant.md5_key)
    elif sign_type == "RSA" and merchant.key is not None:
        verifier = RsaVerifier(merchant.key, "RSA")
    else:
        raise refused("ILLEGAL_SIGN_TYPE", f"sign_type {sign_type[:10]!r} is not enabled for this partner")
    try:
        message = sign_string(params, RULE).encode(charset)
    except UnicodeEncodeError:
        raise refused("ILLEGAL_CHARSET") from None
    if not params.get("sign") or not verifier.verify(message, params["sign"]):
        raise refused("ILLEGAL_SIGN", "签名不正确")
    return merchant


def _url(value: str | None, name: str, allow_remote: bool) -> str | None:
    if not value:
        return None
    if not re.match(r"https?://[^/?#]+", value):
        raise refused("ILLEGAL_ARGUMENT", f"{name} is not an absolute http(s) URL")
    if not allow_remote and not is_loopback_url(value):
        raise refused("ILLEGAL_ARGUMENT", f"{name} must be a loopback URL (simulator: allow_remote_callbacks=False)")
    return value


def read_pay(params: Mapping[str, str], merchant: LegacyMerchant, charset: str,
             allow_remote: bool) -> PayRequest:
    service = params.get("service", "")
    if service not in PAY_SERVICES:
        raise refused("ILLEGAL_SERVICE", f"service {service[:40]!r} is not simulated")
    if service == WAP_DIRECT_PAY and charset != "utf-8":
        raise refused("ILLEGAL_CHARSET", "the wap service speaks utf-8 only")
    for name in ("out_trade_no", "subject", "payment_type"):
        if not params.get(name):
            raise refused("ILLEGAL_ARGUMENT", f"{name} is required")
    if not _OUT_TRADE_NO.fullmatch(params["out_trade_no"]):
        raise refused("ILLEGAL_ARGUMENT", "out_trade_no")
    if params["payment_type"] != "1":
        raise refused("ILLEGAL_ARGUMENT", "payment_type must be 1")
    sellers = [name for name in ("seller_id", "seller_email", "seller_account_name") if params.get(name)]
    if not sellers or (service == WAP_DIRECT_PAY and "seller_id" not in sellers):
        raise refused("ILLEGAL_ARGUMENT", "seller_id (or seller_email / seller_account_name) is required")
    if params.get("seller_id") and params["seller_id"] != merchant.partner:
        raise refused("ILLEGAL_ARGUMENT", "seller_id is not this partner")
    total_fee, price, quantity = params.get("total_fee"), params.get("price"), params.get("quantity")
    if total_fee and (price or quantity):
        raise refused("ILLEGAL_ARGUMENT", "total_fee, or price and quantity, never both")
    if total_fee:
        amount = strict_amount(total_fee)
    elif price and quantity and service == DIRECT_PAY and _QUANTITY.fullmatch(quantity):
        unit = strict_amount(price)
        amount = strict_amount(fmt(unit * int(quantity))) if unit is not None else None
    else:
        raise refused("ILLEGAL_ARGUMENT", "total_fee is required" if service == WAP_DIRECT_PAY
                      else "total_fee, or price and quantity, is required")
    if amount is None:
        raise refused("ILLEGAL_ARGUMENT", "total_fee: two decimals within [0.01, 100000000]")
    return PayRequest(
        kind=LEGACY, merchant_id=merchant.partner, seller_id=merchant.partner, method=service,
        out_trade_no=params["out_trade_no"], total_amount=amount,
        subject=params["subject"], charset=charset, sign_type=params["sign_type"],
        notify_url=_url(params.get("notify_url"), "notify_url", allow_remote),
        return_url=_url(params.get("return_url"), "return_url", allow_remote),
        body=params.get("body", ""), passback=params.get("extra_common_param", ""),
    )


def existing_trade_problem(trade: SimTrade, request: PayRequest) -> GatewayError | None:
    """A second pay request for an out_trade_no Alipay already knows."""
    if trade.status != "WAIT_BUYER_PAY":
        return refused("TRADE_HAS_SUCCESS" if trade.paid_at else "TRADE_HAS_CLOSED")
    if trade.total_amount != request.total_amount:
        return refused("DUPLICATE_OUT_TRADE_NO", "the same out_trade_no with another amount")
    return None


def signer_for(trade_sign_type: str, merchant: LegacyMerchant, legacy_key_signer: RsaSigner) -> Signer:
    if trade_sign_type == "MD5" and merchant.md5_key is not None:
        return Md5Signer(merchant.md5_key)
    return legacy_key_signer


def notify_verify(params: Mapping[str, str], store: Store) -> bytes:
    partner, notify_id = params.get("partner", ""), params.get("notify_id", "")
    if not partner or not notify_id:
        return b"invalid"
    return b"true" if store.notify_id_valid(partner, notify_id) else b"false"


def trade_fields(trade: SimTrade, *, amount: Decimal | None = None, seller_id: str | None = None) -> dict[str, str]:
    total = fmt(amount if amount is not None else trade.total_amount)
    return {
        "out_trade_no": trade.out_trade_no,
        "subject": trade.subject,
        "payment_type": "1",
        "trade_no": trade.trade_no,
        "trade_status": trade.status,
        "gmt_create": cst(trade.created_at),
        "gmt_payment": cst(trade.paid_at),
        "gmt_close": cst(trade.closed_at),
        "seller_id": seller_id or trade.seller_id,
        "buyer_email": BUYER_EMAIL,
        "buyer_id": BUYER_ID,
        "price": total,
        "total_fee": total,
        "quantity": "1",
        "body": trade.body,
        "discount": "0.00",
        "is_total_fee_adjust": "N",
        "use_coupon": "N",
    }


def notify_fields(event: TradeEvent, notify_id: str, now: datetime, *, amount: Decimal | None = None,
                  seller_id: str | None = None) -> dict[str, str]:
    fields = {"notify_time": cst(now), "notify_type": "trade_status_sync", "notify_id": notify_id,
              **trade_fields(event.trade, amount=amount, seller_id=seller_id),
              "extra_common_param": event.trade.passback}
    if event.kind == "paid":
        fields["trade_status"] = "TRADE_SUCCESS"
        fields["gmt_close"] = ""
    elif event.kind == "refunded" and event.refund is not None:
        fields["refund_status"] = "REFUND_SUCCESS"
        fields["gmt_refund"] = cst(event.refund.at)
    return {k: v for k, v in fields.items() if v}


def return_fields(trade: SimTrade, notify_id: str, now: datetime) -> dict[str, str]:
    """The browser return: unlike the Open Platform's it carries trade_status and a notify_id."""
    fields = {"is_success": "T", "exterface": trade.method, "notify_id": notify_id, "notify_time": cst(now),
              "notify_type": "trade_status_sync", **trade_fields(trade), "extra_common_param": trade.passback}
    for name in ("gmt_create", "gmt_payment", "gmt_close", "price", "quantity", "discount", "is_total_fee_adjust",
                 "use_coupon"):
        fields.pop(name)
    return {k: v for k, v in fields.items() if v}


def single_trade_query(params: Mapping[str, str], merchant: LegacyMerchant, store: Store, charset: str,
                       signer: Signer) -> bytes:
    """The XML answer: ``<trade>`` fields signed (sorted, empties dropped), failures unsigned."""
    declaration = f'<?xml version="1.0" encoding="{charset.upper()}"?>'
    out_trade_no, trade_no = params.get("out_trade_no"), params.get("trade_no")
    trade = store.find(merchant.partner, out_trade_no, trade_no) if (out_trade_no or trade_no) else None
    if trade is None or trade.kind != LEGACY or not trade.buyer_acted:
        return failure("TRADE_NOT_EXIST", charset)
    fields = {**trade_fields(trade), "flag_trade_locked": "0", "operator_role": "B", "to_buyer_fee": "0.00",
              "to_seller_fee": fmt(trade.total_amount - trade.refunded_amount) if trade.paid_at else "0.00",
              "gmt_last_modified_time": cst(trade.closed_at or trade.paid_at or trade.created_at)}
    if trade.refunds:
        fields["refund_status"] = "REFUND_SUCCESS"
        fields["refund_fee"] = fmt(trade.refunded_amount)
    fields = {k: v for k, v in fields.items() if v}
    sign = signer.sign(sign_string(fields, RULE).encode(charset))
    items = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in sorted(fields.items()))
    request = "".join(f'<param name="{escape(k)}">{escape(v)}</param>' for k, v in sorted(params.items())
                      if k not in ("sign", "sign_type"))
    return (f"{declaration}<alipay><is_success>T</is_success><request>{request}</request><response><trade>"
            f"{items}</trade></response><sign>{sign}</sign><sign_type>{signer.sign_type}</sign_type></alipay>"
            ).encode(charset)


def failure(code: str, charset: str) -> bytes:
    return (f'<?xml version="1.0" encoding="{charset.upper()}"?><alipay><is_success>F</is_success>'
            f"<error>{escape(code)}</error></alipay>").encode(charset)
