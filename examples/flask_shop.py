"""A small but real shop on Flask: orders in SQLite, paid through Alipay's page pay.

    python examples/demo.py              # demo mode: no account, a stand-in checkout, one machine
    python examples/flask_shop.py        # with ALIPAY_APP_ID etc. set: against Alipay's sandbox (or live)

The journey: the product page's Pay button POSTs /buy, which creates an order and redirects the
browser to a signed Alipay pay URL. Alipay sends a signed notification to /alipay/notify (answered by the
middleware, which calls ``on_paid`` exactly once) and brings the buyer back to /alipay/return (verified
by the middleware, rendered here). The order page shows the status from our own table.

Against the real sandbox, Alipay must reach /alipay/notify from the internet: browse the shop through a
tunnel (the callback URLs are derived from the request's host) or set ALIPAY_NOTIFY_URL and
ALIPAY_RETURN_URL. Configuration: see ``shop_core.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, abort, redirect, render_template_string, request, url_for
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

import demo_gateway
from alipay_middleware import Alipay, PaymentEvent, ReturnResult
from shop_core import PENDING, PRODUCTS, OrderStore, ShopSettings, settings_from_env

log = logging.getLogger("flask_shop")

# Templates are strings here to keep the example in one file. render_template_string autoescapes every
# {{ value }}, so order numbers and subjects from the database or the query string cannot inject markup.
_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title>
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
.demo{background:#fff3cd;border:1px solid #d4a017;padding:.5rem 1rem}
.paid{color:#0a7d28}.pending{color:#a66300}.closed{color:#777}td,th{padding:.2rem .6rem;text-align:left}</style>
</head><body>
{% if demo %}<p class="demo"><strong>Demo mode.</strong> Payments go to a stand-in checkout served by this
process; no Alipay account is involved and no money moves.</p>{% endif %}
<h1>{{ title }}</h1>
"""
_FOOT = '<p><a href="{{ url_for("index") }}">Shop</a></p></body></html>'

INDEX = _HEAD + """
{% for product in products %}
<form method="post" action="{{ url_for('buy') }}">
  <input type="hidden" name="product" value="{{ product.id }}">
  <p>{{ product.name }}: ¥{{ product.price }} <button type="submit">Pay with Alipay</button></p>
</form>
{% endfor %}
{% if orders %}<h2>Recent orders</h2><table>
{% for order in orders %}<tr><td><a href="{{ url_for('order_page', out_trade_no=order.out_trade_no) }}">
{{ order.out_trade_no }}</a></td><td>{{ order.subject }}</td><td>¥{{ order.amount }}</td>
<td class="{{ order.status }}">{{ order.status }}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>"""

ORDER = _HEAD + """
<table>
<tr><th>Order</th><td>{{ order.out_trade_no }}</td></tr>
<tr><th>Item</th><td>{{ order.subject }}</td></tr>
<tr><th>Amount</th><td>¥{{ order.amount }}</td></tr>
<tr><th>Status</th><td><strong id="status" class="{{ order.status }}">{{ order.status }}</strong></td></tr>
{% if order.trade_no %}<tr><th>Alipay trade</th><td>{{ order.trade_no }}</td></tr>{% endif %}
</table>
{% if order.status == "pending" %}
<p>Waiting for Alipay's confirmation; this page refreshes by itself.</p>
<form method="post" action="{{ url_for('pay_again', out_trade_no=order.out_trade_no) }}">
  <button type="submit">Pay now</button></form>
{% endif %}
""" + _FOOT

# data-state is for machines (the demo's --check): waiting | paid | closed | unverified | unknown
RETURN = _HEAD + """
{% if result is none %}
<p id="return" data-state="unverified">We could not verify this return from Alipay, so it tells us nothing.
If you paid, your order page turns "paid" as soon as Alipay confirms the payment to us directly.</p>
{% elif order is none %}
<p id="return" data-state="unknown">Alipay sent you back for order {{ result.out_trade_no }}, which this shop
does not know.</p>
{% elif order.status == "closed" %}
<p id="return" data-state="closed">Alipay closed this order unpaid (it timed out); nothing was charged.</p>
{% elif order.status == "paid" %}
<p id="return" data-state="paid">Thank you: your payment of ¥{{ order.amount }} for {{ order.subject }}
is confirmed.</p>
{% else %}
<p id="return" data-state="waiting">Welcome back. Your return from Alipay is verified; we are waiting for
Alipay's confirmation of the payment itself, which usually takes a few seconds.</p>
{% endif %}
{% if order is not none %}<p><a id="order-link" href="{{ url_for('order_page', out_trade_no=order.out_trade_no) }}">
Order {{ order.out_trade_no }}</a></p>{% endif %}
""" + _FOOT


