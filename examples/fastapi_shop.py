"""The shop's essentials on FastAPI (ASGI): the same orders table, async hooks.

    ALIPAY_APP_ID=... ALIPAY_APP_PRIVATE_KEY=... ALIPAY_PUBLIC_KEY=... python examples/fastapi_shop.py
    # or: uvicorn --app-dir examples --factory fastapi_shop:app_from_env

Needs a real (sandbox) app: the variables are those of ``shop_core.py``. There is no demo mode here,
because the stand-in checkout is a WSGI app and mounting WSGI inside Starlette needs
``starlette.middleware.wsgi`` (deprecated, warns on import) or the extra ``a2wsgi`` package. Use
``python examples/demo.py`` (the Flask shop) to try the journey without an account.
"""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from alipay_middleware import Alipay, AlipayASGIMiddleware, PaymentEvent, ReturnResult
from shop_core import CLOSED, PAID, PRODUCTS, Order, OrderStore, ShopSettings, settings_from_env


def create_app(settings: ShopSettings) -> FastAPI:
    store = OrderStore(settings.database)
    alipay = Alipay(settings.config, ledger=settings.ledger)

    # Async hooks run on the event loop, so the blocking SQLite calls go to a thread: awaiting them
    # keeps every other request moving while a notification is processed.
    @alipay.order_amount
    async def order_amount(out_trade_no: str) -> Decimal | None:
        return await asyncio.to_thread(store.amount, out_trade_no)

    @alipay.on_paid
    async def paid(event: PaymentEvent) -> None:
        await asyncio.to_thread(store.mark_paid, event.out_trade_no, event.trade_no, event.gmt_payment)

    @alipay.on_closed
    async def closed(event: PaymentEvent) -> None:
        await asyncio.to_thread(store.mark_closed, event.out_trade_no)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        alipay.close()  # the middleware's thread pool and ledger connections

    app = FastAPI(lifespan=lifespan)
    app.state.alipay = alipay
    app.state.orders = store
    # Answers /alipay/notify itself; every other request gets scope["alipay"] (the pay helper), and
    # the return path also scope["alipay.return"] (the verified return, or None).
    app.add_middleware(AlipayASGIMiddleware, alipay=alipay)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        buttons = "".join(
            f'<form method="post" action="/buy"><input type="hidden" name="product" value="{html.escape(p.id)}">'
            f"<p>{html.escape(p.name)}: ¥{p.price} <button>Pay with Alipay</button></p></form>"
            for p in PRODUCTS.values())
        return _page("Tea shop", buttons)

    @app.post("/buy")
    async def buy(request: Request) -> RedirectResponse:
        # Parsed by hand: FastAPI's Form() needs the python-multipart package for one field.
        form = parse_qs((await request.body()).decode("utf-8"))
        product = PRODUCTS.get(form.get("product", [""])[0])
        if product is None:
            raise HTTPException(400, "no such product")
        order = await asyncio.to_thread(store.create, product)
        url = request.scope["alipay"].page_pay_url(
            out_trade_no=order.out_trade_no, total_amount=order.amount, subject=order.subject)
        return RedirectResponse(url, status_code=303)

    @app.get("/orders/{out_trade_no}", response_class=HTMLResponse)
    async def order_page(out_trade_no: str) -> str:
        order = await asyncio.to_thread(store.get, out_trade_no)
        if order is None:
            raise HTTPException(404)
        return _page(f"Order {order.out_trade_no}", _order_table(order))

    @app.get(alipay.return_path, response_class=HTMLResponse)
    async def alipay_return(request: Request) -> str:
        result: ReturnResult | None = request.scope.get("alipay.return")
        if result is None:
            return _page("Back from Alipay", '<p id="return" data-state="unverified">We could not verify this '
                         "return; your order page shows the status Alipay confirms to us directly.</p>")
        order = await asyncio.to_thread(store.get, result.out_trade_no)
        if order is None:
            return _page("Back from Alipay", '<p id="return" data-state="unknown">Unknown order.</p>')
        state, text = {
            PAID: ("paid", "Payment confirmed. Thank you!"),
            CLOSED: ("closed", "Alipay closed this order unpaid; nothing was charged."),
        }.get(order.status, ("waiting", "Verified; waiting for Alipay's confirmation of the payment."))
        link = html.escape(f"/orders/{quote(order.out_trade_no)}")
        return _page("Back from Alipay", f'<p id="return" data-state="{state}">{text}</p>'
                     f'<p><a id="order-link" href="{link}">Order {html.escape(order.out_trade_no)}</a></p>')

    return app


def _order_table(order: Order) -> str:
    return (f"<p>{html.escape(order.subject)}, ¥{order.amount}: "
            f'<strong id="status">{html.escape(order.status)}</strong></p>')


def _page(title: str, body: str) -> str:
    """``body`` is markup whose values were escaped where they were put in."""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}<p><a href=\"/\">Shop</a></p></body></html>")


def app_from_env() -> FastAPI:
    if not os.environ.get("ALIPAY_APP_ID"):
        raise SystemExit("fastapi_shop needs ALIPAY_APP_ID, ALIPAY_APP_PRIVATE_KEY and ALIPAY_PUBLIC_KEY "
                         "(see shop_core.py); for the no-account demo run: python examples/demo.py")
    return create_app(settings_from_env())


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app_from_env(), host=os.environ.get("SHOP_HOST", "127.0.0.1"),
                port=int(os.environ.get("SHOP_PORT", "8000")))
