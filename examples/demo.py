"""The demo: the Flask shop with a stand-in Alipay, on this machine only. No account, no money.

    pip install -e ".[demo]"
    python examples/demo.py              # serve on http://127.0.0.1:8000 until Ctrl-C (--port / DEMO_PORT)
    python examples/demo.py --check      # run the whole payment journey headlessly; exit 0 on success

Keys and databases live in ``.demo/`` under the working directory (created on first start, kept across
restarts, git-ignored). ``--check`` uses a fresh temporary directory unless ``--state-dir`` is given.
ALIPAY_* variables are ignored here: run ``examples/flask_shop.py`` to use a real (sandbox) app.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

import demo_gateway
from alipay_middleware import Alipay
from flask_shop import create_app
from shop_core import PRODUCTS, demo_settings

HOST = demo_gateway.LOOPBACK_BIND
DEFAULT_PORT = 8000


class DemoServer:
    """The demo shop on a threaded werkzeug server bound to 127.0.0.1 (port 0: any free port).

    The shop's configuration needs its own URL (the gateway URL points back at this server), and with
    port 0 that is only known once the socket is bound: so the server is bound first, around a
    placeholder, and the app built and plugged in before the first request can arrive.
    """

    def __init__(self, state_dir: Path, port: int = DEFAULT_PORT, *, quiet: bool = False) -> None:
        demo_gateway.require_loopback(HOST)
        self._app: Flask | None = None
        handler = _QuietHandler if quiet else WSGIRequestHandler
        # threaded=True is required: "Pay" makes the stand-in POST a notification to this same server
        # while the browser's request is still being answered.
        self.server: BaseWSGIServer = make_server(HOST, port, self._dispatch, threaded=True, request_handler=handler)
        try:
            self.url = f"http://{HOST}:{self.server.server_port}"
            self.settings = demo_settings(state_dir, self.url)
            self._app = create_app(self.settings)
        except BaseException:
            self.server.server_close()
            raise
        self._thread: threading.Thread | None = None

    def _dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        assert self._app is not None, "no request is served before the app is built"
        return self._app(environ, start_response)

    @property
    def alipay(self) -> Alipay:
        assert self._app is not None
        alipay: Alipay = self._app.extensions["alipay"]
        return alipay

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="demo-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self.settings.demo_gateway is not None:
            self.settings.demo_gateway.close()  # notifications in flight finish before the server stops
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()
        self.alipay.close()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


# -- serving --------------------------------------------------------------------------------------------


def serve(port: int, state_dir: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s")
    if os.environ.get("ALIPAY_APP_ID"):
        print("note: ALIPAY_APP_ID is set but the demo ignores it; examples/flask_shop.py uses it.")
    try:
        demo = DemoServer(state_dir, port)
    except OSError as exc:
        print(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}. Try --port {port + 1}.", file=sys.stderr)
        return 1
    print(f"""
  Demo shop: {demo.url}/

  1. Open {demo.url}/ and press "Pay with Alipay" next to a product.
  2. You land on a STAND-IN checkout (red banner, it is not Alipay); press "Pay (pretend)".
  3. It sends a signed notification to the shop and brings you back; the order turns "paid".

  Keys and databases: {state_dir.resolve()} (delete it to start afresh).
  Ctrl-C stops the server.
""", flush=True)
    try:
        demo.server.serve_forever()  # werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    print("\nstopped.")
    return 0


# -- the headless journey (--check) --------------------------------------------------------------------


class CheckFailed(Exception):
    """A step of the journey did not give what a working shop gives."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str


def _http(method: str, url: str, form: dict[str, str] | None = None) -> Reply:
    """One request, no redirects followed, no proxies (http.client talks to the URL's host directly)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=5)
    try:
        body = urlencode(form).encode("ascii") if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
    finally:
        connection.close()


@dataclass
class _Form:
    attrs: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)


class _Page(HTMLParser):
    """The forms (action + hidden fields) and the elements with an id, as a browser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.ids: dict[str, dict[str, str]] = {}
        self.texts: dict[str, str] = {}
        self._open: list[tuple[str, str]] = []  # (tag, id) of the elements with an id we are inside
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(attributes))
        elif tag == "input" and self.forms and "name" in attributes:
            self.forms[-1].fields[attributes["name"]] = attributes.get("value", "")
        if "id" in attributes:
            self.ids[attributes["id"]] = attributes
            self.texts[attributes["id"]] = ""
            if tag != "input":
                self._open.append((tag, attributes["id"]))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, element in self._open:
            self.texts[element] += data

    def form(self, **match: str) -> _Form:
        for candidate in self.forms:
            if all(candidate.attrs.get(k, "").endswith(v) for k, v in match.items()):
                return candidate
        raise CheckFailed(f"no form with {match} on the page")


