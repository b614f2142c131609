"""The simulator's HTML: checkout, error, result and admin pages. Every page says it is a simulator.

Stable selectors (the browser tests rely on them): ``#pay``, ``#cancel``, ``#timeout`` on the checkout
page (one form POSTing ``action=pay|cancel|timeout`` to ``/checkout/<trade_no>``), ``#error-code`` on
the error page, ``#faults`` (the form POSTing to ``/faults``) and ``#fault-<name>`` checkboxes on the
admin page (``#faults-saved`` after a save, ``#fault-<name>-help`` the line explaining each switch),
``#orders`` and ``#deliveries`` tables (paged: ``?page=N`` and ``?sent=N``, newest first, ``#orders-pages``
and ``#deliveries-pages`` the links). On the checkout page of a trade that is paid or closed, ``#trade-status``
and ``#back`` instead of the buttons. Times read ``YYYY-MM-DD HH:MM:SS+08:00`` (Beijing time, as Alipay's).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ..wire.form import CST
from .model import Delivery, Faults, GatewayError, SimTrade

BANNER = ("SIMULATOR: this is not Alipay. It moves no money; nothing here is a real payment.")
#: Rows per page of the admin page's tables.
PAGE_SIZE = 50

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
body.wide{max-width:none}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.5rem 1rem;font-weight:600}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .4rem;
text-align:left;vertical-align:top;white-space:nowrap}td.text{white-space:normal;min-width:10rem}
button{font-size:1rem;margin-right:.5rem;padding:.4rem 1rem}
.amount{font-size:2rem;font-weight:700}code{word-break:break-all}td code{word-break:normal}
.help{color:#555;font-size:.85rem;margin:0 0 .5rem 1.6rem}.saved{color:#155724;font-weight:600}
"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(moment: datetime | None) -> str:
    """``2026-11-26 14:03:05+08:00``: the date, the time and the offset (Beijing time)."""
    return moment.astimezone(CST).isoformat(sep=" ", timespec="seconds") if moment is not None else ""


def page(title: str, body: str, *, wide: bool = False) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)} (simulator)</title>'
            f'<meta name="robots" content="noindex"><style>{_STYLE}</style></head><body{" class=wide" if wide else ""}>'
            f'<p class="banner" id="simulator-banner">{e(BANNER)}</p><h1>{e(title)}</h1>{body}</body></html>\n')


def shop_url(trade: SimTrade) -> str | None:
    """The shop's home page (the origin of its return, quit or notify URL): where "back" goes."""
    for url in (trade.return_url, trade.quit_url, trade.notify_url):
        if url:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}/"
    return None


def _order_lines(trade: SimTrade, merchant_name: str) -> str:
    return f"""
<p>Merchant: <b id="merchant">{e(merchant_name)}</b></p>
<p>Order: <span id="subject">{e(trade.subject)}</span> (<code id="out-trade-no">{e(trade.out_trade_no)}</code>)</p>
<p class="amount">¥ <span id="amount">{e(f"{trade.total_amount:.2f}")}</span></p>"""


def checkout(trade: SimTrade, merchant_name: str) -> str:
    if trade.status != "WAIT_BUYER_PAY":
        return settled(trade, merchant_name)
    return page("Alipay checkout", f"""{_order_lines(trade, merchant_name)}
<form method="post" action="/checkout/{e(trade.trade_no)}">
  <button id="pay" name="action" value="pay" type="submit">Pay</button>
  <button id="cancel" name="action" value="cancel" type="submit">Cancel</button>
  <button id="timeout" name="action" value="timeout" type="submit">Let it time out</button>
</form>
<p>Trade number <code id="trade-no">{e(trade.trade_no)}</code>. Pay sends the notification to the shop and
takes you back to it; Cancel leaves the trade unpaid; Let it time out closes it (TRADE_CLOSED).</p>""")


def settled(trade: SimTrade, merchant_name: str, problem: GatewayError | None = None) -> str:
    """The checkout of a trade that is paid or closed: its state and a way back, no buttons."""
    paid = trade.paid_at is not None and trade.status != "WAIT_BUYER_PAY"
    what = ("was paid" + (f" on {when(trade.paid_at)}" if trade.paid_at else "")) if paid else \
        ("is closed" + (f" since {when(trade.closed_at)}" if trade.closed_at else ""))
    refused = (f'<p>错误代码 / error code: <code id="error-code">{e(problem.page_code)}</code> '
               f'(<span id="error-message">{e(problem.sub_msg)}</span>)</p>') if problem is not None else ""
    shop = shop_url(trade)
    back = f'<a id="back" href="{e(shop)}">Back to the shop</a> · ' if shop else ""
    return page("This trade cannot be paid" if problem is not None else "Alipay checkout", f"""{refused}
{_order_lines(trade, merchant_name)}
<p>This trade {e(what)}: <b id="trade-status">{e(trade.status)}</b>\
{f" (refunded ¥ {trade.refunded_amount:.2f})" if trade.refunded_amount else ""}.</p>
<p>Trade number <code id="trade-no">{e(trade.trade_no)}</code>.</p>
<p>{back}<a id="admin-link" href="/">The simulator's orders</a></p>""")


def error(exc: GatewayError) -> str:
    # Alipay's cashier answers a bad request with HTTP 200 and a page naming the error.
    detail = f' (<code id="error-sub-code">{e(exc.sub_code)}</code>)' if exc.page_code != exc.sub_code else ""
    return page("Something is wrong with this payment request", f"""
<p>错误代码 / error code: <code id="error-code">{e(exc.page_code)}</code>{detail}</p>
<p>错误原因 / reason: <span id="error-message">{e(exc.sub_msg or exc.msg)}</span></p>
<p>The shop sent a request the real gateway would refuse too.</p>""")


