"""The shop's pages as plain HTML strings, the same for the Flask and the FastAPI shop.

Every value from the database or the request goes through ``esc`` where it is put in. Elements with an
``id`` (``#status``, ``#refund``, ``data-state``) are what the demo's ``--check`` and the browser test
read; keep them when you restyle.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from html import escape as esc
from urllib.parse import quote

from alipay_middleware import ReturnResult
from shop_core import ACCEPTED, OPEN_STATES, PAID, PENDING, REFUNDED, Order, Product, Refund, left_to_refund

_STYLE = """body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}
.demo{background:#fff3cd;border:1px solid #d4a017;padding:.5rem 1rem}.error{color:#b00020}form{margin:.8rem 0}
.paid{color:#0a7d28}.pending{color:#a66300}.closed,.refunded{color:#777}td,th{padding:.2rem .6rem;text-align:left}"""

DEMO_BANNER = ('<p class="demo"><strong>Demo mode.</strong> Payments go to a local Alipay simulator (another '
               "server on this machine); no Alipay account is involved and no money moves.</p>")


def order_path(out_trade_no: str) -> str:
    return f"/orders/{quote(out_trade_no, safe='')}"


def page(title: str, body: str, *, demo: bool, refresh: int | None = None) -> str:
    """``body`` is markup whose values were escaped where they were put in."""
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>{meta}'
            f"<style>{_STYLE}</style></head><body>{DEMO_BANNER if demo else ''}<h1>{esc(title)}</h1>"
            f'{body}<p><a href="/">Shop</a></p></body></html>')


def index_page(products: Iterable[Product], orders: Iterable[Order], *, demo: bool) -> str:
    body = "".join(
        f'<form method="post" action="/buy"><input type="hidden" name="product" value="{esc(p.id)}">'
        f"<p>{esc(p.name)}: ¥{p.price} <button type=\"submit\">Pay with Alipay</button></p></form>"
        for p in products)
    rows = "".join(
        f'<tr><td><a href="{order_path(o.out_trade_no)}">{esc(o.out_trade_no)}</a></td><td>{esc(o.subject)}</td>'
        f'<td>¥{o.amount}</td><td class="{esc(o.status)}">{esc(o.status)}</td></tr>' for o in orders)
    if rows:
        body += f"<h2>Recent orders</h2><table>{rows}</table>"
    return page("Tea shop", body, demo=demo)


def order_page(order: Order, refunds: list[Refund], *, demo: bool, error: str | None = None) -> str:
    path = order_path(order.out_trade_no)
    rows = [("Order", esc(order.out_trade_no)), ("Item", esc(order.subject)), ("Amount", f"¥{order.amount}"),
            ("Status", f'<strong id="status" class="{esc(order.status)}">{esc(order.status)}</strong>')]
    if order.trade_no:
        rows.append(("Alipay trade", esc(order.trade_no)))
    if order.refunded_amount:
        part = "all of it" if order.refunded_amount >= order.amount else "partial refund"
        rows.append(("Refunded", f'<span id="refunded">¥{order.refunded_amount} of ¥{order.amount} ({part})</span>'))
    body = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    # Refreshed while Alipay still owes us a notification: the payment's, or an unsettled refund's.
    waiting = order.status == PENDING or any(r.state in (ACCEPTED, *OPEN_STATES) for r in refunds)

    if order.status == PENDING:
        body += ("<p>Waiting for Alipay's confirmation; this page refreshes by itself.</p>"
                 f'<form method="post" action="{path}/pay"><button type="submit">Pay now</button></form>')
    if error:
        body += f'<p id="refund-error" class="error">{esc(error)}</p>'
    if refunds:
        body += '<h2>Refunds</h2><table id="refunds">' + "".join(
            f'<tr class="refund" data-state="{esc(r.state)}"><td>{esc(r.out_request_no)}</td><td>¥{r.amount}</td>'
            f"<td>{esc(r.state)}</td><td>{esc(r.message)}</td></tr>" for r in refunds) + "</table>"
    body += _refund_form(order, refunds, path)
    return page(f"Order {order.out_trade_no}", body, demo=demo, refresh=2 if waiting else None)


def _refund_form(order: Order, refunds: list[Refund], path: str) -> str:
    if order.status not in (PAID, REFUNDED):
        return ""
    unfinished = next((r for r in refunds if r.state in OPEN_STATES), None)
    if unfinished is not None:  # only ever retried as it was: same number, same amount
        return (f'<form method="post" action="{path}/refund"><input type="hidden" name="amount" '
                f'value="{unfinished.amount}"><button id="refund" type="submit">Retry refund '
                f"{esc(unfinished.out_request_no)} (¥{unfinished.amount})</button></form>")
    if any(r.state == ACCEPTED for r in refunds):
        return "<p>A refund is on its way; this page refreshes by itself.</p>"
    left = left_to_refund(order, refunds)
    if left <= Decimal(0):
        return ""
    return (f'<form method="post" action="{path}/refund"><label>Refund ¥ <input id="refund-amount" '
            f'name="amount" value="{left}" size="8"></label> <button id="refund" type="submit">Refund</button>'
            "</form>")


def back_from_alipay(result: ReturnResult | None, order: Order | None, *, demo: bool) -> str:
    """The return page. The query proves no payment: only our table, written by ``on_paid``, does."""
    # data-state is for machines (the demo's --check): waiting | paid | closed | unverified | unknown
    if result is None:
        state, text = "unverified", ("We could not verify this return from Alipay, so it tells us nothing. If "
                                     'you paid, your order page turns "paid" as soon as Alipay confirms the '
                                     "payment to us directly.")
    elif order is None:
        state, text = "unknown", f"Alipay sent you back for order {result.out_trade_no}, which this shop does not know."
    elif order.status == PENDING:
        state, text = "waiting", ("Welcome back. Your return from Alipay is verified; we are waiting for Alipay's "
                                  "confirmation of the payment itself, which usually takes a few seconds.")
    elif order.status == PAID or order.status == REFUNDED:
        state, text = "paid", f"Thank you: your payment of ¥{order.amount} for {order.subject} is confirmed."
    else:
        state, text = "closed", "Alipay closed this order unpaid (it timed out); nothing was charged."
    body = f'<p id="return" data-state="{state}">{esc(text)}</p>'
    if order is not None:
        body += (f'<p><a id="order-link" href="{order_path(order.out_trade_no)}">'
                 f"Order {esc(order.out_trade_no)}</a></p>")
    return page("Back from Alipay", body, demo=demo, refresh=2 if state == "waiting" else None)


def untrusted_host_page(*, demo: bool) -> str:
    """The pay views' answer when the middleware will not build callback URLs from this request's Host."""
    text = ("This shop cannot tell Alipay where to send the payment notification: the address you used is "
            "not one of its configured host names. Its operator sets ALIPAY_NOTIFY_URL and "
            "ALIPAY_RETURN_URL, or lists the shop's host names in ALIPAY_ALLOWED_HOSTS.")
    return page("Cannot start the payment", f'<p id="untrusted-host">{esc(text)}</p>', demo=demo)
