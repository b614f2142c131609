"""A small but real shop on Flask: orders in SQLite, paid through Alipay's page pay, refunded through its API.

    python examples/demo.py              # demo mode: no account, a local Alipay simulator, one machine
    python examples/flask_shop.py        # with ALIPAY_APP_ID etc. set: against Alipay's sandbox (or live)

The journey: the product page's Pay button POSTs /buy, which creates an order and redirects the
browser to a signed Alipay pay URL. Alipay sends a signed notification to /alipay/notify (answered by the
middleware, which calls ``on_paid`` exactly once) and brings the buyer back to /alipay/return (verified
by the middleware, rendered here). The order page shows the status from our own table. Its Refund button
calls Alipay's refund API; the order turns "refunded" when Alipay's refund notification arrives
(``on_refunded``), not when the API says yes.

Against the real sandbox, Alipay must reach /alipay/notify from the internet: set ALIPAY_NOTIFY_URL and
ALIPAY_RETURN_URL to the shop's public address (a tunnel's, say), or list its host name in
ALIPAY_ALLOWED_HOSTS to have them derived from the requests to it. Configuration: see ``shop_core.py``.
"""

from __future__ import annotations

import logging
import os
from decimal import Decimal

from flask import Flask, abort, redirect, request
from werkzeug.wrappers import Response

import pages
import shop_core
from alipay_middleware import Alipay, PaymentEvent, ReturnResult, UntrustedHost
from shop_core import PENDING, PRODUCTS, OrderStore, ShopSettings, settings_from_env

log = logging.getLogger("flask_shop")


def create_app(settings: ShopSettings) -> Flask:
    store = OrderStore(settings.database)
    alipay = Alipay(settings.config, ledger=settings.ledger, allowed_hosts=settings.allowed_hosts,
                    confirm_returns=settings.confirm_returns)

    # -- the middleware's hooks: the only places where Alipay's word changes our orders --

    @alipay.order_amount
    def order_amount(out_trade_no: str) -> Decimal | None:
        # The middleware refuses (409) a notification for an order we do not have (None) or whose
        # total_amount differs from ours, before any hook runs.
        return store.amount(out_trade_no)

    @alipay.on_paid
    def paid(event: PaymentEvent) -> None:
        if store.mark_paid(event.out_trade_no, event.trade_no, event.gmt_payment):
            log.info("order %s paid (Alipay trade %s)", event.out_trade_no, event.trade_no)

    @alipay.on_closed
    def closed(event: PaymentEvent) -> None:
        store.mark_closed(event.out_trade_no)

    @alipay.on_refunded
    def refunded(event: PaymentEvent) -> None:
        # Once per refund request (out_biz_no is our out_request_no); refund_fee is the trade's total.
        store.mark_refunded(event.out_trade_no, event.out_biz_no, event.refund_fee)
        log.info("order %s refund %s arrived (total refunded %s)", event.out_trade_no, event.out_biz_no,
                 event.refund_fee)

    # -- pages --

    app = Flask(__name__)
    app.extensions["alipay"] = alipay  # so whoever runs the app can close it (demo.py, tests)
    app.extensions["orders"] = store

    @app.get("/")
    def index() -> str:
        return pages.index_page(PRODUCTS.values(), store.recent(), demo=settings.demo)

    @app.post("/buy")
    def buy() -> Response:
        product = PRODUCTS.get(request.form.get("product", ""))
        if product is None:
            abort(400, "no such product")
        order = store.create(product)
        return pay_redirect(order.out_trade_no)

    @app.post("/orders/<out_trade_no>/pay")
    def pay_again(out_trade_no: str) -> Response:
        # An abandoned checkout can be resumed: Alipay accepts the same out_trade_no and amount again.
        return pay_redirect(out_trade_no)

    def pay_redirect(out_trade_no: str) -> Response:
        order = store.get(out_trade_no)
        if order is None:
            abort(404)
        if order.status != PENDING:
            return redirect(pages.order_path(out_trade_no), 303)
        # environ["alipay"] is the middleware's pay helper: a signed GET URL for alipay.trade.page.pay,
        # with notify_url and return_url from the configuration, or derived from this request when its
        # Host is loopback or an allowed host (else UntrustedHost, answered below).
        url = request.environ["alipay"].page_pay_url(
            out_trade_no=order.out_trade_no, total_amount=order.amount, subject=order.subject)
        return redirect(url, 303)

    @app.errorhandler(UntrustedHost)
    def untrusted_host(exc: UntrustedHost) -> tuple[str, int]:
        log.warning("no payment started: %s", exc)
        return pages.untrusted_host_page(demo=settings.demo), 400

    @app.get("/orders/<out_trade_no>")
    def order_page(out_trade_no: str, error: str | None = None) -> str:
        found = store.with_refunds(out_trade_no)
        if found is None:
            abort(404)
        return pages.order_page(*found, demo=settings.demo, error=error)

    @app.post("/orders/<out_trade_no>/refund")
    def refund(out_trade_no: str) -> Response | tuple[str, int]:
        if store.get(out_trade_no) is None:
            abort(404)
        # A blocking call to Alipay's gateway (a few seconds at worst). Its outcome, whatever it is, is
        # written on the refund's row; only the buyer's own mistakes come back here.
        error = shop_core.refund(store, alipay.client, out_trade_no, request.form.get("amount", ""))
        if error is not None:
            return order_page(out_trade_no, error), 400
        return redirect(pages.order_path(out_trade_no), 303)  # a reload then does not refund again

    @app.get(alipay.return_path)
    def alipay_return() -> str:
        # The middleware verified the query before we got here: a ReturnResult, or None when the
        # signature (or the app id / seller) does not check out.
        result: ReturnResult | None = request.environ.get("alipay.return")
        order = store.get(result.out_trade_no) if result is not None else None
        return pages.back_from_alipay(result, order, demo=settings.demo)

    # The middleware wraps Flask's WSGI app: it answers /alipay/notify itself and hands every other
    # request on with environ["alipay"] (and environ["alipay.return"] on the return path).
    app.wsgi_app = alipay.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


def main() -> None:
    """Serve a real (sandbox or live) shop with Flask's development server."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = create_app(settings_from_env())  # exits with a pointer to the demo when ALIPAY_APP_ID is unset
    try:
        app.run(host=os.environ.get("SHOP_HOST", "127.0.0.1"), port=int(os.environ.get("SHOP_PORT", "8000")),
                threaded=True)
    finally:
        app.extensions["alipay"].close()


if __name__ == "__main__":
    main()
