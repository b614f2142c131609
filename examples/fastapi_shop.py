"""The same shop on FastAPI (ASGI): the same orders table and pages, async hooks.

    python examples/demo.py --shop fastapi   # demo mode: no account, a local Alipay simulator
    ALIPAY_APP_ID=... ALIPAY_APP_PRIVATE_KEY=... ALIPAY_PUBLIC_KEY=... python examples/fastapi_shop.py
    # or: uvicorn --app-dir examples --factory fastapi_shop:app_from_env

The variables are those of ``shop_core.py``; the journey is the one described in ``flask_shop.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

import pages
import shop_core
from alipay_middleware import Alipay, AlipayASGIMiddleware, PaymentEvent, ReturnResult, UntrustedHost
from shop_core import PENDING, PRODUCTS, OrderStore, ShopSettings, settings_from_env

log = logging.getLogger("fastapi_shop")


def create_app(settings: ShopSettings) -> FastAPI:
    store = OrderStore(settings.database)
    alipay = Alipay(settings.config, ledger=settings.ledger, allowed_hosts=settings.allowed_hosts,
                    confirm_returns=settings.confirm_returns)

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

    @alipay.on_refunded
    async def refunded(event: PaymentEvent) -> None:
        await asyncio.to_thread(store.mark_refunded, event.out_trade_no, event.out_biz_no, event.refund_fee)

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

    async def form(request: Request) -> dict[str, str]:
        # Parsed by hand: FastAPI's Form() needs the python-multipart package for one field.
        return {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        orders = await asyncio.to_thread(store.recent)
        return pages.index_page(PRODUCTS.values(), orders, demo=settings.demo)

    @app.post("/buy")
    async def buy(request: Request) -> RedirectResponse:
        product = PRODUCTS.get((await form(request)).get("product", ""))
        if product is None:
            raise HTTPException(400, "no such product")
        order = await asyncio.to_thread(store.create, product)
        return await pay_redirect(request, order.out_trade_no)

    @app.post("/orders/{out_trade_no}/pay")
    async def pay_again(request: Request, out_trade_no: str) -> RedirectResponse:
        return await pay_redirect(request, out_trade_no)

    async def pay_redirect(request: Request, out_trade_no: str) -> RedirectResponse:
        order = await asyncio.to_thread(store.get, out_trade_no)
        if order is None:
            raise HTTPException(404)
        if order.status != PENDING:
            return RedirectResponse(pages.order_path(out_trade_no), status_code=303)
        url = request.scope["alipay"].page_pay_url(
            out_trade_no=order.out_trade_no, total_amount=order.amount, subject=order.subject)
        return RedirectResponse(url, status_code=303)

    @app.exception_handler(UntrustedHost)
    async def untrusted_host(request: Request, exc: Exception) -> HTMLResponse:
        # The pay helper would not derive callback URLs from this request's Host (see flask_shop.py).
        log.warning("no payment started: %s", exc)
        return HTMLResponse(pages.untrusted_host_page(demo=settings.demo), 400)

    async def render_order(out_trade_no: str, error: str | None = None, status: int = 200) -> HTMLResponse:
        found = await asyncio.to_thread(store.with_refunds, out_trade_no)
        if found is None:
            raise HTTPException(404)
        return HTMLResponse(pages.order_page(*found, demo=settings.demo, error=error), status)

    @app.get("/orders/{out_trade_no}")
    async def order_page(out_trade_no: str) -> HTMLResponse:
        return await render_order(out_trade_no)

    @app.post("/orders/{out_trade_no}/refund", response_model=None)
    async def refund(request: Request, out_trade_no: str) -> HTMLResponse | RedirectResponse:
        amount = (await form(request)).get("amount", "")
        # The refund logic is the Flask shop's (shop_core.refund, sync): run in a thread, it blocks no
        # other request. Written for async from scratch, it would await alipay.aclient.refund(...).
        error = await asyncio.to_thread(shop_core.refund, store, alipay.client, out_trade_no, amount)
        if error is not None:
            return await render_order(out_trade_no, error, 400)
        return RedirectResponse(pages.order_path(out_trade_no), status_code=303)

    @app.get(alipay.return_path, response_class=HTMLResponse)
    async def alipay_return(request: Request) -> str:
        result: ReturnResult | None = request.scope.get("alipay.return")
        order = None if result is None else await asyncio.to_thread(store.get, result.out_trade_no)
        return pages.back_from_alipay(result, order, demo=settings.demo)

    return app


def app_from_env() -> FastAPI:
    return create_app(settings_from_env())  # exits with a pointer to the demo when ALIPAY_APP_ID is unset


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app_from_env(), host=os.environ.get("SHOP_HOST", "127.0.0.1"),
                port=int(os.environ.get("SHOP_PORT", "8000")))
