"""A STAND-IN for Alipay's checkout, for the demo only. It is NOT Alipay and moves no money.

It lets ``python examples/demo.py`` run the whole payment journey on one laptop with no Alipay account
and no server on the internet. Mounted inside the demo shop at ``/demo-alipay`` it plays Alipay's part:

* ``/demo-alipay/gateway.do`` receives the shop's signed ``alipay.trade.page.pay`` request, verifies it with
  the *app's* public key and shows the subject and the amount with "Pay" and "Cancel" buttons;
* "Pay" sends a ``trade_status_sync`` notification signed with the demo *Alipay* private key to the
  request's ``notify_url`` (server to server, from a background thread), then sends the browser to the
  request's ``return_url`` with a signed return query, as Alipay does;
* "Cancel" sends nothing: the order simply stays unpaid.

Deliberately independent of ``alipay_middleware``: the signing code here is written from the protocol
description, not imported, so the demo cross-checks the library instead of agreeing with itself.

It answers only loopback clients and only calls back loopback URLs, and the demo refuses to bind to
anything but 127.0.0.1. It is a placeholder: a later version of the project replaces it with a full
simulator, and this module can then be deleted with the three lines that mount it.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

log = logging.getLogger("demo-alipay")

#: Where the demo shop mounts this app, and the gateway URL's path below it.
MOUNT = "/demo-alipay"
GATEWAY_PATH = "/gateway.do"

#: The identities the demo shop is configured with (16-digit app id, 2088... seller id).
DEMO_APP_ID = "2021000000000000"
DEMO_SELLER_ID = "2088000000000000"
DEMO_BUYER_ID = "2088000000000009"

#: The only interface the demo may listen on. Not "localhost" (it may resolve to ::1 or elsewhere) and
#: never 0.0.0.0: the stand-in pays anything it is asked to, so nobody but this machine may reach it.
LOOPBACK_BIND = "127.0.0.1"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Alipay's clocks run on Beijing time (UTC+8, no daylight saving).
CST = timezone(timedelta(hours=8))
_TIME = "%Y-%m-%d %H:%M:%S"
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,2})?$")
_METHODS = {  # the pay request methods the stand-in understands -> (product_code, return method name)
    "alipay.trade.page.pay": ("FAST_INSTANT_TRADE_PAY", "alipay.trade.page.pay.return"),
    "alipay.trade.wap.pay": ("QUICK_WAP_WAY", "alipay.trade.wap.pay.return"),
}
#: Seconds to wait before each notification attempt. Real Alipay retries for ~25 hours until the
#: answer is the 7 bytes ``success``; a demo gives up after a few seconds and says so in the log.
_NOTIFY_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)


def require_loopback(host: str) -> None:
    """Refuse to serve the demo on anything but 127.0.0.1."""
    if host != LOOPBACK_BIND:
        raise SystemExit(
            f"refusing to bind the demo to {host!r}: its stand-in Alipay pays whatever it is asked to, "
            f"so it only ever listens on {LOOPBACK_BIND}. Configure a real Alipay app (ALIPAY_APP_ID, ...) "
            "to serve the shop elsewhere."
        )


# -- keys -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoKeys:
    """The demo app's key pair (signs pay requests) and the demo "Alipay" key pair (signs callbacks)."""

    app: RSA.RsaKey
    alipay: RSA.RsaKey

    @property
    def app_private_pem(self) -> str:
        return str(self.app.export_key().decode("ascii"))

    @property
    def alipay_public_pem(self) -> str:
        return str(self.alipay.public_key().export_key().decode("ascii"))


