"""The simulator's HTML: checkout, error, result and admin pages. Every page says it is a simulator.

Stable selectors (the browser tests rely on them): ``#pay``, ``#cancel``, ``#timeout`` on the checkout
page (one form POSTing ``action=pay|cancel|timeout`` to ``/checkout/<trade_no>``), ``#error-code`` on
the error page, ``#faults`` (the form POSTing to ``/faults``) and ``#fault-<name>`` checkboxes on the
admin page (``#faults-saved`` after a save), ``#orders`` and ``#deliveries`` tables.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from .model import Delivery, Faults, GatewayError, SimTrade

BANNER = ("SIMULATOR: this is not Alipay. It moves no money; nothing here is a real payment.")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.5rem 1rem;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .4rem;
text-align:left;vertical-align:top}button{font-size:1rem;margin-right:.5rem;padding:.4rem 1rem}
.amount{font-size:2rem;font-weight:700}code{word-break:break-all}
"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)} (simulator)</title>'
            f'<meta name="robots" content="noindex"><style>{_STYLE}</style></head><body>'
            f'<p class="banner" id="simulator-banner">{e(BANNER)}</p><h1>{e(title)}</h1>{body}</body></html>\n')


def checkout(trade: SimTrade, merchant_name: str) -> str:
    state = ""
    if trade.status != "WAIT_BUYER_PAY":
        state = f'<p id="trade-status">This trade is already <b>{e(trade.status)}</b>.</p>'
    return page("Alipay checkout", f"""
<p>Merchant: <b id="merchant">{e(merchant_name)}</b></p>
<p>Order: <span id="subject">{e(trade.subject)}</span> (<code id="out-trade-no">{e(trade.out_trade_no)}</code>)</p>
<p class="amount">¥ <span id="amount">{e(f"{trade.total_amount:.2f}")}</span></p>
{state}
<form method="post" action="/checkout/{e(trade.trade_no)}">
  <button id="pay" name="action" value="pay" type="submit">Pay</button>
  <button id="cancel" name="action" value="cancel" type="submit">Cancel</button>
  <button id="timeout" name="action" value="timeout" type="submit">Let it time out</button>
</form>
<p>Trade number <code id="trade-no">{e(trade.trade_no)}</code>. Pay sends the notification to the shop and
takes you back to it; Cancel leaves the trade unpaid; Let it time out closes it (TRADE_CLOSED).</p>""")


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


def admin(gateway_url: str, trades: Iterable[SimTrade], deliveries: Iterable[Delivery], faults: Faults,
          alipay_public_key: str, merchants: Iterable[tuple[str, str]], saved: bool = False) -> str:
    rows = "".join(
        f"<tr><td>{e(t.kind)}</td><td>{e(t.merchant_id)}</td><td><a href='/checkout/{e(t.trade_no)}'>"
        f"{e(t.out_trade_no)}</a></td><td><code>{e(t.trade_no)}</code></td><td>{e(t.subject)}</td>"
        f"<td>{e(f'{t.total_amount:.2f}')}</td><td>{e(t.status)}</td><td>{e(f'{t.refunded_amount:.2f}')}</td>"
        f"<td>{e(t.created_at.strftime('%Y-%m-%d %H:%M:%S'))}</td></tr>"
        for t in reversed(list(trades)))
    sent = "".join(
        f"<tr><td>{e(d.at.strftime('%H:%M:%S'))}</td><td>{e(d.out_trade_no)}</td>"
        f"<td>{e(d.fields.get('trade_status', ''))}{_refund_mark(d)}</td><td><code>{e(d.notify_id)}</code></td>"
        f"<td>{d.attempt}</td><td>{e(d.copy)}</td><td>{e(d.url)}</td>"
        f"<td>{e(d.status if d.status is not None else '-')}</td><td><code>{e(d.answer[:80])}</code></td></tr>"
        for d in reversed(list(deliveries)))
    switches = "".join(
        f'<label><input type="checkbox" id="fault-{name}" name="{name}" value="on"'
        f'{" checked" if getattr(faults, name) else ""}> {e(name.replace("_", " "))}</label><br>'
        for name in Faults.names())
    known = "".join(f"<li><code>{e(ident)}</code> {e(name)}</li>" for ident, name in merchants) or "<li>none</li>"
    return page("Alipay simulator", f"""
<p>Gateway URL: <code id="gateway-url">{e(gateway_url)}</code></p>
<p>Registered merchants:</p><ul id="merchants">{known}</ul>
<details><summary>Alipay public key to configure (OpenApiConfig.alipay_public_key)</summary>
<pre id="alipay-public-key">{e(alipay_public_key)}</pre></details>
<h2>Faults</h2>
<form id="faults" method="post" action="/faults">{switches}<button id="save-faults" type="submit">Save</button></form>
{'<p id="faults-saved">Saved.</p>' if saved else ""}
<h2>Orders</h2>
<table id="orders"><tr><th>kind</th><th>merchant</th><th>out_trade_no</th><th>trade_no</th><th>subject</th>
<th>amount</th><th>status</th><th>refunded</th><th>created (UTC+8)</th></tr>{rows}</table>
<h2>Notifications sent</h2>
<table id="deliveries"><tr><th>at</th><th>out_trade_no</th><th>status</th><th>notify_id</th><th>attempt</th>
<th>copy</th><th>url</th><th>HTTP</th><th>answer</th></tr>{sent}</table>""")
