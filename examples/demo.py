"""The demo: the shop and a local Alipay simulator, on this machine only. No account, no money.

    pip install -e ".[demo]"
    python examples/demo.py              # shop on http://127.0.0.1:8000, simulator on :8001, until Ctrl-C
    python examples/demo.py --check      # run the whole journey headlessly (pay, refund); exit 0 on success

Two servers on two ports, as in real life, where Alipay is another host: the shop
(``flask_shop.py``, or ``fastapi_shop.py`` with ``--shop fastapi``) and ``alipay_middleware.simulator``,
which verifies the shop's signed requests, shows a checkout page, sends signed notifications and
answers the refund API. Keys and databases live in ``.demo/`` under the working directory (created on
first start, kept across restarts, git-ignored). ``--check`` uses a fresh temporary directory unless
``--state-dir`` is given. ALIPAY_* variables are ignored here: run ``examples/flask_shop.py`` to use a
real (sandbox) app.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from werkzeug.serving import WSGIRequestHandler, make_server

from alipay_middleware import Alipay
from alipay_middleware.simulator import Merchant, Simulator
from shop_core import (
    DEMO_APP_ID,
    DEMO_SELLER_ID,
    DEMO_SHOP_NAME,
    PRODUCTS,
    ShopSettings,
    demo_settings,
    load_or_create_keys,
)

#: The only interface the demo listens on. Not "localhost" (it may resolve to ::1 or elsewhere) and never
#: 0.0.0.0: the simulator pays anything it is asked to, so nobody but this machine may reach it.
HOST = "127.0.0.1"
DEFAULT_PORT, DEFAULT_SIMULATOR_PORT = 8000, 8001
SHOPS = ("flask", "fastapi")
#: What the "demo" extra brings (pyproject.toml), and the command that installs it.
DEMO_EXTRA = frozenset({"flask", "fastapi", "starlette", "uvicorn", "pydantic"})
INSTALL_DEMO = 'pip install -e ".[demo]"   (from a clone; or: pip install "alipay-middleware[demo]")'
#: Alipay resends an unanswered notification after 4 min, 10 min, 10 min, 1 h, ...; the demo 10x faster.
TIME_SCALE = 0.1


#: The label in front of each log line, by logger: which of the two servers (or which part of the shop)
#: wrote it. The simulator's requests come through werkzeug's own logger; the shop's through "demo.shop".
LABELS = (("werkzeug", "simulator"), ("alipay_middleware.simulator", "simulator"),
          ("alipay_middleware", "shop/alipay"), ("uvicorn", "shop"), ("demo.shop", "shop"))
#: An access line's path is cut here: a gateway request's query string is a whole signed order.
PATH_LIMIT = 60


def _label(name: str) -> str:
    for prefix, label in LABELS:
        if name == prefix or name.startswith(prefix + "."):
            return label
    return "shop"


def _short_path(path: str) -> str:
    """``/gateway.do?charset=...&sign=...`` (a kilobyte) as ``/gateway.do?method=alipay.trade.page.pay ...``."""
    if len(path) <= PATH_LIMIT or "?" not in path:
        return path
    route, query = path.split("?", 1)
    method = parse_qs(query).get("method") or parse_qs(query).get("service")
    return f"{route}?{'method=' + method[0] + ' ' if method else ''}[{len(query)} bytes]"


class _DemoLogFilter(logging.Filter):
    """Labels each record with its server and shortens werkzeug's access lines (no colours either)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.label = _label(record.name)
        if record.name == "werkzeug" and isinstance(record.args, tuple) and len(record.args) == 3:
            request, code, _ = record.args
            parts = _ANSI.sub("", str(request)).split(" ")
            if len(parts) == 3:  # method, path, version
                record.msg, record.args = "%s %s -> %s", (parts[0], _short_path(parts[1]), code)
        elif record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            _, method, path, _, code = record.args
            record.msg, record.args = "%s %s -> %s", (method, _short_path(str(path)), code)
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_handler(stream: TextIO | None = None) -> logging.Handler:
    """The demo's log output: ``  shop        POST /buy -> 303``, ``  simulator   GET /gateway.do?...``."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_DemoLogFilter())
    handler.setFormatter(logging.Formatter("  %(label)-11s %(message)s"))
    return handler


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, handlers=[log_handler()], force=True)


class _ShopHandler(WSGIRequestHandler):
    """The shop's access lines, under the "demo.shop" logger (the simulator's stay werkzeug's)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logging.getLogger("demo.shop").info("%s %s -> %s", self.command, _short_path(self.path), code)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _FlaskServer:
    """The Flask shop on werkzeug's threaded server (threaded: notifications come in while pages load)."""

    def __init__(self, settings: ShopSettings, port: int, quiet: bool) -> None:
        from flask_shop import create_app

        self.app = create_app(settings)
        self.alipay: Alipay = self.app.extensions["alipay"]
        self._server = make_server(HOST, port, self.app, threaded=True,
                                   request_handler=_QuietHandler if quiet else _ShopHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-shop", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()
        self.alipay.close()


class _FastAPIServer:
    """The FastAPI shop on uvicorn, in a thread, on a socket bound here (so that port 0 works)."""

    def __init__(self, settings: ShopSettings, port: int, quiet: bool) -> None:
        import uvicorn

        from fastapi_shop import create_app

        app = create_app(settings)
        self.alipay: Alipay = app.state.alipay
        self._socket = socket.create_server((HOST, port))
        self.port = self._socket.getsockname()[1]
        # log_config=None: uvicorn's lines go to the demo's labelled handler, not to uvicorn's own.
        config = uvicorn.Config(app, log_level="warning" if quiet else "info", lifespan="on", log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="demo-shop", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        if not self._server.started:
            raise OSError("uvicorn did not start")

    def close(self) -> None:
        self._server.should_exit = True  # the lifespan's end closes the Alipay instance
        self._thread.join(10)
        self._socket.close()


class Demo:
    """The simulator and the shop, each on its own port on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, state_dir: Path, *, shop: str = "flask", port: int = DEFAULT_PORT,
                 simulator_port: int = DEFAULT_SIMULATOR_PORT, quiet: bool = False) -> None:
        if shop not in SHOPS:
            raise ValueError(f"shop must be one of {SHOPS}, not {shop!r}")
        keys = load_or_create_keys(state_dir)
        self.simulator = Simulator(
            merchants=[Merchant(app_id=DEMO_APP_ID, public_key=keys.app_public_pem, seller_id=DEMO_SELLER_ID,
                                name=DEMO_SHOP_NAME)],
            alipay_private_key=keys.alipay_private_pem,
            time_scale=TIME_SCALE,
            state_path=str(state_dir / "simulator.sqlite3"),  # trades survive a restart, so refunds do too
        )
        self.simulator_server = self.simulator.serve(host=HOST, port=simulator_port)
        try:
            self.settings = demo_settings(state_dir, keys, self.simulator.alipay_public_key_pem,
                                          self.simulator_server.gateway_url)
            server = _FlaskServer if shop == "flask" else _FastAPIServer
            self._shop: _FlaskServer | _FastAPIServer = server(self.settings, port, quiet)
        except BaseException:
            self.simulator_server.close()
            raise
        self.url = f"http://{HOST}:{self._shop.port}"
        self.alipay = self._shop.alipay

    def close(self) -> None:
        self.simulator_server.close()  # notifications in flight finish before the shop stops
        self._shop.close()

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- serving --------------------------------------------------------------------------------------------


def busy_ports(port: int, simulator_port: int) -> list[str]:
    """Why each port the demo needs cannot be had, naming the flag that moves it ([] when both are free)."""
    problems = []
    for what, flag, number in (("the shop", "--port", port), ("the simulator", "--simulator-port", simulator_port)):
        if number == 0:
            continue
        try:
            with socket.create_server((HOST, number)):
                pass
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            problems.append(f"{HOST}:{number} ({what}) is not free: {reason}. "
                            f"Choose another port with {flag}, e.g. {flag} {number + 10}.")
    if port and port == simulator_port:
        problems.append(f"the shop and the simulator cannot share port {port}: change --port or --simulator-port.")
    return problems


def serve(state_dir: Path, shop: str, port: int, simulator_port: int) -> int:
    problems = busy_ports(port, simulator_port)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    _configure_logging()
    if os.environ.get("ALIPAY_APP_ID"):
        print("note: ALIPAY_APP_ID is set but the demo ignores it; examples/flask_shop.py uses it.")
    try:
        demo = Demo(state_dir, shop=shop, port=port, simulator_port=simulator_port)
    except OSError as exc:  # taken between the check and the start
        print(f"cannot listen on {HOST}:{port} (--port) and {HOST}:{simulator_port} (--simulator-port): "
              f"{exc.strerror or exc}. Choose other ports with those flags.", file=sys.stderr)
        return 1
    print(f"""
  Demo shop ({shop}):  {demo.url}/
  Alipay simulator:    {demo.simulator_server.url}/  (orders, notifications, fault switches)

  1. Open {demo.url}/ and press "Pay with Alipay" next to a product.
  2. You land on the simulator's checkout (it is not Alipay; no money moves); press "Pay".
  3. It sends a signed notification to the shop and brings you back; the order turns "paid".
  4. On the order page, press "Refund": the order turns "refunded" when the refund notification arrives.

  Unanswered notifications are resent on Alipay's schedule, {1 / TIME_SCALE:.0f}x faster.
  Keys and databases: {state_dir.resolve()} (delete it to start afresh).
  Ctrl-C stops both servers.
""", flush=True)
    try:
        while True:
            time.sleep(3600)
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
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=10)
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
    ids: set[str] = field(default_factory=set)


class _Page(HTMLParser):
    """The forms (action, fields, the ids inside) and the elements with an id, as a browser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.ids: dict[str, dict[str, str]] = {}
        self.texts: dict[str, str] = {}
        self.text = ""
        self._form: _Form | None = None
        self._open: list[tuple[str, str]] = []  # (tag, id) of the elements with an id we are inside
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = _Form(attributes)
            self.forms.append(self._form)
        elif self._form is not None and tag in ("input", "button") and "name" in attributes:
            # A button's name=value is sent only when it is the one pressed: kept apart, under its id.
            if tag == "input":
                self._form.fields[attributes["name"]] = attributes.get("value", "")
        if "id" in attributes:
            self.ids[attributes["id"]] = {"tag": tag, **attributes}
            self.texts[attributes["id"]] = ""
            if self._form is not None:
                self._form.ids.add(attributes["id"])
            if tag != "input":
                self._open.append((tag, attributes["id"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text += data
        for _, element in self._open:
            self.texts[element] += data

    def press(self, button_id: str, page_url: str) -> tuple[str, dict[str, str]]:
        """What pressing the button ``#button_id`` POSTs: the form's absolute action and its fields."""
        for candidate in self.forms:
            if button_id in candidate.ids:
                button = self.ids[button_id]
                fields = dict(candidate.fields)
                if button.get("name"):
                    fields[button["name"]] = button.get("value", "")
                return urljoin(page_url, candidate.attrs.get("action", "")), fields
        raise CheckFailed(f"no form with a #{button_id} button on {page_url}")


def run_check(state_dir: Path | None = None, *, shop: str = "flask", out: TextIO | None = None,
              timeout: float = 10.0) -> str:
    """The whole journey through real servers on free ports; returns the refunded out_trade_no.

    ``timeout`` bounds each wait for a notification. Raises :class:`CheckFailed` at the first step
    that goes wrong.
    """
    with tempfile.TemporaryDirectory(prefix="alipay-demo-", ignore_cleanup_errors=True) as scratch:
        with Demo(state_dir or Path(scratch), shop=shop, port=0, simulator_port=0, quiet=True) as demo:
            return _journey(demo, out or sys.stdout, timeout)


def _journey(demo: Demo, out: TextIO, timeout: float) -> str:
    base = demo.url
    steps = 10

    def step(n: int, message: str) -> None:
        print(f"[{n}/{steps}] {message}", file=out, flush=True)

    def expect(reply: Reply, status: int, what: str) -> Reply:
        if reply.status != status:
            raise CheckFailed(f"{what}: expected HTTP {status}, got {reply.status}: {reply.text[:300]!r}")
        return reply

    def wait_for(url: str, what: str, done: Callable[[_Page], bool]) -> tuple[_Page, int]:
        polls, deadline = 0, time.monotonic() + timeout
        while True:
            polls += 1
            page = _Page(expect(_http("GET", url), 200, what).text)
            if done(page):
                return page, polls
            if time.monotonic() > deadline:
                raise CheckFailed(f"{what}: still {page.texts.get('status')!r} after {polls} polls: "
                                  "no notification?")
            time.sleep(0.05)

    def ledger_done(kind: str) -> str:
        # The page changes when our hook has committed; the ledger says "done" just after the hook
        # returns, and the simulator hears `success` after that.
        if not demo.simulator.wait_idle(timeout):
            raise CheckFailed("the simulator still has notifications the shop did not answer `success`")
        events = [e for e in demo.alipay.ledger.events(out_trade_no=out_trade_no) if e.kind == kind]
        if not events or any(e.status != "done" for e in events):
            found = ", ".join(f"{e.key} {e.status}" for e in events) or "none"
            raise CheckFailed(f"the ledger does not record the {kind} event(s) as done: {found}")
        return ", ".join(e.key for e in events)

    print(f"demo shop on {base}, simulator on {demo.simulator_server.url} "
          f"(state in {demo.settings.database.parent})", file=out)
    product = next(iter(PRODUCTS.values()))

    page = _Page(expect(_http("GET", f"{base}/"), 200, "product page").text)
    if not any(f.attrs.get("action") == "/buy" for f in page.forms):
        raise CheckFailed("no buy form on the product page")
    step(1, f"GET / -> 200, {len(page.forms)} products; buying {product.id!r} at {product.price}")

    reply = expect(_http("POST", f"{base}/buy", {"product": product.id}), 303, "POST /buy")
    gateway_url = reply.headers.get("location", "")
    if not gateway_url.startswith(demo.settings.config.gateway + "?"):
        raise CheckFailed(f"POST /buy did not redirect to the simulator's gateway: {gateway_url[:120]!r}")
    step(2, "POST /buy -> 303 to the simulator's gateway with a signed page-pay request")

    reply = expect(_http("GET", gateway_url), 303, "the gateway (a bad signature shows an error page)")
    checkout_url = urljoin(gateway_url, reply.headers.get("location", ""))
    checkout = _Page(expect(_http("GET", checkout_url), 200, "checkout").text)
    if product.name not in checkout.text or str(product.price) not in checkout.text:
        raise CheckFailed(f"the checkout does not show {product.name!r} for {product.price}")
    out_trade_no = json.loads(parse_qs(urlsplit(gateway_url).query)["biz_content"][0])["out_trade_no"]
    if demo.simulator.trade(out_trade_no) is None:
        raise CheckFailed(f"the simulator has no trade {out_trade_no} after the checkout")
    step(3, f"GET gateway -> 303 to {urlsplit(checkout_url).path}: signature verified, order {out_trade_no}")

    action, fields = checkout.press("pay", checkout_url)
    reply = expect(_http("POST", action, fields), 303, "Pay")
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
    order_url = base + link
    step(5, f"GET return -> 200, return verified, state {state!r}, links to {link}")

    page, polls = wait_for(order_url, "order page", lambda p: p.texts.get("status") == "paid")
    step(6, f"GET {link} -> 'paid' after {polls} poll(s); ledger: {ledger_done('paid')} done")

    part = (product.price / 2).quantize(Decimal("0.01"))
    action, fields = page.press("refund", order_url)
    expect(_http("POST", action, {**fields, "amount": str(part)}), 303, "partial refund")
    page, polls = wait_for(order_url, "order page after a partial refund",
                           lambda p: p.texts.get("refunded", "").startswith(f"¥{part} of"))
    if page.texts.get("status") != "paid":
        raise CheckFailed(f"a partial refund made the order {page.texts.get('status')!r}, not 'paid'")
    step(7, f"Refund ¥{part} -> 303; after {polls} poll(s): still 'paid', {page.texts['refunded']!r}")

    action, fields = page.press("refund", order_url)  # the form offers what is left
    expect(_http("POST", action, fields), 303, "refund of the rest")
    page, polls = wait_for(order_url, "order page after the full refund", lambda p: p.texts.get("status") == "refunded")
    step(8, f"Refund ¥{fields.get('amount')} -> 303; after {polls} poll(s): 'refunded', {page.texts['refunded']!r}")

    trade = demo.simulator.trade(out_trade_no)
    if trade is None or trade.refunded_amount != product.price:
        raise CheckFailed(f"the simulator's trade does not show the full refund: {trade!r}")
    step(9, f"simulator: trade {trade.trade_no} {trade.status}, refunded {trade.refunded_amount}; "
            f"ledger: {ledger_done('refunded')} done")

    tampered = return_url.replace(f"total_amount={product.price}", "total_amount=0.01")
    state = _Page(expect(_http("GET", tampered), 200, "tampered return").text).ids.get("return", {}).get("data-state")
    if tampered == return_url or state != "unverified":
        raise CheckFailed(f"a return with a changed amount was not refused (state {state!r})")
    step(10, "GET return with total_amount changed -> refused as unverified")
    return str(out_trade_no)


# -- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--shop", choices=SHOPS, default="flask", help="which example shop (default flask)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", DEFAULT_PORT)),
                        help=f"the shop's port on {HOST} (default {DEFAULT_PORT}, or DEMO_PORT)")
    parser.add_argument("--simulator-port", type=int, default=DEFAULT_SIMULATOR_PORT,
                        help=f"the Alipay simulator's port (default {DEFAULT_SIMULATOR_PORT})")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="keys and databases (default .demo/; --check: a fresh temporary directory)")
    parser.add_argument("--check", action="store_true",
                        help="run the journey headlessly on free ports and exit (0 = it works)")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            return serve(args.state_dir or Path(".demo"), args.shop, args.port, args.simulator_port)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulator's request log: noise here
        started = time.monotonic()
        out_trade_no = run_check(args.state_dir, shop=args.shop)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in DEMO_EXTRA:
            raise
        print(f"the demo needs {exc.name.split('.')[0]!r}, which is not installed. Install the demo extra:\n"
              f"    {INSTALL_DEMO}", file=sys.stderr)
        return 1
    except (CheckFailed, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"ok: order {out_trade_no} paid and refunded end to end in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