def load_or_create_keys(state_dir: Path) -> DemoKeys:
    """Read the demo keys from ``state_dir``, generating them (RSA 2048) on first use.

    Kept on disk so that a restart can still verify what was signed before it (orders half-way through
    the checkout, notifications being retried). The directory gets its own ``.gitignore`` of ``*`` so
    the keys are never committed, whatever repository it ends up in.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    ignore = state_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# demo keys and databases: never commit\n*\n", encoding="ascii")
    return DemoKeys(app=_load_or_create_key(state_dir / "demo-app-private.pem"),
                    alipay=_load_or_create_key(state_dir / "demo-alipay-private.pem"))


def _load_or_create_key(path: Path) -> RSA.RsaKey:
    if not path.exists():
        pem = RSA.generate(2048).export_key()
        # Written under a temporary name, then linked into place: the link fails if another process
        # created the key meanwhile, and then both processes use that one (never half a file).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return RSA.import_key(path.read_bytes())


# -- the protocol, written out independently of the library ------------------------------------------------


def sign_string(params: Mapping[str, str], exclude: Iterable[str]) -> str:
    """Alipay's sign string: non-empty params not in ``exclude``, sorted by key, raw ``k=v`` joined by ``&``."""
    skip = set(exclude)
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in skip and params[k])


def rsa2_sign(message: str, key: RSA.RsaKey) -> str:
    """RSA2 = SHA256withRSA, PKCS#1 v1.5, base64."""
    return base64.b64encode(pkcs1_15.new(key).sign(SHA256.new(message.encode("utf-8")))).decode("ascii")


def rsa2_verify(message: str, signature: str, key: RSA.RsaKey) -> bool:
    try:
        pkcs1_15.new(key).verify(SHA256.new(message.encode("utf-8")), base64.b64decode(signature, validate=True))
    except (ValueError, TypeError, binascii.Error):
        return False
    return True


def sign_v1(fields: Mapping[str, str], alipay_key: RSA.RsaKey) -> dict[str, str]:
    """``fields`` plus ``sign``, signed the way Alipay signs callbacks (rule V1: without sign, sign_type)."""
    signed = dict(fields)
    signed["sign"] = rsa2_sign(sign_string(fields, ("sign", "sign_type")), alipay_key)
    return signed


def form_encode(fields: Mapping[str, str]) -> str:
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields.items())


class PayRequestError(ValueError):
    """A pay request the stand-in refuses (shown to the browser as a 400 page)."""


@dataclass(frozen=True)
class PayRequest:
    """A verified ``alipay.trade.page.pay`` (or ``wap.pay``) request."""

    params: dict[str, str]  # exactly as signed: re-posted by the Pay and Cancel buttons
    method: str
    out_trade_no: str
    total_amount: str
    subject: str
    notify_url: str
    return_url: str
    passback_params: str | None


