"""The examples keep working: the demo's headless journey, the stand-in checkout, the FastAPI shop.

The examples are scripts (``python examples/demo.py`` puts ``examples/`` first on ``sys.path``), not a
package, so this module does the same before importing them.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from werkzeug.test import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402
import demo_gateway  # noqa: E402
import shop_core  # noqa: E402

FORM = "application/x-www-form-urlencoded; charset=utf-8"
ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo keys generated once for the module (RSA 2048 twice takes a moment)."""
    directory = tmp_path_factory.mktemp("demo-keys")
    demo_gateway.load_or_create_keys(directory)
    return directory


@pytest.fixture
def state_dir(keys_dir: Path, tmp_path: Path) -> Path:
    """A fresh demo state directory (own databases) holding the module's keys."""
    state = tmp_path / "state"
    shutil.copytree(keys_dir, state)
    return state


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


# -- the demo --------------------------------------------------------------------------------------------


def test_demo_check_runs_the_whole_journey(state_dir: Path) -> None:
    out = io.StringIO()
    out_trade_no = demo.run_check(state_dir, out=out)
    log = out.getvalue()
    assert "[7/7]" in log and out_trade_no in log
    order = shop_core.OrderStore(state_dir / "shop.sqlite3").get(out_trade_no)
    assert order is not None and order.status == shop_core.PAID and order.trade_no


def test_demo_main_check_exits_zero(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--check", "--state-dir", str(state_dir)]) == 0
    assert "paid end to end" in capsys.readouterr().out


def test_demo_keys_are_made_once_kept_private_and_git_ignored(tmp_path: Path) -> None:
    first = demo_gateway.load_or_create_keys(tmp_path / ".demo")
    again = demo_gateway.load_or_create_keys(tmp_path / ".demo")
    assert first.app.n == again.app.n and first.alipay.n == again.alipay.n
    assert first.app.n != first.alipay.n and first.app.size_in_bits() == 2048
    assert (tmp_path / ".demo" / ".gitignore").read_text().splitlines()[-1] == "*"
    if sys.platform != "win32":
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / ".demo").glob("*.pem")} == {0o600}
    assert not list((tmp_path / ".demo").glob(".*.pem.*")), "temporary key files left behind"


@pytest.mark.parametrize("host", ["0.0.0.0", "localhost", "192.168.1.2", "::"])
def test_demo_refuses_to_bind_beyond_127_0_0_1(host: str) -> None:
    with pytest.raises(SystemExit, match="refusing to bind"):
        demo_gateway.require_loopback(host)


def test_stand_in_checkout_verifies_the_request(state_dir: Path) -> None:
    settings = shop_core.demo_settings(state_dir, ORIGIN)
    gateway = settings.demo_gateway
    assert gateway is not None
    from alipay_middleware import Alipay

    alipay = Alipay(settings.config, ledger=":memory:")
    try:
        helper = alipay.helper(ORIGIN)
        url = helper.page_pay_url(out_trade_no="T-42", total_amount="12.30", subject="Oolong <b>tea</b>")
        client = Client(gateway)
        query = urlsplit(url).query
        local = {"REMOTE_ADDR": "127.0.0.1"}  # as werkzeug's dev server sets it for a local browser

        page = client.get(f"/gateway.do?{query}", environ_base=local)
        assert page.status_code == 200
        assert "12.30" in page.text and "Oolong &lt;b&gt;tea&lt;/b&gt;" in page.text
        assert "NOT ALIPAY" in page.text

        tampered = client.get("/gateway.do?" + query.replace("12.30", "0.01"), environ_base=local)
        assert tampered.status_code == 400 and "signature does not verify" in tampered.text

        remote = client.get(f"/gateway.do?{query}", environ_base={"REMOTE_ADDR": "10.0.0.7"})
        assert remote.status_code == 403

        # The stand-in never makes server-to-server calls off this machine.
        elsewhere = helper.page_pay_url(out_trade_no="T-43", total_amount="1.00", subject="Tea",
                                        notify_url="http://shop.example/alipay/notify")
        refused = client.get("/gateway.do?" + urlsplit(elsewhere).query, environ_base=local)
        assert refused.status_code == 400 and "127.0.0.1" in refused.text
    finally:
        alipay.close()
        gateway.close()


