"""Payment events for the ledger tests (``test_ledger_contract.py``, ``test_ledger_postgres.py``)."""

from __future__ import annotations

from decimal import Decimal

from alipay_middleware.events import PaymentEvent


def event(out_trade_no: str = "T1", kind: str = "paid", *, suffix: str = "", notify_id: str = "n-1",
          raw: dict[str, str] | None = None) -> PaymentEvent:
    """An event as the protocols build them: key per event, trade_key per order."""
    return PaymentEvent(
        kind=kind, key=f"{kind}:2021000000000001:{out_trade_no}{suffix}",
        trade_key=f"2021000000000001:{out_trade_no}", out_trade_no=out_trade_no, trade_no=f"2024{out_trade_no}",
        trade_status="TRADE_SUCCESS", total_amount=Decimal("9.90"), refund_fee=None, out_biz_no="",
        notify_id=notify_id, gmt_payment=None, gmt_refund=None, app_id="2021000000000001",
        seller_id="2088000000000001",
        raw=raw if raw is not None else {"out_trade_no": out_trade_no, "subject": "测试商品", "notify_id": notify_id},
    )


PAID = event("T1")
REFUND = event("T1", "refunded", suffix=":R1")  # another event of the same trade
OTHER_TRADE = event("T2")
BODY = "out_trade_no=T1&subject=测试商品".encode("gbk")
