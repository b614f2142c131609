"""Quart (ASGI, Flask-shaped): the middleware wraps ``app.asgi_app`` like any ASGI callable."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import pytest

from conftest import notify_fields, signed_body

quart = pytest.importorskip("quart", reason="quart is in the test extra")


def test_quart_app_gets_pay_helper_and_notify_is_answered(make_alipay, keys):
    alipay = make_alipay(orders={"Q1": "9.90"})
    calls = []

    @alipay.on_paid
    async def paid(event):
        calls.append(event.out_trade_no)

    app = quart.Quart(__name__)

    @app.get("/buy")
    async def buy():
        return quart.request.scope["alipay"].page_pay_url(out_trade_no="Q1", total_amount=Decimal("9.90"),
                                                           subject="Tea")

    app.asgi_app = alipay.asgi(app.asgi_app)

    async def journey():
        client = app.test_client()
        response = await client.get("/buy")
        url = (await response.get_data()).decode()
        notify = await client.post("/alipay/notify", data=signed_body(notify_fields("Q1"), keys.alipay),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        return url, notify.status_code, await notify.get_data()

    url, status, body = asyncio.run(journey())
    assert dict(parse_qsl(urlsplit(url).query))["method"] == "alipay.trade.page.pay"
    assert (status, body) == (200, b"success")
    assert calls == ["Q1"]