def run_check(state_dir: Path | None = None, *, out: TextIO | None = None, timeout: float = 5.0) -> str:
    """The whole journey through a real server on a free port; returns the paid out_trade_no.

    ``timeout`` bounds the wait for the notification once the buyer is back. Raises
    :class:`CheckFailed` at the first step that goes wrong.
    """
    with tempfile.TemporaryDirectory(prefix="alipay-demo-", ignore_cleanup_errors=True) as scratch:
        demo = DemoServer(state_dir or Path(scratch), 0, quiet=True)  # generates keys on first use
        demo.start()
        try:
            return _journey(demo, out or sys.stdout, timeout)
        finally:
            demo.close()


def _journey(demo: DemoServer, out: TextIO, timeout: float) -> str:
    base = demo.url
    steps = 7

    def step(n: int, message: str) -> None:
        print(f"[{n}/{steps}] {message}", file=out, flush=True)

    def expect(reply: Reply, status: int, what: str) -> Reply:
        if reply.status != status:
            raise CheckFailed(f"{what}: expected HTTP {status}, got {reply.status}: {reply.text[:300]!r}")
        return reply

    print(f"demo shop on {base} (state in {demo.settings.database.parent})", file=out)
    product = next(iter(PRODUCTS.values()))

    page = _Page(expect(_http("GET", f"{base}/"), 200, "product page").text)
    buy = page.form(action="/buy")
    step(1, f"GET / -> 200, {len(page.forms)} products; buying {product.id!r} at {product.price}")

    reply = expect(_http("POST", f"{base}/buy", {**buy.fields, "product": product.id}), 303, "POST /buy")
    gateway_url = reply.headers.get("location", "")
    if not gateway_url.startswith(demo.settings.config.gateway + "?"):
        raise CheckFailed(f"POST /buy did not redirect to the gateway: {gateway_url[:120]!r}")
    query = {k: v[0] for k, v in parse_qs(urlsplit(gateway_url).query).items()}
    out_trade_no = json.loads(query["biz_content"])["out_trade_no"]
    step(2, f"POST /buy -> 303 to the demo gateway, order {out_trade_no}, signed {query['sign_type']}")

    checkout = _Page(expect(_http("GET", gateway_url), 200, "demo checkout").text)
    shown = (checkout.texts.get("subject"), checkout.texts.get("amount"))
    if shown != (product.name, str(product.price)):
        raise CheckFailed(f"the checkout shows {shown}, not {(product.name, str(product.price))}")
    pay = checkout.form(id="pay")
    step(3, f"GET gateway -> 200, request signature verified, shows {shown[0]!r} for {shown[1]}")

    reply = expect(_http("POST", base + pay.attrs["action"], pay.fields), 303, "Pay")
    return_url = reply.headers.get("location", "")
    if not return_url.startswith(f"{base}{demo.alipay.return_path}?"):
        raise CheckFailed(f"Pay did not redirect to the shop's return path: {return_url[:120]!r}")
    step(4, "POST Pay -> 303 back to the shop; notification sent in the background")

    back = _Page(expect(_http("GET", return_url), 200, "return page").text)
    state = back.ids.get("return", {}).get("data-state")
    if state not in ("waiting", "paid"):
        raise CheckFailed(f"the return page did not verify the signed return (state {state!r})")
    link = back.ids.get("order-link", {}).get("href")
    if link != f"/orders/{out_trade_no}":
        raise CheckFailed(f"the return page does not link to the order page: {link!r}")
    step(5, f"GET return -> 200, return verified, state {state!r}, links to {link}")

    polls, deadline = 0, time.monotonic() + timeout
    while True:
        polls += 1
        status = _Page(expect(_http("GET", base + link), 200, "order page").text).texts.get("status")
        if status == "paid":
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"order {out_trade_no} still {status!r} after {polls} polls: no notification?")
        time.sleep(0.05)
    stored = demo.alipay.ledger.get(f"paid:{demo.settings.config.app_id}:{out_trade_no}")
    if stored is None or stored.status != "done":
        raise CheckFailed(f"the ledger does not record the payment as done: {stored!r}")
    step(6, f"GET {link} -> 'paid' after {polls} poll(s); ledger event {stored.key} is {stored.status}")

    tampered = return_url.replace(f"total_amount={product.price}", "total_amount=0.01")
    state = _Page(expect(_http("GET", tampered), 200, "tampered return").text).ids.get("return", {}).get("data-state")
    if tampered == return_url or state != "unverified":
        raise CheckFailed(f"a return with a changed amount was not refused (state {state!r})")
    step(7, "GET return with total_amount changed -> refused as unverified")
    return str(out_trade_no)


# -- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", DEFAULT_PORT)),
                        help=f"port on {HOST} (default {DEFAULT_PORT}, or DEMO_PORT)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="keys and databases (default .demo/; --check: a fresh temporary directory)")
    parser.add_argument("--check", action="store_true",
                        help="run the payment journey headlessly on a free port and exit (0 = it works)")
    args = parser.parse_args(argv)
    if not args.check:
        return serve(args.port, args.state_dir or Path(".demo"))
    started = time.monotonic()
    try:
        out_trade_no = run_check(args.state_dir)
    except (CheckFailed, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"ok: order {out_trade_no} paid end to end in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
