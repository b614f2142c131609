"""The request helper (pay URLs and forms) and the verified return, through both fronts."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from alipay_middleware.wire.signing import RsaVerifier, sign_string
from conftest import APP_ID, SELLER_ID, ASGIClient, WSGIClient, encode_form, sign_fields

# -- inner apps that build pay URLs the way a shop's view would -----------------------------------------------


def _pay_args(query: dict[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {"out_trade_no": "A1", "total_amount": Decimal("9.90"), "subject": "Tea & 茶 \"<b>\""}
    args.update(json.loads(query.get("extra", "{}")))
    return args


def pay_wsgi(environ, start_response):
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    method = getattr(environ["alipay"], query.get("call", "page_pay_url"))
    try:
        body, status = method(**_pay_args(query)), "200 OK"
    except (TypeError, ValueError) as exc:
        body, status = f"{type(exc).__name__}: {exc}", "400 Bad Request"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


async def pay_asgi(scope, receive, send):
    query = dict(parse_qsl(scope["query_string"].decode()))
    method = getattr(scope["alipay"], query.get("call", "page_pay_url"))
    try:
        body, status = method(**_pay_args(query)), 200
    except (TypeError, ValueError) as exc:
        body, status = f"{type(exc).__name__}: {exc}", 400
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.fixture
def payshop(make_alipay, front_kind):
    clients = []

    def _make(**kwargs):
        alipay = make_alipay(**kwargs)
        client = WSGIClient(alipay.wsgi(pay_wsgi)) if front_kind == "wsgi" else ASGIClient(alipay.asgi(pay_asgi))
        clients.append(client)
        return alipay, client

    yield _make
    for client in clients:
        client.close()


def verify_url(url: str, keys) -> dict[str, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, strict_parsing=True))
    unsigned = {k: v for k, v in query.items() if k != "sign"}
    assert RsaVerifier(keys.app.public_key(), "RSA2").verify(sign_string(unsigned).encode(), query["sign"])
    return query


def test_page_pay_url_is_signed_with_request_derived_callback_urls(payshop, keys):
    _, client = payshop()
    response = client.request("GET", "/buy", headers={"Host": "shop.example:8443"})
    assert response.status == 200
    url = response.body.decode()
    assert url.startswith("https://openapi.alipay.com/gateway.do?")
    query = verify_url(url, keys)
    assert query["notify_url"] == "http://shop.example:8443/alipay/notify"
    assert query["return_url"] == "http://shop.example:8443/alipay/return"
    assert query["method"] == "alipay.trade.page.pay" and query["sign_type"] == "RSA2" and query["charset"] == "utf-8"
    biz = json.loads(query["biz_content"])
    assert biz == {"out_trade_no": "A1", "total_amount": "9.90", "subject": "Tea & 茶 \"<b>\"",
                   "product_code": "FAST_INSTANT_TRADE_PAY"}
    stamp = datetime.strptime(query["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone(timedelta(hours=8)))
    assert abs((stamp - datetime.now(timezone.utc)).total_seconds()) < 120  # Beijing time, not local time


def test_configured_urls_win_over_the_request(payshop, keys):
    _, client = payshop(config={"notify_url": "https://pay.shop.example/n", "return_url": "https://shop.example/r"})
    query = verify_url(client.request("GET", "/buy").body.decode(), keys)
    assert (query["notify_url"], query["return_url"]) == ("https://pay.shop.example/n", "https://shop.example/r")


def test_custom_mount_paths_appear_in_default_urls(payshop, keys):
    _, client = payshop(notify_path="/pay/cb", return_path="/pay/back")
    query = verify_url(client.request("GET", "/buy").body.decode(), keys)
    assert query["notify_url"].endswith("/pay/cb") and query["return_url"].endswith("/pay/back")


def test_wap_pay_uses_quick_wap_way(payshop, keys):
    _, client = payshop()
    extra = json.dumps({"quit_url": "https://shop.example/cart", "passback_params": "a%3D1"})
    url = client.request("GET", "/buy", query=f"call=wap_pay_url&extra={quote(extra)}").body.decode()
    query = verify_url(url, keys)
    biz = json.loads(query["biz_content"])
    assert query["method"] == "alipay.trade.wap.pay" and biz["product_code"] == "QUICK_WAP_WAY"
    assert biz["quit_url"] == "https://shop.example/cart" and biz["passback_params"] == "a%3D1"


@pytest.mark.parametrize("call", ["page_pay_form", "wap_pay_form"])
def test_pay_form_escapes_every_value_and_posts_to_the_gateway(payshop, keys, call):
    _, client = payshop()
    page = client.request("GET", "/buy", query=f"call={call}").body.decode()
    assert 'method="POST"' in page and "charset=utf-8" in page and ".submit()" in page
    assert "<b>" not in page  # the subject's markup is escaped
    values = {name: html.unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}
    unsigned = {k: v for k, v in values.items() if k != "sign"}
    assert RsaVerifier(keys.app.public_key(), "RSA2").verify(sign_string(unsigned).encode(), values["sign"])
    assert json.loads(values["biz_content"])["subject"] == "Tea & 茶 \"<b>\""


@pytest.mark.parametrize(
    "amount,error",
    [
        (9.9, "TypeError: total_amount must be a Decimal or a str"),
        ("9.999", "ValueError"),
        ("abc", "ValueError"),
        ("0.00", "ValueError: total_amount 0.00 is outside"),
        ("100000000.01", "ValueError"),
        ("-1.00", "ValueError"),
    ],
)
def test_amounts_are_checked_before_signing(payshop, amount, error):
    _, client = payshop()
    extra = json.dumps({"total_amount": amount})
    response = client.request("GET", "/buy", query=f"extra={quote(extra)}")
    assert response.status == 400 and response.body.decode().startswith(error)


def test_decimal_with_more_than_two_places_is_refused_not_rounded(make_alipay):
    helper = make_alipay().helper("https://shop.example")
    with pytest.raises(ValueError, match="more than two decimals"):
        helper.page_pay_url(out_trade_no="A1", total_amount=Decimal("9.995"), subject="Tea")
    url = helper.page_pay_url(out_trade_no="A1", total_amount=Decimal("9.900"), subject="Tea")
    assert json.loads(dict(parse_qsl(urlsplit(url).query))["biz_content"])["total_amount"] == "9.90"
    with pytest.raises(TypeError, match="must not be a float"):
        helper.page_pay_url(out_trade_no="A1", total_amount="9.90", subject="Tea", discountable_amount=1.0)
    url = helper.page_pay_url(out_trade_no="A1", total_amount="9.90", subject="Tea",
                              discountable_amount=Decimal("1.5"))
    assert json.loads(dict(parse_qsl(urlsplit(url).query))["biz_content"])["discountable_amount"] == "1.50"
    with pytest.raises(ValueError, match="out_trade_no"):
        helper.page_pay_url(out_trade_no="has space", total_amount="9.90", subject="Tea")
    with pytest.raises(ValueError, match="notify_url must not carry a query"):
        helper.page_pay_url(out_trade_no="A1", total_amount="9.90", subject="Tea",
                            notify_url="https://shop.example/n?order=1")


def test_asgi_root_path_is_part_of_default_urls_and_routing(make_alipay, keys):
    alipay = make_alipay()
    client = ASGIClient(alipay.asgi(pay_asgi))
    try:
        response = client.request("GET", "/buy", root_path="/shop")
        assert verify_url(response.body.decode(), keys)["notify_url"] == "http://shop.example/shop/alipay/notify"
        # the notify path is found under the mount point too
        assert client.request("GET", "/alipay/notify", root_path="/shop").status == 405
    finally:
        client.close()


def test_wsgi_script_name_is_part_of_default_urls(make_alipay, keys):
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app = make_alipay().wsgi(pay_wsgi)
    environ = EnvironBuilder(path="/buy", base_url="http://shop.example/shop").get_environ()
    body = b"".join(run_wsgi_app(app, environ, buffered=True)[0]).decode()
    assert verify_url(body, keys)["return_url"] == "http://shop.example/shop/alipay/return"


# -- the return path -----------------------------------------------------------------------------------------------


def return_fields(**overrides: str) -> dict[str, str]:
    fields = {
        "charset": "utf-8", "out_trade_no": "A1", "method": "alipay.trade.page.pay.return",
        "total_amount": "9.90", "trade_no": "2024010122001400000000000077", "auth_app_id": APP_ID,
        "version": "1.0", "app_id": APP_ID, "sign_type": "RSA2", "seller_id": SELLER_ID,
        "timestamp": "2024-01-01 12:00:09",
    }
    fields.update(overrides)
    return fields


def signed_query(fields: dict[str, str], key, rule: str = "V1") -> str:
    return encode_form(dict(fields, sign=sign_fields(fields, key, rule=rule))).decode()


@pytest.fixture
def returnshop(make_alipay, mount):
    alipay = make_alipay()
    calls = []
    alipay.on_paid(calls.append)
    return alipay, mount(alipay), calls


def test_verified_return_reaches_the_shop_page_with_the_result(returnshop, keys):
    alipay, client, calls = returnshop
    response = client.request("GET", "/alipay/return", query=signed_query(return_fields(), keys.alipay))
    text = response.body.decode()
    assert response.status == 200 and text.startswith("inner path=/alipay/return")
    assert "ReturnResult(out_trade_no='A1'" in text and "total_amount=Decimal('9.90')" in text
    assert "helper=OpenApiHelper" in text
    assert calls == [] and alipay.ledger.events() == []  # a return never fires a hook


@pytest.mark.parametrize(
    "query_of",
    [
        lambda key: encode_form(dict(return_fields(),
                                     sign=sign_fields(return_fields(total_amount="0.01"), key))).decode(),
        lambda key: signed_query(return_fields(app_id="2021999999999999"), key),
        lambda key: signed_query(return_fields(seller_id="2088999999999999"), key),
        lambda key: signed_query(return_fields(), key, rule="V2"),
        lambda key: encode_form(return_fields()).decode(),
        lambda key: "garbage=%zz",
        lambda key: "",
    ],
    ids=["tampered-amount", "other-app", "other-seller", "v2-only", "unsigned", "malformed", "empty"],
)
def test_unverifiable_return_still_reaches_the_shop_with_none(returnshop, keys, query_of):
    _, client, calls = returnshop
    response = client.request("GET", "/alipay/return", query=query_of(keys.alipay))
    assert response.status == 200 and "return=None" in response.body.decode()


def test_post_to_the_return_path_is_passed_on_unverified(returnshop, keys):
    _, client, _ = returnshop
    response = client.request("POST", "/alipay/return", b"x=1")
    assert response.status == 200 and "return=None" in response.body.decode()


def test_other_paths_are_untouched_and_have_no_return_key(returnshop):
    _, client, _ = returnshop
    response = client.request("GET", "/anything/else")
    assert response.status == 200 and "return='absent'" in response.body.decode()
