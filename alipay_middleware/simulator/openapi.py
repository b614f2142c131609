"""The Open Platform on ``gateway.do``: page/wap pay requests and the four server-side trade APIs.

A request is checked in the order Alipay checks it: the common arguments are present (40001
``isv.missing-*``), the app id is known (40002 ``isv.invalid-app-id``), the sign type is RSA2 or RSA, the
signature verifies over every parameter but ``sign`` (``sign_type`` kept, empty values dropped, sorted,
raw ``k=v`` joined with ``&``, in the request's charset) with the hash the sign type names
(``isv.invalid-signature``), the timestamp is Beijing time within ten minutes (``isv.invalid-timestamp``),
the method exists (``isv.invalid-method``). Then the business arguments: 40002 ``isv.invalid-parameter``
on the pay page, 40004 ``ACQ.*`` from the APIs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from ..gateway.client import CLOSE, QUERY, REFUND, REFUND_QUERY
from ..wire.form import CST, MAX_AMOUNT, MIN_AMOUNT, TIMESTAMP_FORMAT
from ..wire.response import ERROR_KEY, response_key
from ..wire.signing import RsaVerifier, Signer, sign_string
from .model import OPENAPI, PAID_STATUSES, GatewayError, Merchant, PayRequest, Refund, SimTrade, TradeEvent
from .notifier import is_loopback_url
from .state import Store

PAGE_PAY = "alipay.trade.page.pay"
WAP_PAY = "alipay.trade.wap.pay"
PAY_METHODS = {PAGE_PAY: "FAST_INSTANT_TRADE_PAY", WAP_PAY: "QUICK_WAP_WAY"}
API_METHODS = (QUERY, REFUND, CLOSE, REFUND_QUERY)
#: How far a request's timestamp may be from Beijing time now.
TIMESTAMP_TOLERANCE = timedelta(minutes=10)
BUYER_ID = "2088102000000009"
BUYER_LOGON_ID = "159****5620"

_STRICT_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,8})\.[0-9]{2}")
_OUT_TRADE_NO = re.compile(r"[\x21-\x7e]{1,64}")
_COMMON = (("app_id", "app-id"), ("method", "method"), ("sign_type", "signature-type"), ("sign", "signature"),
           ("timestamp", "timestamp"), ("version", "version"))


def missing(what: str) -> GatewayError:
    return GatewayError("40001", "Missing Required Arguments", f"isv.missing-{what}", f"缺少{what}参数")


def invalid(sub_code: str, sub_msg: str) -> GatewayError:
    return GatewayError("40002", "Invalid Arguments", sub_code, sub_msg)


def business(sub_code: str, sub_msg: str) -> GatewayError:
    return GatewayError("40004", "Business Failed", sub_code, sub_msg)


def strict_amount(text: object) -> Decimal | None:
    """An amount as Alipay wants it: a string with exactly two decimals within [0.01, 100000000]."""
    if not isinstance(text, str) or not _STRICT_AMOUNT.fullmatch(text):
        return None
    amount = Decimal(text)
    return amount if MIN_AMOUNT <= amount <= MAX_AMOUNT else None


def fmt(amount: Decimal) -> str:
    return f"{amount:.2f}"


def cst(moment: datetime | None) -> str:
    return moment.astimezone(CST).strftime(TIMESTAMP_FORMAT) if moment is not None else ""


def authenticate(params: Mapping[str, str], merchants: Mapping[str, Merchant], charset: str,
                 now: datetime) -> Merchant:
    """The checks every Open Platform request passes first (module docstring); raises GatewayError."""
    for name, what in _COMMON:
        if not params.get(name):
            raise missing(what)
    merchant = merchants.get(params["app_id"])
    if merchant is None:
        raise invalid("isv.invalid-app-id", "无效的AppID参数")
    sign_type = params["sign_type"]
    if sign_type not in ("RSA2", "RSA"):
        raise invalid("isv.invalid-signature-type", f"无效的签名类型 {sign_type[:10]}")
    try:
        message = sign_string(params, ("sign",)).encode(charset)
    except UnicodeEncodeError:
        raise invalid("isv.invalid-charset", "字符集错误") from None
    if not RsaVerifier(merchant.key, sign_type).verify(message, params["sign"]):
        raise invalid("isv.invalid-signature", "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配")
    try:
        sent = datetime.strptime(params["timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=CST)
    except ValueError:
        raise invalid("isv.invalid-timestamp", "非法的时间戳参数") from None
    if abs(now - sent) > TIMESTAMP_TOLERANCE:
        raise invalid("isv.invalid-timestamp", "时间戳与北京时间相差超过10分钟")
    if params["method"] not in PAY_METHODS and params["method"] not in API_METHODS:
        raise invalid("isv.invalid-method", "不存在的方法名")
    if params.get("format", "JSON").upper() != "JSON":
        raise invalid("isv.invalid-format", "无效的数据格式")
    if params["version"] != "1.0":
        raise invalid("isv.invalid-parameter", "version 只支持 1.0")
    return merchant


def read_biz(params: Mapping[str, str], bad: GatewayError) -> dict[str, Any]:
    try:
        biz = json.loads(params.get("biz_content") or "")
    except ValueError:
        raise bad from None
    if not isinstance(biz, dict):
        raise bad
    return biz


def callback_url(value: object, name: str, allow_remote: bool) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid("isv.invalid-parameter", f"{name} 不是合法的 http(s) 地址")
    if not allow_remote and not is_loopback_url(str(value)):
        raise invalid("isv.invalid-parameter", f"{name} must be a loopback URL (simulator: "
                                               "allow_remote_callbacks=False)")
    return str(value)


def read_pay(params: Mapping[str, str], merchant: Merchant, charset: str, allow_remote: bool) -> PayRequest:
    method = params["method"]
    if method not in PAY_METHODS:
        raise invalid("isv.invalid-method", f"{method} 不能在收银台页面调用")
    biz = read_biz(params, invalid("isv.invalid-parameter", "biz_content 不是 JSON 对象"))
    for name in ("out_trade_no", "total_amount", "subject", "product_code"):
        if biz.get(name) in (None, ""):
            raise invalid("isv.invalid-parameter", f"缺少必选参数 {name}")
    out_trade_no = biz["out_trade_no"]
    if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.fullmatch(out_trade_no):
        raise invalid("isv.invalid-parameter", "out_trade_no 不合法")
    amount = strict_amount(biz["total_amount"])
    if amount is None:
        raise invalid("isv.invalid-parameter", "total_amount 不合法：两位小数，取值范围 [0.01,100000000]")
    subject = biz["subject"]
    if not isinstance(subject, str) or len(subject) > 256:
        raise invalid("isv.invalid-parameter", "subject 不合法")
    if biz["product_code"] != PAY_METHODS[method]:
        raise invalid("isv.invalid-parameter", f"product_code 必须是 {PAY_METHODS[method]}")
    return PayRequest(
        kind=OPENAPI, merchant_id=merchant.app_id, seller_id=merchant.seller_id, method=method,
        out_trade_no=out_trade_no, total_amount=amount, subject=subject,
        charset=charset, sign_type=params["sign_type"],
        notify_url=callback_url(params.get("notify_url"), "notify_url", allow_remote),
        return_url=callback_url(params.get("return_url"), "return_url", allow_remote),
        body=str(biz.get("body") or ""), passback=str(biz.get("passback_params") or ""),
        quit_url=callback_url(biz.get("quit_url"), "quit_url", allow_remote) or "",
    )


def existing_trade_problem(trade: SimTrade, request: PayRequest) -> GatewayError | None:
    """A second pay request for an out_trade_no Alipay already knows."""
    if trade.status in PAID_STATUSES:
        return business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
    if trade.status == "TRADE_CLOSED":
        return business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
    if trade.total_amount != request.total_amount or trade.subject != request.subject:
        return business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
    return None


# -- the server-side APIs -------------------------------------------------------------------------------


def call_api(method: str, params: Mapping[str, str], merchant: Merchant, store: Store,
             now: datetime) -> tuple[dict[str, Any], list[TradeEvent]]:
    """The response payload (code 10000 or a 40004 failure) and the events to notify."""
    try:
        with store.lock:
            return _call(method, params, merchant, store, now)
    except GatewayError as exc:
        return {"code": exc.code, "msg": exc.msg, "sub_code": exc.sub_code, "sub_msg": exc.sub_msg}, []


def _call(method: str, params: Mapping[str, str], merchant: Merchant, store: Store,
          now: datetime) -> tuple[dict[str, Any], list[TradeEvent]]:
    bad = business("ACQ.INVALID_PARAMETER", "参数无效")
    biz = read_biz(params, bad)
    out_trade_no, trade_no = biz.get("out_trade_no"), biz.get("trade_no")
    if not (out_trade_no or trade_no) or not all(isinstance(v, (str, type(None))) for v in (out_trade_no, trade_no)):
        raise bad
    trade = store.find(merchant.app_id, out_trade_no, trade_no)
    if trade is None or trade.kind != OPENAPI or not trade.buyer_acted:
        # A page-pay trade exists at Alipay only once the buyer has acted on the cashier page.
        raise business("ACQ.TRADE_NOT_EXIST", "交易不存在")
    ids = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}
    ok = {"code": "10000", "msg": "Success"}
    if method == QUERY:
        return {**ok, **ids, **query_fields(trade)}, []
    if method == CLOSE:
        if trade.status == "WAIT_BUYER_PAY":
            trade.status, trade.closed_at = "TRADE_CLOSED", now
            store.save(trade)
            return {**ok, **ids}, [TradeEvent(copy.deepcopy(trade), "closed")]
        if trade.status == "TRADE_CLOSED" and not trade.refunds:
            return {**ok, **ids}, []  # already closed: nothing changes, nothing is notified again
        raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
    request_no = biz.get("out_request_no") or (trade.trade_no if method == REFUND else "")
    if not isinstance(request_no, str) or not request_no:
        raise bad
    if method == REFUND_QUERY:
        refund = trade.refunds.get(request_no)
        if refund is None:
            return {**ok, **ids, "out_request_no": request_no}, []
        return {**ok, **ids, "out_request_no": request_no, "refund_amount": fmt(refund.amount),
                "total_amount": fmt(trade.total_amount), "refund_status": "REFUND_SUCCESS",
                "gmt_refund_pay": cst(refund.at)}, []
    amount = strict_amount(biz.get("refund_amount"))
    if amount is None:
        raise bad
    answer = {**ok, **ids, "buyer_logon_id": BUYER_LOGON_ID, "buyer_user_id": BUYER_ID}
    refund, fund_change = apply_refund(trade, amount, request_no, now)
    store.save(trade)
    events = [TradeEvent(copy.deepcopy(trade), "refunded", refund)] if fund_change else []
    return ({**answer, "fund_change": "Y" if fund_change else "N", "refund_fee": fmt(trade.refunded_amount),
             "gmt_refund_pay": cst(refund.at)}, events)


def apply_refund(trade: SimTrade, amount: Decimal, request_no: str, now: datetime) -> tuple[Refund, bool]:
    """Refund ``amount`` under ``request_no``; True when money moved (False: a retry of a done refund).
    A refund of everything that is left closes the trade (TRADE_CLOSED)."""
    earlier = trade.refunds.get(request_no)
    if earlier is not None:
        if earlier.amount != amount:
            raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与原请求不一致")
        return earlier, False
    if trade.status != "TRADE_SUCCESS":
        raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
    if trade.refunded_amount + amount > trade.total_amount:
        raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
    refund = Refund(request_no, amount, now)
    trade.refunds[request_no] = refund
    trade.refunded_amount += amount
    if trade.refunded_amount == trade.total_amount:
        trade.status, trade.closed_at = "TRADE_CLOSED", now
    return refund, True


def query_fields(trade: SimTrade) -> dict[str, str]:
    paid = trade.paid_at is not None
    fields = {
        "buyer_logon_id": BUYER_LOGON_ID,
        "trade_status": trade.status,
        "total_amount": fmt(trade.total_amount),
        "buyer_pay_amount": fmt(trade.total_amount) if paid else "0.00",
        "receipt_amount": fmt(trade.total_amount) if paid else "0.00",
        "point_amount": "0.00",
        "invoice_amount": fmt(trade.total_amount) if paid else "0.00",
    }
    if paid:
        fields["send_pay_date"] = cst(trade.paid_at)
        fields["buyer_user_id"] = BUYER_ID
    return fields


def response_body(key: str, payload: Mapping[str, Any], signer: Signer | None) -> bytes:
    """``{"<key>":{...},"sign":"..."}``: the signature covers the exact text of the object."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    body = f'{{"{key}":{text}'
    if signer is not None:
        body += f',"sign":"{signer.sign(text.encode("utf-8"))}"'
    return (body + "}").encode("utf-8")


