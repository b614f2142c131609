"""The examples keep working: the demo's headless journey on both shops, refunds and their failures.

The examples are scripts (``python examples/demo.py`` puts ``examples/`` first on ``sys.path``), not a
package, so this module does the same before importing them.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest
from flask import Flask
from werkzeug.test import Client

from conftest import Keys
from openapi_gateway import OpenApiGateway

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402
import fastapi_shop  # noqa: E402
import flask_shop  # noqa: E402
import shop_core  # noqa: E402

# -- the demo --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shop", demo.SHOPS)
def test_demo_check_pays_and_refunds_end_to_end(state_dir: Path, shop: str) -> None:
    out = io.StringIO()
    out_trade_no = demo.run_check(state_dir, shop=shop, out=out)
    log = out.getvalue()
    assert "[10/10]" in log and out_trade_no in log, log
    store = shop_core.OrderStore(state_dir / "shop.sqlite3")
    order = store.get(out_trade_no)
    assert order is not None and order.status == shop_core.REFUNDED and order.trade_no
    assert order.refunded_amount == order.amount
    refunds = store.refunds(out_trade_no)
    assert [(r.out_request_no, r.state) for r in refunds] == [
        (f"{out_trade_no}R1", shop_core.DONE), (f"{out_trade_no}R2", shop_core.DONE)]
    assert sum(r.amount for r in refunds) == order.amount


def test_demo_main_check_exits_zero(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--check", "--state-dir", str(state_dir)]) == 0
    assert "paid and refunded end to end" in capsys.readouterr().out


@pytest.mark.parametrize("shop", demo.SHOPS)
def test_demo_return_asks_alipay_when_the_notification_is_late(state_dir: Path, shop: str) -> None:
    """The notification is held back: the return page still says "paid" (confirm_returns), the order is
    paid through the ledger, and the notification that comes afterwards changes nothing."""
    with demo.Demo(state_dir, shop=shop, port=0, simulator_port=0, quiet=True) as running:
        notifier = running.simulator._notifier
        held: list[Any] = []
        real_submit = notifier.submit
        notifier.submit = lambda note, **kw: held.append((note, kw))  # type: ignore[method-assign]
        location = demo._http("POST", f"{running.url}/buy", {"product": "tea"}).headers["location"]
        checkout_url = urljoin(location, demo._http("GET", location).headers["location"])
        checkout = demo._Page(demo._http("GET", checkout_url).text)
        action, fields = checkout.press("pay", checkout_url)
        return_url = demo._http("POST", action, fields).headers["location"]
        assert held, "the simulator sent its notification at once: nothing was held back"

        back = demo._Page(demo._http("GET", return_url).text)
        assert back.ids["return"]["data-state"] == "paid"
        out_trade_no = dict(parse_qsl(urlsplit(return_url).query))["out_trade_no"]
        order = demo._Page(demo._http("GET", f"{running.url}/orders/{out_trade_no}").text)
        assert order.texts["status"] == "paid"

        for note, kw in held:  # the late notification: answered `success`, deduplicated by the ledger
            real_submit(note, **kw)
        assert running.simulator.wait_idle(10)
        events = running.alipay.ledger.events(out_trade_no=out_trade_no)
        assert [(e.kind, e.status) for e in events] == [("paid", "done")]


def test_demo_names_the_flag_for_a_busy_port(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        assert demo.main(["--port", str(busy), "--simulator-port", "0", "--state-dir", str(state_dir)]) == 1
        err = capsys.readouterr().err
        assert f"127.0.0.1:{busy} (the shop) is not free" in err and f"--port {busy + 10}" in err
        assert "--simulator-port" not in err
        assert demo.main(["--port", "0", "--simulator-port", str(busy), "--state-dir", str(state_dir)]) == 1
        err = capsys.readouterr().err
        assert "(the simulator) is not free" in err and f"--simulator-port {busy + 10}" in err


@pytest.mark.parametrize(("shop", "missing"), [("flask", "flask"), ("fastapi", "uvicorn"), ("fastapi", "fastapi")])
def test_demo_without_its_extra_prints_the_install_command(state_dir: Path, shop: str, missing: str,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what an absent package looks like to `import`
    for module in ("flask_shop", "fastapi_shop"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert demo.main(["--check", "--shop", shop, "--state-dir", str(state_dir)]) == 1
    err = capsys.readouterr().err
    assert f"the demo needs {missing!r}" in err and 'pip install -e ".[demo]"' in err
    assert "Traceback" not in err


def test_demo_log_lines_say_which_server_and_stay_short(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    handler = demo.log_handler(out)
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="werkzeug")  # main(["--check"]) quiets it for the process
    try:
        with demo.Demo(state_dir, port=0, simulator_port=0, quiet=False) as running:
            location = demo._http("POST", f"{running.url}/buy", {"product": "tea"}).headers["location"]
            assert len(location) > 500
            demo._http("GET", location)
    finally:
        logging.getLogger().removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert "  shop        POST /buy -> 303" in lines, lines
    gateway = [line for line in lines if "/gateway.do" in line]
    assert len(gateway) == 1 and gateway[0].startswith("  simulator   GET /gateway.do?method=alipay.trade.page.pay ")
    assert gateway[0].endswith("bytes] -> 303") and len(gateway[0]) < 100, gateway


def test_demo_serves_on_loopback_only(state_dir: Path) -> None:
    with demo.Demo(state_dir, port=0, simulator_port=0, quiet=True) as running:
        assert running.url.startswith("http://127.0.0.1:")
        assert running.simulator_server.url.startswith("http://127.0.0.1:")
        assert running.settings.config.gateway == running.simulator_server.gateway_url
        assert running.settings.config.alipay_public_key == running.simulator.alipay_public_key_pem


def test_demo_keys_are_made_once_kept_private_and_git_ignored(tmp_path: Path) -> None:
    first = shop_core.load_or_create_keys(tmp_path / ".demo")
    again = shop_core.load_or_create_keys(tmp_path / ".demo")
    assert first == again and first.app_private_pem != first.alipay_private_pem
    assert (tmp_path / ".demo" / ".gitignore").read_text().splitlines()[-1] == "*"
    if sys.platform != "win32":
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / ".demo").glob("*.pem")} == {0o600}
    assert not list((tmp_path / ".demo").glob(".*.pem.*")), "temporary key files left behind"


def test_settings_from_env_use_the_sandbox_by_default(keys: Keys, tmp_path: Path) -> None:
    env = {"ALIPAY_APP_ID": "2021000000000077", "ALIPAY_APP_PRIVATE_KEY": keys.app_private_pem,
           "ALIPAY_PUBLIC_KEY": keys.alipay_public_pem, "ALIPAY_ALLOWED_HOSTS": "shop.example"}
    settings = shop_core.settings_from_env(env, workdir=tmp_path)
    assert not settings.demo and settings.config.gateway == shop_core.SANDBOX_GATEWAY
    assert settings.config.seller_id is None and settings.database == tmp_path / "shop.sqlite3"
    app = flask_shop.create_app(settings)
    try:
        page = Client(app).get("/", base_url="http://shop.example")
        assert page.status_code == 200 and "Pay with Alipay" in page.text and "Demo mode" not in page.text
        bought = Client(app).post("/buy", data={"product": "tea"}, base_url="https://shop.example")
        assert bought.status_code == 303 and bought.headers["location"].startswith(shop_core.SANDBOX_GATEWAY + "?")
        assert "notify_url=https%3A%2F%2Fshop.example%2Falipay%2Fnotify&" in bought.headers["location"]
    finally:
        app.extensions["alipay"].close()
    live = shop_core.settings_from_env({**env, "ALIPAY_GATEWAY": "https://openapi.alipay.com/gateway.do"},
                                       workdir=tmp_path)
    assert live.config.gateway == "https://openapi.alipay.com/gateway.do"
    with pytest.raises(SystemExit, match="ALIPAY_PUBLIC_KEY.*python examples/demo.py"):
        shop_core.settings_from_env({"ALIPAY_APP_ID": "2021000000000077", "ALIPAY_APP_PRIVATE_KEY": "x"})


@pytest.mark.parametrize("shop", demo.SHOPS)
@pytest.mark.parametrize("extra_env", [{}, {"ALIPAY_ALLOWED_HOSTS": " www.shop.example, .shop.example "},
                                       {"ALIPAY_NOTIFY_URL": "https://pay.shop.example/alipay/notify",
                                        "ALIPAY_RETURN_URL": "https://pay.shop.example/alipay/return"}],
                         ids=["nothing", "allowed_hosts", "urls"])
def test_shops_from_env_build_callback_urls_only_for_their_own_hosts(keys: Keys, tmp_path: Path, shop: str,
                                                                    extra_env: dict[str, str]) -> None:
    """Without URLs or allowed hosts the shop still works on loopback, and answers any other Host with a
    page saying what to configure (400), never a pay URL pointing at that Host."""
    env = {"ALIPAY_APP_ID": "2021000000000077", "ALIPAY_APP_PRIVATE_KEY": keys.app_private_pem,
           "ALIPAY_PUBLIC_KEY": keys.alipay_public_pem, **extra_env}
    settings = shop_core.settings_from_env(env, workdir=tmp_path)
    if shop == "flask":
        app: Any = flask_shop.create_app(settings)
        alipay, client = app.extensions["alipay"], Client(app)

        def buy(origin: str) -> tuple[int, str, str]:
            reply = client.post("/buy", data={"product": "tea"}, base_url=origin)
            return reply.status_code, reply.headers.get("location", ""), reply.text
    else:
        app = fastapi_shop.create_app(settings)
        alipay = app.state.alipay

        async def post(origin: str) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=origin) as client:
                return await client.post("/buy", content=b"product=tea",
                                         headers={"content-type": "application/x-www-form-urlencoded"})

        def buy(origin: str) -> tuple[int, str, str]:
            reply = asyncio.run(post(origin))
            return reply.status_code, reply.headers.get("location", ""), reply.text
    try:
        for origin in ("https://evil.example", "https://www.shop.example", "http://127.0.0.1:8000"):
            status, location, text = buy(origin)
            params = dict(parse_qsl(urlsplit(location).query))
            if "ALIPAY_NOTIFY_URL" in env:
                assert status == 303 and params["notify_url"] == env["ALIPAY_NOTIFY_URL"], origin
            elif origin.endswith("127.0.0.1:8000") or (origin.endswith("shop.example") and extra_env):
                assert status == 303 and params["notify_url"] == f"{origin}/alipay/notify", origin
            else:
                assert status == 400 and 'id="untrusted-host"' in text and "ALIPAY_ALLOWED_HOSTS" in text, origin
                assert location == "" and "evil" not in text
    finally:
        alipay.close()


# -- refunds in the shop: what the order page says for every outcome ------------------------------------


@dataclass
class Shop:
    app: Flask
    client: Client
    store: shop_core.OrderStore
    gateway: OpenApiGateway

    def paid_order(self, *, alipay_status: str = "TRADE_SUCCESS") -> shop_core.Order:
        order = self.store.create(shop_core.PRODUCTS["tea"])
        trade = self.gateway.add_trade(order.out_trade_no, alipay_status, str(order.amount))
        assert self.store.mark_paid(order.out_trade_no, trade.trade_no, None)
        return order

    def refund(self, out_trade_no: str, amount: str) -> tuple[int, str]:
        """POST the refund form, follow the redirect: the status and the page the buyer sees."""
        reply = self.client.post(f"/orders/{out_trade_no}/refund", data={"amount": amount})
        assert reply.status_code != 500
        if reply.status_code == 303:
            assert reply.headers["location"] == f"/orders/{out_trade_no}"
            return 303, self.client.get(f"/orders/{out_trade_no}").text
        return reply.status_code, reply.text

    def refund_requests(self) -> list[str]:
        return [r.biz["out_request_no"] for r in self.gateway.received if r.method == "alipay.trade.refund"]


def _shop(keys: Keys, state_dir: Path, gateway: OpenApiGateway, gateway_url: str) -> Iterator[Shop]:
    demo_keys = shop_core.load_or_create_keys(state_dir)
    app = flask_shop.create_app(shop_core.demo_settings(state_dir, demo_keys, keys.alipay_public_pem, gateway_url))
    try:
        yield Shop(app, Client(app), app.extensions["orders"], gateway)
    finally:
        app.extensions["alipay"].close()


@pytest.fixture
def gateway(keys: Keys) -> Iterator[OpenApiGateway]:
    stub = OpenApiGateway(keys.app.public_key(), keys.alipay, shop_core.DEMO_APP_ID)
    yield stub
    stub.close()
    assert stub.problems == []


@pytest.fixture
def shop(keys: Keys, state_dir: Path, gateway: OpenApiGateway) -> Iterator[Shop]:
    yield from _shop(keys, state_dir, gateway, gateway.url)


def _refund_row(page: str) -> str:
    rows = re.findall(r'<tr class="refund" data-state="(\w+)">.*?</tr>', page)
    return ",".join(rows)


def test_an_accepted_refund_waits_for_the_notification(shop: Shop) -> None:
    order = shop.paid_order()
    status, page = shop.refund(order.out_trade_no, "9.90")
    assert status == 303 and _refund_row(page) == "accepted"
    assert 'id="status" class="paid">paid<' in page, "the API's yes is not the notification"
    assert "A refund is on its way" in page and 'id="refund"' not in page
    assert shop.refund_requests() == [f"{order.out_trade_no}R1"]


def test_an_unknown_outcome_is_retried_with_the_same_request_number(shop: Shop) -> None:
    order = shop.paid_order()
    shop.gateway.fault("alipay.trade.refund", "http_502")
    status, page = shop.refund(order.out_trade_no, "4.00")
    assert status == 303 and _refund_row(page) == "unknown"
    assert "could not tell whether Alipay made this refund (http_error)" in page
    assert f"Retry refund {order.out_trade_no}R1 (¥4.00)" in page

    # Whatever amount is typed, the unfinished request is repeated as it was.
    status, page = shop.refund(order.out_trade_no, "9.90")
    assert status == 303 and _refund_row(page) == "accepted"
    assert shop.refund_requests() == [f"{order.out_trade_no}R1"] * 2
    assert shop.gateway.trades[order.out_trade_no].refunds == {f"{order.out_trade_no}R1": Decimal("4.00")}


def test_a_refusal_is_shown_and_a_new_request_can_follow(shop: Shop) -> None:
    order = shop.paid_order(alipay_status="TRADE_FINISHED")  # Alipay refuses refunds of finished trades
    status, page = shop.refund(order.out_trade_no, "9.90")
    assert status == 303 and _refund_row(page) == "refused"
    assert "Alipay refused the refund" in page and "ACQ.TRADE_STATUS_ERROR" in page
    shop.gateway.trades[order.out_trade_no].status = "TRADE_SUCCESS"
    status, page = shop.refund(order.out_trade_no, "9.90")
    assert status == 303 and _refund_row(page) == "refused,accepted"
    assert shop.refund_requests() == [f"{order.out_trade_no}R1", f"{order.out_trade_no}R2"]


def test_an_unreachable_gateway_sent_nothing(keys: Keys, state_dir: Path, gateway: OpenApiGateway) -> None:
    for shop in _shop(keys, state_dir, gateway, gateway.refused_url()):
        order = shop.paid_order()
        status, page = shop.refund(order.out_trade_no, "9.90")
        assert status == 303 and _refund_row(page) == "refused"
        assert "could not be reached; nothing was sent" in page


@pytest.mark.parametrize(("amount", "message"), [
    ("abc", "is not an amount in yuan"),
    ("1.234", "is not an amount in yuan"),
    ("0", "is not an amount in yuan"),
    ("9.91", "At most ¥9.90 can still be refunded."),
])
def test_a_bad_amount_sends_nothing(shop: Shop, amount: str, message: str) -> None:
    order = shop.paid_order()
    status, page = shop.refund(order.out_trade_no, amount)
    assert status == 400 and message in page and 'id="refund-error"' in page
    assert shop.refund_requests() == [] and shop.store.refunds(order.out_trade_no) == []


def test_only_a_paid_order_is_refunded(shop: Shop) -> None:
    order = shop.store.create(shop_core.PRODUCTS["cup"])
    status, page = shop.refund(order.out_trade_no, "25.00")
    assert status == 400 and "Only a paid order can be refunded." in page
    assert 'id="refund"' not in page and shop.refund_requests() == []
    assert shop.client.post("/orders/nope/refund", data={"amount": "1.00"}).status_code == 404


def test_refund_notifications_in_any_order_and_twice(tmp_path: Path) -> None:
    store = shop_core.OrderStore(tmp_path / "shop.sqlite3")
    order = store.create(shop_core.PRODUCTS["tea"])
    first = store.open_refund(order, Decimal("4.00"))
    store.set_refund(first.out_request_no, shop_core.ACCEPTED, "accepted")
    second = store.open_refund(order, Decimal("5.90"))
    assert second.out_request_no == f"{order.out_trade_no}R2"
    store.set_refund(second.out_request_no, shop_core.ACCEPTED, "accepted")
    with pytest.raises(ValueError, match="At most ¥0.00"):  # the rest is on its way already
        store.open_refund(order, Decimal("0.01"))

    # The second refund's notification overtakes the payment's and the first refund's.
    store.mark_refunded(order.out_trade_no, second.out_request_no, Decimal("9.90"))
    store.mark_refunded(order.out_trade_no, first.out_request_no, Decimal("4.00"))
    store.mark_refunded(order.out_trade_no, first.out_request_no, Decimal("4.00"))
    assert store.mark_paid(order.out_trade_no, "2024010122001400000001", None)
    final = store.get(order.out_trade_no)
    assert final is not None and (final.status, final.refunded_amount) == (shop_core.REFUNDED, Decimal("9.90"))
    assert final.trade_no == "2024010122001400000001"
    assert {r.state for r in store.refunds(order.out_trade_no)} == {shop_core.DONE}
    assert shop_core.left_to_refund(final, store.refunds(order.out_trade_no)) == 0


def test_a_partial_refund_keeps_the_order_paid(tmp_path: Path) -> None:
    store = shop_core.OrderStore(tmp_path / "shop.sqlite3")
    order = store.create(shop_core.PRODUCTS["cup"])
    store.mark_paid(order.out_trade_no, "2024010122001400000002", None)
    store.mark_refunded(order.out_trade_no, "console-refund", None)  # made elsewhere, no total reported
    store.mark_refunded(order.out_trade_no, "x", Decimal("10.00"))
    after = store.get(order.out_trade_no)
    assert after is not None and (after.status, after.refunded_amount) == (shop_core.PAID, Decimal("10.00"))