def create_app(settings: ShopSettings) -> Flask:
    store = OrderStore(settings.database)
    alipay = Alipay(settings.config, ledger=settings.ledger)

    # -- the middleware's hooks: the only places where payments change our orders --

    @alipay.order_amount
    def order_amount(out_trade_no: str) -> Any:
        # The middleware refuses (409) a notification for an order we do not have (None) or whose
        # total_amount differs from ours, before on_paid ever runs.
        return store.amount(out_trade_no)

    @alipay.on_paid
    def paid(event: PaymentEvent) -> None:
        if store.mark_paid(event.out_trade_no, event.trade_no, event.gmt_payment):
            log.info("order %s paid (Alipay trade %s)", event.out_trade_no, event.trade_no)

    @alipay.on_closed
    def closed(event: PaymentEvent) -> None:
        store.mark_closed(event.out_trade_no)

    # -- pages --

    app = Flask(__name__)
    app.extensions["alipay"] = alipay  # so whoever runs the app can close it (demo.py, tests)
    app.extensions["orders"] = store

    def render(template: str, title: str, *, refresh: int | None = None, **context: Any) -> str:
        return render_template_string(template, title=title, demo=settings.demo, refresh=refresh, **context)

    @app.get("/")
    def index() -> str:
        return render(INDEX, "Tea shop", products=list(PRODUCTS.values()), orders=store.recent())

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
            return redirect(url_for("order_page", out_trade_no=out_trade_no), 303)
        # environ["alipay"] is the middleware's pay helper: a signed GET URL for alipay.trade.page.pay,
        # with notify_url and return_url derived from this request (or taken from the configuration).
        url = request.environ["alipay"].page_pay_url(
            out_trade_no=order.out_trade_no, total_amount=order.amount, subject=order.subject)
        return redirect(url, 303)

    @app.get("/orders/<out_trade_no>")
    def order_page(out_trade_no: str) -> str:
        order = store.get(out_trade_no)
        if order is None:
            abort(404)
        return render(ORDER, f"Order {order.out_trade_no}", order=order,
                      refresh=3 if order.status == PENDING else None)

    @app.get(alipay.return_path)
    def alipay_return() -> str:
        # The middleware verified the query before we got here: a ReturnResult, or None when the
        # signature (or the app id / seller) does not check out. Either way the query proves no payment;
        # only our table, written by on_paid, does.
        result: ReturnResult | None = request.environ.get("alipay.return")
        order = store.get(result.out_trade_no) if result is not None else None
        waiting = order is not None and order.status == PENDING
        return render(RETURN, "Back from Alipay", result=result, order=order, refresh=2 if waiting else None)

    # The middleware wraps Flask's WSGI app: it answers /alipay/notify itself and hands every other
    # request on with environ["alipay"] (and environ["alipay.return"] on the return path).
    app.wsgi_app = alipay.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    if settings.demo_gateway is not None:
        # Outside the middleware: the stand-in is "Alipay", not part of the shop.
        app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, {demo_gateway.MOUNT: settings.demo_gateway})
    return app


def main() -> None:
    """Serve with Flask's development server (threaded: the demo checkout calls this same server)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    host = os.environ.get("SHOP_HOST", demo_gateway.LOOPBACK_BIND)
    port = int(os.environ.get("SHOP_PORT", "8000"))
    if not os.environ.get("ALIPAY_APP_ID"):  # demo mode: checked before anything is generated
        demo_gateway.require_loopback(host)
    settings = settings_from_env(demo_origin=f"http://{demo_gateway.LOOPBACK_BIND}:{port}")
    app = create_app(settings)
    try:
        app.run(host=host, port=port, threaded=True)
    finally:
        app.extensions["alipay"].close()
        if settings.demo_gateway is not None:
            settings.demo_gateway.close()


if __name__ == "__main__":
    main()