def api_response(method: str, error: GatewayError | None, payload: Mapping[str, Any] | None,
                 signer: Signer | None) -> bytes:
    if error is not None:
        # Common argument errors come as error_response; an unknown app id unsigned (Alipay cannot know
        # which app's key pair to use), everything else signed.
        return response_body(ERROR_KEY, {"code": error.code, "msg": error.msg, "sub_code": error.sub_code,
                                         "sub_msg": error.sub_msg}, signer)
    return response_body(response_key(method), payload or {}, signer)


# -- callbacks --------------------------------------------------------------------------------------------


def notify_fields(event: TradeEvent, notify_id: str, now: datetime, *, app_id: str | None = None,
                  amount: Decimal | None = None) -> dict[str, str]:
    """A ``trade_status_sync`` notification, unsigned. ``app_id``/``amount`` override what the trade
    says (the foreign-app and tampered-amount faults)."""
    trade = event.trade
    total = fmt(amount if amount is not None else trade.total_amount)
    fields = {
        "notify_time": cst(now),
        "notify_type": "trade_status_sync",
        "notify_id": notify_id,
        "app_id": app_id or trade.merchant_id,
        "auth_app_id": app_id or trade.merchant_id,
        "charset": trade.charset,
        "version": "1.0",
        "sign_type": trade.sign_type,
        "trade_no": trade.trade_no,
        "out_trade_no": trade.out_trade_no,
        "buyer_id": BUYER_ID,
        "buyer_logon_id": BUYER_LOGON_ID,
        "seller_id": trade.seller_id,
        "trade_status": trade.status if event.kind != "paid" else "TRADE_SUCCESS",
        "total_amount": total,
        "gmt_create": cst(trade.created_at),
        "subject": trade.subject,
        "body": trade.body,
        "passback_params": trade.passback,
    }
    if trade.paid_at is not None:
        fields.update({
            "receipt_amount": total, "invoice_amount": total, "buyer_pay_amount": total, "point_amount": "0.00",
            "gmt_payment": cst(trade.paid_at),
            "fund_bill_list": json.dumps([{"amount": total, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")),
        })
    if event.kind == "refunded" and event.refund is not None:
        refund = event.refund
        fields.update({"refund_fee": fmt(sum((r.amount for r in trade.refunds.values()
                                               if r.at <= refund.at), Decimal("0.00"))),
                       "gmt_refund": refund.at.astimezone(CST).strftime(TIMESTAMP_FORMAT + ".%f")[:-3],
                       "out_biz_no": refund.out_request_no})
        if fields["trade_status"] == "TRADE_CLOSED":
            fields["gmt_close"] = cst(trade.closed_at)
    elif event.kind == "closed":
        fields["trade_status"] = "TRADE_CLOSED"
        fields["gmt_close"] = cst(trade.closed_at)
    return {k: v for k, v in fields.items() if v}


def return_fields(trade: SimTrade, now: datetime) -> dict[str, str]:
    """The browser return: no trade_status, no notify_id (Alipay's page/wap pay return)."""
    return {
        "charset": trade.charset,
        "out_trade_no": trade.out_trade_no,
        "method": trade.method + ".return",
        "total_amount": fmt(trade.total_amount),
        "trade_no": trade.trade_no,
        "auth_app_id": trade.merchant_id,
        "version": "1.0",
        "app_id": trade.merchant_id,
        "sign_type": trade.sign_type,
        "seller_id": trade.seller_id,
        "timestamp": cst(now),
    }