def test_settings_from_env_use_the_sandbox_by_default(keys_dir: Path, tmp_path: Path) -> None:
    keys = demo_gateway.load_or_create_keys(keys_dir)
    env = {"ALIPAY_APP_ID": "2021000000000077", "ALIPAY_APP_PRIVATE_KEY": keys.app_private_pem,
           "ALIPAY_PUBLIC_KEY": keys.alipay_public_pem}
    settings = shop_core.settings_from_env(env, workdir=tmp_path)
    assert not settings.demo and settings.config.gateway == shop_core.SANDBOX_GATEWAY
    assert settings.config.seller_id is None and settings.database == tmp_path / "shop.sqlite3"
    with pytest.raises(SystemExit, match="ALIPAY_PUBLIC_KEY"):
        shop_core.settings_from_env({"ALIPAY_APP_ID": "2021000000000077", "ALIPAY_APP_PRIVATE_KEY": "x"})


# -- the FastAPI shop ------------------------------------------------------------------------------------


def test_fastapi_shop_journey(state_dir: Path) -> None:
    fastapi_shop = pytest.importorskip("fastapi_shop")
    settings = shop_core.demo_settings(state_dir, ORIGIN)
    app = fastapi_shop.create_app(settings)
    try:
        asyncio.run(_fastapi_journey(app, settings, demo_gateway.load_or_create_keys(state_dir)))
    finally:
        app.state.alipay.close()  # what the app's lifespan does; httpx's transport runs no lifespan


async def _fastapi_journey(app: Any, settings: shop_core.ShopSettings, keys: demo_gateway.DemoKeys) -> None:
    # httpx's ASGI transport rather than starlette's TestClient, which warns unless httpx2 is installed.
    # base_url on 127.0.0.1: the callback URLs are derived from the request's host, and the stand-in's
    # checks (reused below) accept loopback callback URLs only.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client:
        assert (await client.get("/")).status_code == 200
        bought = await client.post("/buy", data={"product": "tea"})
        assert bought.status_code == 303
        location = bought.headers["location"]
        assert location.startswith(settings.config.gateway + "?")

        # Play Alipay with the stand-in's own functions: verify the request, sign the callbacks.
        request = demo_gateway.read_pay_request(_query(location), keys.app.public_key(), demo_gateway.DEMO_APP_ID)
        assert request.total_amount == "9.90" and request.notify_url == f"{ORIGIN}/alipay/notify"
        assert json.loads(request.params["biz_content"])["product_code"] == "FAST_INSTANT_TRADE_PAY"
        order_path = f"/orders/{request.out_trade_no}"
        assert 'id="status">pending<' in (await client.get(order_path)).text

        async def notify(fields: dict[str, str]) -> httpx.Response:
            body = demo_gateway.form_encode(demo_gateway.sign_v1(fields, keys.alipay))
            return await client.post("/alipay/notify", content=body, headers={"content-type": FORM})

        trade_no = demo_gateway.new_trade_no()
        seller = demo_gateway.DEMO_SELLER_ID
        fields = demo_gateway.notify_fields(request, trade_no, seller)
        # order_amount (an async hook here) refuses a validly signed notification for another amount.
        assert (await notify({**fields, "total_amount": "0.01"})).status_code == 409
        assert 'id="status">pending<' in (await client.get(order_path)).text

        for _ in range(2):  # a resend is acknowledged again, and pays nothing twice
            answer = await notify(fields)
            assert (answer.status_code, answer.content) == (200, b"success")
        assert 'id="status">paid<' in (await client.get(order_path)).text

        back = demo_gateway.form_encode(demo_gateway.sign_v1(
            demo_gateway.return_fields(request, trade_no, seller), keys.alipay))
        page = (await client.get(f"/alipay/return?{back}")).text
        assert 'data-state="paid"' in page and f'href="{order_path}"' in page
        forged = await client.get("/alipay/return?" + back.replace("total_amount=9.90", "total_amount=0.01"))
        assert 'data-state="unverified"' in forged.text

    stored = app.state.alipay.ledger.get(f"paid:{demo_gateway.DEMO_APP_ID}:{request.out_trade_no}")
    assert stored is not None and stored.status == "done"