def read_pay_request(params: Mapping[str, str], app_public_key: RSA.RsaKey, app_id: str, *,
                     check_time: bool = True, now: datetime | None = None) -> PayRequest:
    """Check a pay request as Alipay would (signature first), or raise :class:`PayRequestError`."""
    signature = params.get("sign")
    if not signature:
        raise PayRequestError("the request is not signed (no sign parameter)")
    if params.get("sign_type") != "RSA2":
        raise PayRequestError(f"sign_type must be RSA2, got {params.get('sign_type')!r}")
    # Requests are signed over every parameter except ``sign`` (sign_type stays in).
    if not rsa2_verify(sign_string(params, ("sign",)), signature, app_public_key):
        raise PayRequestError("the signature does not verify with the app's public key")
    if params.get("app_id") != app_id:
        raise PayRequestError(f"unknown app_id {params.get('app_id')!r}")
    method = params.get("method", "")
    if method not in _METHODS:
        raise PayRequestError(f"the stand-in only understands page and wap pay, not {method!r}")
    if (params.get("charset") or "utf-8").lower() != "utf-8":
        raise PayRequestError("the stand-in only speaks charset=utf-8")
    try:
        sent = datetime.strptime(params.get("timestamp", ""), _TIME).replace(tzinfo=CST)
    except ValueError:
        raise PayRequestError("timestamp is not 'yyyy-MM-dd HH:mm:ss' Beijing time") from None
    if check_time and abs((now or datetime.now(CST)) - sent) > timedelta(minutes=15):
        raise PayRequestError("timestamp is more than 15 minutes away from Beijing time now")
    try:
        biz = json.loads(params.get("biz_content", ""))
    except json.JSONDecodeError:
        raise PayRequestError("biz_content is not JSON") from None
    if not isinstance(biz, dict):
        raise PayRequestError("biz_content is not a JSON object")
    out_trade_no, total_amount, subject = biz.get("out_trade_no"), biz.get("total_amount"), biz.get("subject")
    if not isinstance(out_trade_no, str) or not out_trade_no:
        raise PayRequestError("biz_content has no out_trade_no")
    if not isinstance(total_amount, str) or not _AMOUNT.match(total_amount):
        raise PayRequestError(f"total_amount {total_amount!r} is not an amount such as '9.90'")
    if not isinstance(subject, str) or not subject:
        raise PayRequestError("biz_content has no subject")
    if biz.get("product_code") != _METHODS[method][0]:
        raise PayRequestError(f"product_code must be {_METHODS[method][0]} for {method}")
    notify_url = _loopback_url(params.get("notify_url"), "notify_url")
    return_url = _loopback_url(params.get("return_url"), "return_url")
    passback = biz.get("passback_params")
    return PayRequest(dict(params), method, out_trade_no, total_amount, subject, notify_url, return_url,
                      passback if isinstance(passback, str) else None)


def _loopback_url(url: str | None, name: str) -> str:
    # The stand-in makes server-to-server calls to notify_url: limited to this machine, it cannot be
    # used to reach anything else, even by a page that gets hold of a signing key.
    if not url:
        raise PayRequestError(f"{name} is missing (the shop must say where to send the result)")
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS:
        raise PayRequestError(f"the stand-in only calls back http://127.0.0.1 URLs, not {url[:80]!r}")
    if parts.query or parts.fragment:
        raise PayRequestError(f"{name} must not carry a query string")
    return url


def notify_fields(req: PayRequest, trade_no: str, seller_id: str, now: datetime | None = None) -> dict[str, str]:
    """An unsigned ``trade_status_sync`` TRADE_SUCCESS notification for a paid request."""
    moment = now or datetime.now(CST)
    paid_at = moment.strftime(_TIME)
    fields = {
        "gmt_create": (moment - timedelta(seconds=1)).strftime(_TIME),
        "charset": "utf-8",
        "seller_email": "demo-seller@example.invalid",
        "subject": req.subject,
        "sign_type": "RSA2",
        "buyer_id": DEMO_BUYER_ID,
        "invoice_amount": req.total_amount,
        "notify_id": f"{moment:%Y%m%d}00222{secrets.randbelow(10**15):015d}",
        "fund_bill_list": json.dumps([{"amount": req.total_amount, "fundChannel": "ALIPAYACCOUNT"}]),
        "notify_type": "trade_status_sync",
        "trade_status": "TRADE_SUCCESS",
        "receipt_amount": req.total_amount,
        "app_id": req.params["app_id"],
        "buyer_pay_amount": req.total_amount,
        "notify_time": paid_at,
        "point_amount": "0.00",
        "total_amount": req.total_amount,
        "seller_id": seller_id,
        "trade_no": trade_no,
        "auth_app_id": req.params["app_id"],
        "gmt_payment": paid_at,
        "out_trade_no": req.out_trade_no,
        "version": "1.0",
    }
    if req.passback_params:
        fields["passback_params"] = req.passback_params
    return fields


def return_fields(req: PayRequest, trade_no: str, seller_id: str, now: datetime | None = None) -> dict[str, str]:
    """The unsigned query Alipay appends to ``return_url`` when it sends the buyer back."""
    return {
        "charset": "utf-8",
        "out_trade_no": req.out_trade_no,
        "method": _METHODS[req.method][1],
        "total_amount": req.total_amount,
        "sign_type": "RSA2",
        "trade_no": trade_no,
        "auth_app_id": req.params["app_id"],
        "version": "1.0",
        "app_id": req.params["app_id"],
        "seller_id": seller_id,
        "timestamp": (now or datetime.now(CST)).strftime(_TIME),
    }