def result(title: str, message: str, trade: SimTrade | None = None, link: str | None = None) -> str:
    extra = f'<p>Trade <code id="trade-no">{e(trade.trade_no)}</code>: <b id="trade-status">{e(trade.status)}</b></p>' \
        if trade is not None else ""
    back = f'<p><a id="back" href="{e(link)}">Back to the shop</a></p>' if link else ""
    return page(title, f"<p id='result'>{e(message)}</p>{extra}{back}")


def _refund_mark(delivery: Delivery) -> str:
    return " (refund)" if delivery.fields.get("refund_fee") or delivery.fields.get("refund_status") else ""


T = TypeVar("T")


@dataclass(frozen=True)
class Paged(Generic[T]):
    """One page of a table: its rows (newest first), which page, and how many rows there are in all."""

    rows: Sequence[T]
    number: int
    total: int


def _pager(name: str, param: str, paged: Paged[Any], other: str) -> str:
    pages = max((paged.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    if pages == 1:
        return ""
    links = []
    if paged.number > 1:
        links.append(f'<a rel="prev" href="/?{param}={paged.number - 1}{other}">newer</a>')
    if paged.number < pages:
        links.append(f'<a rel="next" href="/?{param}={paged.number + 1}{other}">older</a>')
    return (f'<p id="{name}-pages">Page {paged.number} of {pages} ({PAGE_SIZE} a page, newest first) '
            + " · ".join(links) + "</p>")


def _saved_line(faults: Faults) -> str:
    on = [name.replace("_", " ") for name in Faults.names() if getattr(faults, name)]
    state = (", ".join(on) + (" is" if len(on) == 1 else " are") + " on; the others are off") if on \
        else "every fault is off"
    return f'<p id="faults-saved" class="saved" role="status">Saved: {e(state)}.</p>'


def admin(gateway_url: str, trades: Paged[SimTrade], deliveries: Paged[Delivery], delivered: int, faults: Faults,
          alipay_public_key: str, merchants: Iterable[tuple[str, str]], saved: bool = False) -> str:
    rows = "".join(
        f"<tr><td>{e(t.kind)}</td><td>{e(t.merchant_id)}</td><td><a href='/checkout/{e(t.trade_no)}'>"
        f"{e(t.out_trade_no)}</a></td><td><code>{e(t.trade_no)}</code></td><td class='text'>{e(t.subject)}</td>"
        f"<td>{e(f'{t.total_amount:.2f}')}</td><td>{e(t.status)}</td><td>{e(f'{t.refunded_amount:.2f}')}</td>"
        f"<td>{e(when(t.created_at))}</td></tr>"
        for t in trades.rows)
    sent = "".join(
        f"<tr><td>{e(when(d.at))}</td><td>{e(d.out_trade_no)}</td>"
        f"<td>{e(d.fields.get('trade_status', ''))}{_refund_mark(d)}</td><td><code>{e(d.notify_id)}</code></td>"
        f"<td>{d.attempt}</td><td>{e(d.copy)}</td><td>{e(d.url)}</td>"
        f"<td>{e(d.status if d.status is not None else '-')}</td>"
        f"<td class='text'><code>{e(d.answer[:80])}</code></td></tr>"
        for d in deliveries.rows)
    dropped = delivered - deliveries.total
    note = (f'<p id="deliveries-dropped">{dropped:,} older attempts were dropped: the log keeps the last '
            f'{deliveries.total:,}.</p>') if dropped > 0 else ""
    switches = "".join(
        f'<label><input type="checkbox" id="fault-{name}" name="{name}" value="on"'
        f'{" checked" if getattr(faults, name) else ""}> {e(name.replace("_", " "))}</label>'
        f'<p class="help" id="fault-{name}-help">{e(Faults.explain(name))}</p>'
        for name in Faults.names())
    known = "".join(f"<li><code>{e(ident)}</code> {e(name)}</li>" for ident, name in merchants) or "<li>none</li>"
    return page("Alipay simulator", f"""
<p>Gateway URL: <code id="gateway-url">{e(gateway_url)}</code></p>
<p>Registered merchants:</p><ul id="merchants">{known}</ul>
<details><summary>Alipay public key to configure (OpenApiConfig.alipay_public_key)</summary>
<pre id="alipay-public-key">{e(alipay_public_key)}</pre></details>
<h2>Faults</h2>
{_saved_line(faults) if saved else ""}
<form id="faults" method="post" action="/faults">{switches}<button id="save-faults" type="submit">Save</button></form>
<h2>Orders ({trades.total:,})</h2>
{_pager("orders", "page", trades, f"&sent={deliveries.number}" if deliveries.number > 1 else "")}
<div class="scroll"><table id="orders"><tr><th>kind</th><th>merchant</th><th>out_trade_no</th><th>trade_no</th>
<th>subject</th><th>amount</th><th>status</th><th>refunded</th><th>created</th></tr>{rows}</table></div>
<h2>Notifications sent ({delivered:,} attempts)</h2>
{note}{_pager("deliveries", "sent", deliveries, f"&page={trades.number}" if trades.number > 1 else "")}
<div class="scroll"><table id="deliveries"><tr><th>at</th><th>out_trade_no</th><th>status</th><th>notify_id</th>
<th>attempt</th><th>copy</th><th>url</th><th>HTTP</th><th>answer</th></tr>{sent}</table></div>""", wide=True)
