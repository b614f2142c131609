"""The README's snippets run as written: Flask, FastAPI and legacy take a payment; the simulator's
configures a shop whose requests it accepts."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from werkzeug.test import Client

from conftest import MD5_KEY, PARTNER, legacy_body, legacy_fields, notify_fields, signed_body

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
SNIPPETS = dict(re.findall(r"## (Flask|FastAPI) in 20 lines\n\n```python\n(.*?)```", README, re.S))
SNIPPETS["Legacy"] = re.findall(r"## The legacy service\n\n.*?```python\n(.*?)```", README, re.S)[0]


@pytest.fixture
def readme_env(keys, monkeypatch, tmp_path):
    monkeypatch.setenv("ALIPAY_APP_ID", "2021000000000001")
    monkeypatch.setenv("ALIPAY_APP_PRIVATE_KEY", keys.app_private_pem)
    monkeypatch.setenv("ALIPAY_PUBLIC_KEY", keys.alipay_public_pem)
    monkeypatch.chdir(tmp_path)  # the snippets use the default ledger file in the working directory


def run_snippet(name: str) -> dict[str, Any]:
    code = SNIPPETS[name]
    assert len(code.strip().splitlines()) <= 32, f"the {name} example has grown beyond a screen"
    namespace: dict[str, Any] = {"__name__": f"readme_{name.lower()}"}
    exec(compile(code, f"README:{name}", "exec"), namespace)
    return namespace


def callback_urls(pay_url: str) -> tuple[str, str]:
    params = dict(parse_qsl(urlsplit(pay_url).query))
    return params["notify_url"], params["return_url"]


def test_flask_snippet_takes_a_payment(readme_env, keys, capsys):
    ns = run_snippet("Flask")
    client = ns["app"].test_client()
    response = client.post("/buy/A1")
    assert response.status_code == 302 and response.location.startswith("https://openapi.alipay.com/gateway.do?")
    assert callback_urls(response.location) == ("https://shop.example/alipay/notify",
                                                 "https://shop.example/alipay/return")  # configured
    notify = client.post("/alipay/notify", data=signed_body(notify_fields("A1", "9.90"), keys.alipay),
                         content_type="application/x-www-form-urlencoded")
    assert (notify.status_code, notify.data) == (200, b"success")
    assert "paid A1 9.90" in capsys.readouterr().out
    assert client.get("/alipay/return").data == b"Not verified"
    ns["alipay"].close()


def test_fastapi_snippet_takes_a_payment(readme_env, keys, capsys):
    ns = run_snippet("FastAPI")

    async def journey() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=ns["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as client:
            buy = await client.post("/buy/A1")
            notify = await client.post("/alipay/notify", content=signed_body(notify_fields("A1", "9.90"), keys.alipay),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
            return buy, notify

    buy, notify = asyncio.run(journey())
    assert buy.status_code == 303 and buy.headers["location"].startswith("https://openapi.alipay.com/gateway.do?")
    assert callback_urls(buy.headers["location"]) == ("http://shop.example/alipay/notify",
                                                      "http://shop.example/alipay/return")  # allowed_hosts
    assert (notify.status_code, notify.content) == (200, b"success")
    assert "paid A1 9.90" in capsys.readouterr().out
    ns["alipay"].close()


def test_legacy_snippet_takes_a_payment(monkeypatch, tmp_path, gateway_stub, capsys):
    monkeypatch.setenv("ALIPAY_PARTNER", PARTNER)
    monkeypatch.setenv("ALIPAY_MD5_KEY", MD5_KEY)
    monkeypatch.chdir(tmp_path)
    ns = run_snippet("Legacy")
    client = ns["app"].test_client()
    response = client.post("/buy/A1")
    assert response.status_code == 302 and response.location.startswith("https://mapi.alipay.com/gateway.do?")
    assert "service=create_direct_pay_by_user" in response.location
    assert callback_urls(response.location) == ("https://shop.example/alipay/notify",
                                                 "https://shop.example/alipay/return")
    # Point the origin check at the loopback stub instead of mapi.alipay.com (tests never leave the
    # machine); the snippet itself stays as a user would write it.
    alipay = ns["alipay"]
    object.__setattr__(alipay.protocol.config, "gateway", gateway_stub.url)
    fields = legacy_fields("A1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    notify = client.post("/alipay/notify", data=legacy_body(fields), content_type="application/x-www-form-urlencoded")
    assert (notify.status_code, notify.data) == (200, b"success")
    assert "paid A1 9.90" in capsys.readouterr().out
    assert client.get("/alipay/return").data == b"Not confirmed"
    alipay.close()


SIMULATOR = re.findall(r"In tests \(this snippet runs in `tests/test_readme.py`\):\n\n```python\n(.*?)```",
                       README, re.S)[0]


def test_simulator_snippet_runs_and_its_gateway_takes_the_shops_requests(keys, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # the default ledger file
    namespace: dict[str, Any] = {
        "__name__": "readme_simulator", "APP_ID": "2021000000000001", "SELLER_ID": "2088000000000001",
        "APP_PUBLIC_KEY": keys.app.public_key().export_key().decode(), "APP_PRIVATE_KEY": keys.app_private_pem,
    }
    exec(compile(SIMULATOR, "README:simulator", "exec"), namespace)
    sim, alipay = namespace["sim"], namespace["alipay"]
    try:
        url = alipay.helper("http://127.0.0.1:9").page_pay_url(out_trade_no="R1", total_amount=Decimal("9.90"),
                                                               subject="Tea")
        assert url.startswith(namespace["server"].gateway_url + "?")
        answer = Client(sim).get(url[len(namespace["server"].url):])
        assert answer.status_code == 303 and "/checkout/" in answer.headers["Location"]  # signature accepted
        assert sim.faults.duplicate_notify and capsys.readouterr().out == ""  # no delivery yet
    finally:
        alipay.close()
        sim.close()


TRANSACTIONAL = re.findall(r"```python\n(.*?)```",
                           README.split("### Transactional hooks", 1)[1].split("\n## ", 1)[0], re.S)[:2]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_transactional_hook_snippets_update_the_order_once(backend, keys, tmp_path, request):
    """The two transactional examples, run as written against a real PostgreSQL and a real SQLite file
    (only the ledger URL is pointed at the test database)."""
    import sqlite3
    import uuid

    from alipay_middleware import OpenApiConfig

    code = TRANSACTIONAL[0 if backend == "postgres" else 1]
    suffix = uuid.uuid4().hex[:8]
    if backend == "postgres":
        import psycopg

        url = request.getfixturevalue("postgres_url")
        tables = {"orders": f"orders_{suffix}", "shipments": f"shipments_{suffix}"}
        code = code.replace('"postgresql://shop@db.internal/shop"', f'"{url}?table=alipay_{suffix}"')

        def run(statement: str) -> list[Any]:
            with psycopg.connect(url, autocommit=True) as conn:
                cur = conn.execute(statement)
                return cur.fetchall() if cur.description else []
    else:
        path = tmp_path / "shop.sqlite3"
        tables = {"orders": "orders", "shipments": "shipments"}
        code = code.replace('"sqlite:////srv/shop/shop.sqlite3"', f'"sqlite:///{path}"')

        def run(statement: str) -> list[Any]:
            with sqlite3.connect(path) as db:
                rows = db.execute(statement).fetchall()
            db.close()
            return rows
    assert "sqlite:////srv" not in code and "db.internal" not in code
    for name, table in tables.items():
        code = code.replace(f" {name} ", f" {table} ")
    run(f"CREATE TABLE {tables['orders']} (id TEXT PRIMARY KEY, status TEXT, trade_no TEXT)")
    run(f"CREATE TABLE {tables['shipments']} (order_id TEXT)")
    run(f"INSERT INTO {tables['orders']} (id, status) VALUES ('R1', 'new')")
    config = OpenApiConfig(app_id="2021000000000001", app_private_key=keys.app_private_pem,
                           alipay_public_key=keys.alipay_public_pem)
    namespace: dict[str, Any] = {"Alipay": __import__("alipay_middleware").Alipay, "config": config}
    exec(compile(code, f"README:transactional-{backend}", "exec"), namespace)
    alipay = namespace["alipay"]
    try:
        client = Client(alipay.wsgi(lambda environ, start_response: []))
        body = signed_body(notify_fields("R1", "9.90"), keys.alipay)
        for _ in range(2):
            response = client.post("/alipay/notify", data=body, content_type="application/x-www-form-urlencoded")
            assert response.data == b"success"
        assert run(f"SELECT status FROM {tables['orders']} WHERE id = 'R1'") == [("paid",)]
        if backend == "postgres":
            assert run(f"SELECT count(*) FROM {tables['shipments']}") == [(1,)]
    finally:
        alipay.close()
        if backend == "postgres":
            for table in (*tables.values(), f"alipay_{suffix}"):
                run(f"DROP TABLE IF EXISTS {table}")