def new_trade_no(now: datetime | None = None) -> str:
    return f"{now or datetime.now(CST):%Y%m%d}22001{secrets.randbelow(10**15):015d}"


# -- the web app ----------------------------------------------------------------------------------------


class DemoGateway:
    """The stand-in checkout as a WSGI app, to mount at :data:`MOUNT` (werkzeug only, no framework)."""

    def __init__(self, keys: DemoKeys, *, app_id: str = DEMO_APP_ID, seller_id: str = DEMO_SELLER_ID) -> None:
        self.app_public_key = keys.app.public_key()
        self.alipay_key = keys.alipay
        self.app_id = app_id
        self.seller_id = seller_id
        self._urls = Map([
            Rule(GATEWAY_PATH, endpoint="checkout", methods=["GET", "POST"]),
            Rule("/pay", endpoint="pay", methods=["POST"]),
            Rule("/cancel", endpoint="cancel", methods=["POST"]),
        ])
        # out_trade_no -> trade_no: a trade is paid once, as at Alipay (memory only: it is a demo).
        self._trades: dict[str, str] = {}
        self._lock = threading.Lock()
        self._senders: set[threading.Thread] = set()
        self._stop = threading.Event()
        # No proxies: the callbacks go to this machine, and an http_proxy in the environment must not
        # carry them elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            if request.remote_addr not in ("127.0.0.1", "::1"):
                response = _page("Refused", "<p>The demo checkout only serves this machine.</p>", status=403)
            else:
                endpoint, _ = self._urls.bind_to_environ(environ).match()
                response = getattr(self, f"_{endpoint}")(request)
        except (NotFound, MethodNotAllowed) as exc:
            response = exc.get_response(environ)
        except PayRequestError as exc:
            log.warning("refused a pay request: %s", exc)
            response = _page("Request refused", f"<p>The demo checkout refused this pay request:</p>"
                             f"<p><strong>{html.escape(str(exc))}</strong></p>", status=400)
        except HTTPException as exc:  # pragma: no cover - werkzeug's own errors
            response = exc.get_response(environ)
        return response(environ, start_response)

    # -- pages --

    def _verified(self, request: Request, *, arriving: bool = False) -> PayRequest:
        # GET (page_pay_url) carries the parameters in the query; POST (page_pay_form) in the body, with
        # charset repeated in the action's query. The body wins where both have a value.
        params = request.args.to_dict()
        params.update(request.form.to_dict())
        # The request's timestamp is checked when it arrives, not again when the buyer presses Pay
        # after lingering on the checkout page (the buttons re-post the same signed parameters).
        return read_pay_request(params, self.app_public_key, self.app_id, check_time=arriving)

    def _checkout(self, request: Request) -> Response:
        req = self._verified(request, arriving=True)
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in req.params.items())
        root = html.escape(request.script_root)
        body = (
            f"<p>Merchant app <code>{html.escape(self.app_id)}</code> asks you to pay:</p>"
            f'<p class="amount">¥ <span id="amount">{html.escape(req.total_amount)}</span></p>'
            f'<p>for <strong id="subject">{html.escape(req.subject)}</strong> '
            f"(order <code>{html.escape(req.out_trade_no)}</code>)</p>"
            f'<form id="pay" method="post" action="{root}/pay">{hidden}'
            '<button type="submit">Pay (pretend)</button></form>'
            f'<form id="cancel" method="post" action="{root}/cancel">{hidden}'
            '<button type="submit">Cancel</button></form>'
            "<p><small>The request's signature was verified with the app's public key. Pay sends a signed "
            "notification to the shop, then brings you back to it.</small></p>"
        )
        return _page("Demo checkout", body)

    def _pay(self, request: Request) -> Response:
        req = self._verified(request)
        now = datetime.now(CST)
        with self._lock:
            trade_no = self._trades.get(req.out_trade_no)
            first = trade_no is None
            if trade_no is None:
                trade_no = self._trades[req.out_trade_no] = new_trade_no(now)
        if first:
            body = form_encode(sign_v1(notify_fields(req, trade_no, self.seller_id, now), self.alipay_key))
            self._send_notification(req.notify_url, body.encode("ascii"), req.out_trade_no)
        else:
            log.info("%s is already paid (trade %s); not notifying again", req.out_trade_no, trade_no)
        query = form_encode(sign_v1(return_fields(req, trade_no, self.seller_id, now), self.alipay_key))
        return redirect(f"{req.return_url}?{query}", code=303)

    def _cancel(self, request: Request) -> Response:
        req = self._verified(request)
        parts = urlsplit(req.return_url)
        shop = html.escape(f"{parts.scheme}://{parts.netloc}/")
        return _page("Payment cancelled", "<p>You cancelled. Nothing was sent to the shop; the order stays "
                     f'unpaid.</p><p><a href="{shop}">Back to the shop</a></p>')

    # -- the notification, server to server --

    def _send_notification(self, url: str, body: bytes, out_trade_no: str) -> None:
        # In a thread, and not before answering the browser: the shop answering this very request is the
        # server the notification goes to (a single-threaded server would deadlock waiting for itself),
        # and real notifications also arrive independently of the buyer's redirect, often after it.
        thread = threading.Thread(target=self._deliver, args=(url, body, out_trade_no),
                                  name=f"demo-alipay-notify-{out_trade_no}", daemon=True)
        with self._lock:
            self._senders.add(thread)
        thread.start()

    def _deliver(self, url: str, body: bytes, out_trade_no: str) -> None:
        try:
            for attempt, delay in enumerate(_NOTIFY_DELAYS, 1):
                if self._stop.wait(delay):
                    return
                status, answer = self._post(url, body)
                log.info("notify %s attempt %d -> %s %r", out_trade_no, attempt, status, answer[:40])
                if status == 200 and answer == b"success":
                    return
            log.warning("gave up notifying %s after %d attempts (Alipay would keep trying)",
                        out_trade_no, len(_NOTIFY_DELAYS))
        finally:
            with self._lock:
                self._senders.discard(threading.current_thread())

    def _post(self, url: str, body: bytes) -> tuple[int | str, bytes]:
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "User-Agent": "demo-alipay-stand-in",
        })
        try:
            with self._opener.open(request, timeout=5) as response:
                return int(response.status), bytes(response.read(256))
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read(256)
        except OSError as error:  # refused, reset, timed out: retried like any failed attempt
            return type(error).__name__, b""

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait for notifications in flight (tests, shutdown). True when none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._senders)
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pending[0].join(remaining)

    def close(self, timeout: float = 5.0) -> None:
        """Stop retrying and wait for the senders to finish their current attempt."""
        self._stop.set()
        self.wait_idle(timeout)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}"
          ".standin{background:#b00020;color:#fff;padding:.75rem 1rem;font-weight:bold}"
          ".amount{font-size:2rem;margin:.5rem 0}form{display:inline-block;margin:0 .5rem 0 0}"
          "button{font-size:1.1rem;padding:.4rem 1.2rem}")


def _page(title: str, body: str, status: int = 200) -> Response:
    """``body`` is trusted markup: every value in it was escaped where it was put in."""
    document = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)} (DEMO)</title>"
        f"<style>{_STYLE}</style></head><body>"
        '<p class="standin">DEMO STAND-IN, NOT ALIPAY. No account, no money: this page only pretends to be '
        "Alipay's checkout so the shop can be tried on one machine.</p>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(document, status=status, content_type="text/html; charset=utf-8")
