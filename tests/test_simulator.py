"""The simulator through its WSGI app (werkzeug's test client): request verification against the
vectors, Alipay's error codes, the cashier page, the server-side API answers, persistence and the CLI.

Deliveries to a real shop and the library's own clients against a served simulator are in
``test_simulator_delivery.py``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import pytest
from Crypto.PublicKey import RSA
from werkzeug.test import Client

from alipay_middleware import OpenApiConfig
from alipay_middleware.protocols.legacy import LegacyConfig, sign_request
from alipay_middleware.protocols.openapi import pay_biz
from alipay_middleware.simulator import LegacyMerchant, Merchant, Simulator
from alipay_middleware.simulator.__main__ import build_parser, configure
from alipay_middleware.wire.form import CST
from alipay_middleware.wire.response import verify_response
from alipay_middleware.wire.signing import Md5Signer, RsaSigner, RsaVerifier, sign_string
from conftest import (
    APP_ID,
    LEGACY_ALIPAY_KEY,
    LEGACY_MERCHANT_KEY,
    MD5_KEY,
    PARTNER,
    RSA_PARTNER,
    SELLER_ID,
    VECTORS,
    Keys,
    make_sim,
)

REQUEST_VECTOR = VECTORS / "synthetic-request-sign"
SIGN_VECTOR = json.loads((REQUEST_VECTOR / "request_sign_vector.json").read_text(encoding="utf-8"))
MD5_VECTORS = {v["id"]: v for v in json.loads((VECTORS / "legacy-md5-vectors.json").read_text())["vectors"]}
RSA_VECTORS = {v["id"]: v for v in json.loads((VECTORS / "legacy-rsa-vectors.json").read_text())["vectors"]}
SHOP = "http://127.0.0.1:9"


@pytest.fixture
def sim(keys: Keys) -> Iterator[Simulator]:
    simulator = make_sim(keys)
    yield simulator
    simulator.close()


def config(keys: Keys, **overrides: Any) -> OpenApiConfig:
    settings: dict[str, Any] = dict(app_id=APP_ID, app_private_key=keys.app_private_pem,
                                    alipay_public_key=keys.alipay_public_pem, seller_id=SELLER_ID,
                                    gateway="http://127.0.0.1:9/gateway.do")
    settings.update(overrides)
    return OpenApiConfig(**settings)


def pay_params(keys: Keys, out_trade_no: str = "A1", total_amount: str = "9.90", *, method: str = "page",
               now: datetime | None = None, notify_url: str | None = None, return_url: str | None = None,
               **biz: Any) -> dict[str, str]:
    name, product = {"page": ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
                     "wap": ("alipay.trade.wap.pay", "QUICK_WAP_WAY")}[method]
    product = biz.pop("product_code", product)
    payload = pay_biz(product, out_trade_no, total_amount, biz.pop("subject", "Tea 茶"), biz)
    return config(keys).protocol().signed_params(name, payload, notify_url=notify_url, return_url=return_url,
                                                 now=now)


def resign(params: Mapping[str, str], key: RSA.RsaKey, sign_type: str = "RSA2",
           exclude: tuple[str, ...] = ("sign",)) -> dict[str, str]:
    signed = {k: v for k, v in params.items() if k != "sign"}
    signed["sign"] = RsaSigner(key, sign_type).sign(sign_string(signed, exclude).encode("utf-8"))
    return signed


def get(client: Client, params: Mapping[str, str], charset: str = "utf-8") -> Any:
    return client.get("/gateway.do?" + urlencode(params, quote_via=quote_plus, encoding=charset))


def error_code(response: Any) -> str:
    assert response.status_code == 200  # Alipay's cashier answers a bad request with a 200 page
    match = re.search(r'<code id="error-code">([^<]*)</code>', response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:500]
    return match.group(1)


def checkout(client: Client, params: Mapping[str, str], charset: str = "utf-8") -> str:
    response = get(client, params, charset)
    assert response.status_code == 303, response.get_data(as_text=True)[:800]
    location = response.headers["Location"]
    assert re.fullmatch(r"/checkout/\d{28}", location)
    return location


def api(client: Client, keys: Keys, method: str, biz: Mapping[str, Any], *, params: dict[str, str] | None = None,
        verify: bool = True) -> dict[str, Any]:
    params = params or config(keys).protocol().signed_params(method, biz)
    response = client.post("/gateway.do?charset=utf-8", data=urlencode(params),
                           content_type="application/x-www-form-urlencoded; charset=utf-8")
    assert response.status_code == 200
    answer = verify_response(response.get_data(), method, RsaVerifier(keys.alipay.public_key(), "RSA2"))
    assert answer.verified is verify
    return {"error": answer.is_error, **answer.payload}


# -- request signatures against the vectors ---------------------------------------------------------------


def vector_sim(keys: Keys, **kwargs: Any) -> Simulator:
    """The vector's app registered, Beijing time frozen at the vector's timestamp, its example.com URLs allowed."""
    vector_app = Merchant(app_id=SIGN_VECTOR["params_before_signing"]["app_id"],
                          public_key=(REQUEST_VECTOR / "app-public-key-no-wrapper.pem").read_text())
    return make_sim(keys, merchants=[vector_app], allow_remote_callbacks=True,
                    clock=lambda: datetime(2024, 1, 1, 12, 0, 30, tzinfo=CST), **kwargs)


def vector_params(**changes: str) -> dict[str, str]:
    params = {k: v for k, v in SIGN_VECTOR["params_before_signing"].items()}
    params.update(changes)
    return params


@pytest.mark.parametrize("url_key", ["final_url_quote_plus", "final_url_percent20"])
def test_the_vector_url_is_accepted(keys: Keys, url_key: str) -> None:
    sim = vector_sim(keys)
    try:
        response = Client(sim).get("/gateway.do?" + urlsplit(SIGN_VECTOR[url_key]).query)
        assert response.status_code == 303
        page = Client(sim).get(response.headers["Location"]).get_data(as_text=True)
        assert "测试订单 Test+1&amp;a=b" in page and "88.88" in page
        assert [t.total_amount for t in sim.trades()] == [Decimal("88.88")]
    finally:
        sim.close()


def test_the_rsa_sha1_variant_is_accepted_as_rsa_only(keys: Keys) -> None:
    sim = vector_sim(keys)
    sha1 = SIGN_VECTOR["rsa_sha1_variant"]
    try:
        client = Client(sim)
        assert get(client, vector_params(sign_type="RSA", sign=sha1["expected_sign"])).status_code == 303
        # The same SHA-1 signature labelled RSA2, and the RSA2 signature labelled RSA: both refused.
        assert error_code(get(client, vector_params(sign=sha1["expected_sign"]))) == "invalid-signature"
        assert error_code(get(client, vector_params(sign_type="RSA", sign=SIGN_VECTOR["expected_sign"]))) \
            == "invalid-signature"
    finally:
        sim.close()


def test_the_simulator_checks_exactly_the_vector_sign_string(keys: Keys) -> None:
    vector_key = RSA.import_key((REQUEST_VECTOR / "app-private-key.pem").read_text())
    sim = vector_sim(keys)
    try:
        client = Client(sim)
        params = vector_params(sign=SIGN_VECTOR["expected_sign"])
        assert sign_string(params) == SIGN_VECTOR["expected_sign_string"]
        assert resign(params, vector_key)["sign"] == SIGN_VECTOR["expected_sign"]
        refused = {
            "sign_type dropped from the string": resign(params, vector_key, exclude=("sign", "sign_type")),
            "another key": resign(params, keys.app),
            "SHA-1 under RSA2": resign(params, vector_key, "RSA"),
            "empty value kept": {**params, "sign": RsaSigner(vector_key, "RSA2").sign(
                (SIGN_VECTOR["expected_sign_string"].replace("&biz", "&app_auth_token=&biz")).encode())},
            "one character changed": {**params, "biz_content": params["biz_content"].replace("88.88", "88.89")},
        }
        for why, bad in refused.items():
            assert error_code(get(client, bad)) == "invalid-signature", why
    finally:
        sim.close()


def test_a_real_clock_finds_the_vector_stale_and_an_unknown_app_is_named(keys: Keys) -> None:
    vector_app = Merchant(app_id=SIGN_VECTOR["params_before_signing"]["app_id"],
                          public_key=(REQUEST_VECTOR / "app-public-key.pem").read_text())
    sim = make_sim(keys, merchants=[vector_app], allow_remote_callbacks=True)
    try:
        params = vector_params(sign=SIGN_VECTOR["expected_sign"])
        assert error_code(get(Client(sim), params)) == "invalid-timestamp"
    finally:
        sim.close()
    sim = make_sim(keys)  # the vector's app is not registered here
    try:
        assert error_code(get(Client(sim), vector_params(sign=SIGN_VECTOR["expected_sign"]))) == "invalid-app-id"
    finally:
        sim.close()


# -- legacy request signatures against the vectors ----------------------------------------------------------


LEGACY_URL_VECTORS = ["chloerei-url-create_direct_pay_by_user", "chloerei-url-alipay.wap.create.direct.pay.by.user"]


@pytest.mark.parametrize("vector_id", LEGACY_URL_VECTORS)
def test_legacy_vector_urls_are_accepted_and_one_character_changed_is_not(keys: Keys, vector_id: str) -> None:
    vector = MD5_VECTORS[vector_id]
    partner = dict(parse_qsl(urlsplit(vector["full_signed_url"]).query))["partner"]
    sim = make_sim(keys, legacy_merchants=[LegacyMerchant(partner=partner, md5_key=vector["key"])])
    try:
        query = urlsplit(vector["full_signed_url"]).query
        client = Client(sim)
        location = client.get("/gateway.do?" + query).headers["Location"]
        assert "0.01" in client.get(location).get_data(as_text=True)
        changed = query.replace("subject=test", "subject=tesT")
        assert error_code(client.get("/gateway.do?" + changed)) == "ILLEGAL_SIGN"
        assert error_code(client.get("/gateway.do?" + query.replace("sign=" + vector["expected_sign"][:4],
                                                                    "sign=0000"))) == "ILLEGAL_SIGN"
    finally:
        sim.close()
    sim = make_sim(keys)  # partner not registered
    try:
        assert error_code(Client(sim).get("/gateway.do?" + query)) == "ILLEGAL_PARTNER"
    finally:
        sim.close()


def test_legacy_rsa_requests_verify_with_the_vector_key(sim: Simulator) -> None:
    vector = RSA_VECTORS["chloerei-rsa-sha1"]
    assert RsaSigner(LEGACY_MERCHANT_KEY, "RSA").sign(vector["sign_string"].encode()) == vector["expected_sign"]
    params = {"service": "create_direct_pay_by_user", "partner": RSA_PARTNER, "_input_charset": "utf-8",
              "out_trade_no": "R1", "subject": "茶", "payment_type": "1", "total_fee": "1.00",
              "seller_id": RSA_PARTNER}
    signed = sign_request(params, RsaSigner(LEGACY_MERCHANT_KEY, "RSA"), "utf-8")
    client = Client(sim)
    assert get(client, signed).status_code == 303
    other = sign_request({**params, "out_trade_no": "R2"}, RsaSigner(RSA.import_key(LEGACY_ALIPAY_KEY), "RSA"),
                         "utf-8")
    assert error_code(get(client, other)) == "ILLEGAL_SIGN"
    md5_for_rsa = sign_request({**params, "out_trade_no": "R3"}, Md5Signer(MD5_KEY), "utf-8")
    assert error_code(get(client, md5_for_rsa)) == "ILLEGAL_SIGN_TYPE"


def legacy_params(out_trade_no: str = "L1", charset: str = "utf-8", **changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "service": "create_direct_pay_by_user", "partner": PARTNER, "_input_charset": charset,
        "out_trade_no": out_trade_no, "subject": "茶叶", "payment_type": "1", "total_fee": "9.90",
        "seller_id": PARTNER, "extra_common_param": "a=1&b=2"}
    params.update(changes)
    return sign_request({k: v for k, v in params.items() if v is not None}, Md5Signer(MD5_KEY), charset)


@pytest.mark.parametrize("changes, code", [
    ({"total_fee": "9.9"}, "ILLEGAL_ARGUMENT"),
    ({"total_fee": "0.00"}, "ILLEGAL_ARGUMENT"),
    ({"price": "1.00", "quantity": "2"}, "ILLEGAL_ARGUMENT"),  # total_fee and price: never both
    ({"payment_type": "2"}, "ILLEGAL_ARGUMENT"),
    ({"seller_id": None}, "ILLEGAL_ARGUMENT"),
    ({"subject": None}, "ILLEGAL_ARGUMENT"),
    ({"seller_id": "2088000000000999"}, "ILLEGAL_ARGUMENT"),
    ({"service": "create_partner_trade_by_buyer"}, "ILLEGAL_SERVICE"),
    ({"notify_url": "https://shop.example/notify"}, "ILLEGAL_ARGUMENT"),  # loopback only by default
], ids=["one-decimal", "zero", "both-amounts", "payment-type", "no-seller", "no-subject", "other-seller",
        "service", "remote-notify"])
def test_legacy_request_errors(sim: Simulator, changes: dict[str, str | None], code: str) -> None:
    assert error_code(get(Client(sim), legacy_params(**changes))) == code


def test_legacy_gbk_requests_and_the_gbk_default(sim: Simulator) -> None:
    client = Client(sim)
    location = checkout(client, legacy_params("G1", "gbk"), "gbk")
    assert "茶叶" in client.get(location).get_data(as_text=True)
    assert sim.trade("G1") is not None and sim.trade("G1").charset == "gbk"  # type: ignore[union-attr]
    # Without _input_charset in the URL Alipay reads GBK: a GBK request whose URL lacks it still works.
    signed = legacy_params("G2", "gbk")
    query = urlencode({k: v for k, v in signed.items()}, quote_via=quote_plus, encoding="gbk")
    body = query.encode("ascii")
    response = client.post("/gateway.do", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 303
    # The wap service speaks utf-8 only.
    wap = legacy_params("G3", "gbk", service="alipay.wap.create.direct.pay.by.user")
    assert error_code(get(client, wap, "gbk")) == "ILLEGAL_CHARSET"


# -- Open Platform error pages ----------------------------------------------------------------------------


def test_open_platform_error_codes(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    now = datetime.now(CST)
    good = pay_params(keys, "E0")
    cases: dict[str, tuple[dict[str, str], str]] = {
        "one decimal": (resign({**good, "biz_content": good["biz_content"].replace('"9.90"', '"9.9"')}, keys.app),
                        "invalid-parameter"),
        "zero": (resign({**good, "biz_content": good["biz_content"].replace('"9.90"', '"0.00"')}, keys.app),
                 "invalid-parameter"),
        "too much": (resign({**good, "biz_content": good["biz_content"].replace('"9.90"', '"100000000.01"')},
                            keys.app), "invalid-parameter"),
        "three decimals": (resign({**good, "biz_content": good["biz_content"].replace('"9.90"', '"9.901"')},
                                  keys.app), "invalid-parameter"),
        "wap product code": (pay_params(keys, method="wap", product_code="QUICK_WAP_PAY"), "invalid-parameter"),
        "page product code on wap": (pay_params(keys, method="wap", product_code="FAST_INSTANT_TRADE_PAY"),
                                     "invalid-parameter"),
        "stale": (pay_params(keys, now=now - timedelta(minutes=30)), "invalid-timestamp"),
        "future": (pay_params(keys, now=now + timedelta(minutes=30)), "invalid-timestamp"),
        "malformed timestamp": (resign({**good, "timestamp": "2024/01/01 12:00"}, keys.app), "invalid-timestamp"),
        "missing sign": ({k: v for k, v in good.items() if k != "sign"}, "missing-signature"),
        "missing app id": ({k: v for k, v in good.items() if k != "app_id"}, "missing-app-id"),
        "missing timestamp": (resign({k: v for k, v in good.items() if k != "timestamp"}, keys.app),
                              "missing-timestamp"),
        "unknown app": (resign({**good, "app_id": "2021000000009999"}, keys.app), "invalid-app-id"),
        "bad signature": ({**good, "sign": good["sign"][:-8] + "AAAAAAA="}, "invalid-signature"),
        "unknown sign type": (resign({**good, "sign_type": "MD5"}, keys.app), "invalid-signature-type"),
        "missing subject": (resign({**good, "biz_content": good["biz_content"].replace('"subject"', '"x"')},
                                   keys.app), "invalid-parameter"),
        "remote notify_url": (pay_params(keys, notify_url="https://shop.example/notify"), "invalid-parameter"),
        "bad charset": (resign({**good, "charset": "latin-1"}, keys.app), "invalid-charset"),
    }
    for why, (params, code) in cases.items():
        response = get(client, params)
        assert response.status_code == 200, why
        assert error_code(response) == code, why
    page = get(client, cases["bad signature"][0]).get_data(as_text=True)
    assert "isv.invalid-signature" in page and "SIMULATOR" in page and "moves no money" in page
    assert sim.trades() == []
    checkout(client, good)


def test_checkout_page_and_a_repeated_request(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    location = checkout(client, pay_params(keys, "C1", "12.34", subject="Oolong <b>"))
    page = client.get(location).get_data(as_text=True)
    for needle in ('id="pay"', 'id="cancel"', 'id="timeout"', "12.34", "Oolong &lt;b&gt;", "Tea Shop",
                   'name="action"', "moves no money"):
        assert needle in page
    assert checkout(client, pay_params(keys, "C1", "12.34", subject="Oolong <b>")) == location  # same trade
    assert error_code(get(client, pay_params(keys, "C1", "1.00", subject="Oolong <b>"))) == "ACQ.CONTEXT_INCONSISTENT"
    assert client.post(location, data={"action": "pay"}).status_code == 200  # no return_url: a "paid" page
    assert error_code(get(client, pay_params(keys, "C1", "12.34", subject="Oolong <b>"))) == "ACQ.TRADE_HAS_SUCCESS"
    assert client.get("/checkout/2026000000000000000000000000").status_code == 404
    trade = sim.trade("C1")
    assert trade is not None and trade.status == "TRADE_SUCCESS" and trade.paid_at is not None
    assert trade.paid_at.utcoffset() == timedelta(hours=8)
    assert re.fullmatch(trade.created_at.strftime("%Y%m%d") + r"\d{20}", trade.trade_no)


# -- server-side APIs (through the WSGI app; the library's client against a server: the delivery tests) -----


def test_trade_apis_follow_the_cashier(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    query = {"out_trade_no": "Q1"}
    location = checkout(client, pay_params(keys, "Q1", "9.90"))
    # Created by the pay request, but unknown to the APIs until the buyer acts on the cashier page.
    assert api(client, keys, "alipay.trade.query", query)["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    assert api(client, keys, "alipay.trade.close", query)["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    client.post(location, data={"action": "cancel"})
    answer = api(client, keys, "alipay.trade.query", query)
    assert (answer["code"], answer["trade_status"], answer["total_amount"]) == ("10000", "WAIT_BUYER_PAY", "9.90")
    client.post(location, data={"action": "pay"})
    answer = api(client, keys, "alipay.trade.query", {"trade_no": location.rsplit("/", 1)[1]})
    assert (answer["trade_status"], answer["buyer_pay_amount"], answer["out_trade_no"]) == \
        ("TRADE_SUCCESS", "9.90", "Q1")
    assert api(client, keys, "alipay.trade.close", query)["sub_code"] == "ACQ.TRADE_STATUS_ERROR"

    def refund(amount: str, request_no: str) -> dict[str, Any]:
        return api(client, keys, "alipay.trade.refund", {**query, "refund_amount": amount,
                                                          "out_request_no": request_no})

    assert (refund("3.00", "r1")["fund_change"], refund("3.00", "r1")["fund_change"]) == ("Y", "N")
    assert refund("3.00", "r1")["refund_fee"] == "3.00"
    assert refund("4.00", "r1")["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert refund("7.00", "r2")["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert refund("9.9", "r2")["sub_code"] == "ACQ.INVALID_PARAMETER"
    assert api(client, keys, "alipay.trade.query", query)["trade_status"] == "TRADE_SUCCESS"  # partial
    answer = refund("6.90", "r2")
    assert (answer["fund_change"], answer["refund_fee"]) == ("Y", "9.90")
    assert api(client, keys, "alipay.trade.query", query)["trade_status"] == "TRADE_CLOSED"  # fully refunded
    assert refund("0.01", "r3")["sub_code"] == "ACQ.TRADE_STATUS_ERROR"
    found = api(client, keys, "alipay.trade.fastpay.refund.query", {**query, "out_request_no": "r1"})
    assert (found["refund_status"], found["refund_amount"], found["total_amount"]) == ("REFUND_SUCCESS", "3.00", "9.90")
    unknown = api(client, keys, "alipay.trade.fastpay.refund.query", {**query, "out_request_no": "nope"})
    assert unknown["code"] == "10000" and "refund_status" not in unknown
    trade = sim.trade("Q1")
    assert trade is not None and trade.refunded_amount == Decimal("9.90") and trade.status == "TRADE_CLOSED"


def test_closing_and_timing_out_unpaid_trades(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    for number in ("K1", "K2"):
        location = checkout(client, pay_params(keys, number))
        client.post(location, data={"action": "cancel" if number == "K1" else "timeout"})
    answer = api(client, keys, "alipay.trade.close", {"out_trade_no": "K1"})
    assert answer["code"] == "10000" and answer["out_trade_no"] == "K1"
    assert api(client, keys, "alipay.trade.close", {"out_trade_no": "K1"})["code"] == "10000"  # idempotent
    assert api(client, keys, "alipay.trade.query", {"out_trade_no": "K2"})["trade_status"] == "TRADE_CLOSED"
    location = "/checkout/" + sim.trade("K1").trade_no  # type: ignore[union-attr]
    assert error_code(client.post(location, data={"action": "pay"})) == "ACQ.TRADE_HAS_CLOSE"


def test_api_errors_are_error_responses(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    params = config(keys).protocol().signed_params("alipay.trade.query", {"out_trade_no": "X"})
    bad = {**params, "sign": params["sign"][:-8] + "AAAAAAA="}
    answer = api(client, keys, "alipay.trade.query", {}, params=bad)
    assert (answer["error"], answer["code"], answer["sub_code"]) == (True, "40002", "isv.invalid-signature")
    unknown_app = resign({**params, "app_id": "2021000000009999"}, keys.app)
    answer = api(client, keys, "alipay.trade.query", {}, params=unknown_app, verify=False)  # unsigned
    assert (answer["error"], answer["sub_code"]) == (True, "isv.invalid-app-id")
    other = config(keys).protocol().signed_params("alipay.trade.pay", {"out_trade_no": "X"})
    answer = api(client, keys, "alipay.trade.pay", {}, params=other)
    assert answer["sub_code"] == "isv.invalid-method"
    nothing = config(keys).protocol().signed_params("alipay.trade.query", {})
    assert api(client, keys, "alipay.trade.query", {}, params=nothing)["sub_code"] == "ACQ.INVALID_PARAMETER"


# -- persistence, configuration, the CLI -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state.sqlite3", "state.db"])
def test_state_survives_a_restart(keys: Keys, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    sim = make_sim(keys, state_path=path)
    client = Client(sim)
    location = checkout(client, pay_params(keys, "P1", "5.00"))
    client.post(location, data={"action": "pay"})
    api(client, keys, "alipay.trade.refund", {"out_trade_no": "P1", "refund_amount": "1.00", "out_request_no": "r1"})
    legacy_location = checkout(client, legacy_params("LP1", return_url="http://127.0.0.1:9/return"))
    return_url = client.post(legacy_location, data={"action": "pay"}).headers["Location"]
    return_id = dict(parse_qsl(urlsplit(return_url).query))["notify_id"]
    before = sim.trades()
    sim.close()

    sim = make_sim(keys, state_path=path)
    try:
        client = Client(sim)
        assert sim.trades() == before
        answer = api(client, keys, "alipay.trade.query", {"out_trade_no": "P1"})
        assert (answer["trade_status"], answer["total_amount"]) == ("TRADE_SUCCESS", "5.00")
        again = api(client, keys, "alipay.trade.refund",
                    {"out_trade_no": "P1", "refund_amount": "1.00", "out_request_no": "r1"})
        assert (again["fund_change"], again["refund_fee"]) == ("N", "1.00")
        verify = client.get(f"/gateway.do?service=notify_verify&partner={PARTNER}&notify_id={return_id}")
        assert verify.get_data() == b"true"
        location = checkout(client, pay_params(keys, "P2"))
        assert location.rsplit("/", 1)[1] not in {t.trade_no for t in before}
    finally:
        sim.close()


def test_configuration_errors(keys: Keys, tmp_path: Path) -> None:
    public = keys.app.public_key().export_key().decode()
    with pytest.raises(ValueError, match="app_id"):
        Merchant(app_id="123", public_key=public)
    with pytest.raises(ValueError, match="public key"):
        Merchant(app_id=APP_ID, public_key=keys.app_private_pem)
    with pytest.raises(ValueError, match="md5_key"):
        LegacyMerchant(partner=PARTNER)
    with pytest.raises(ValueError, match="time_scale"):
        make_sim(keys, time_scale=0)
    with pytest.raises(ValueError, match="registered twice"):
        make_sim(keys, merchants=[Merchant(app_id=APP_ID, public_key=public)] * 2)
    with pytest.raises(ValueError, match="state_path"):
        make_sim(keys, state_path=tmp_path / "state.txt")
    sim = make_sim(keys)
    try:
        with pytest.raises(ValueError, match="loopback"):
            sim.serve(host="0.0.0.0")
    finally:
        sim.close()


@pytest.mark.parametrize("argv, message", [
    (["--app-id", APP_ID], "one --app-public-key"),
    (["--partner", PARTNER], "--md5-key"),
    (["--md5-key", MD5_KEY], "--partner"),
    (["--host", "0.0.0.0"], "loopback"),
    (["--port", "70000"], "--port"),
    (["--time-scale", "0"], "--time-scale"),
    (["--state", "x.txt"], ".sqlite3"),
    (["--state", "x.json"], "x.sqlite3"),
    (["--keep-deliveries", "0"], "--keep-deliveries"),
    (["--app-id", APP_ID, "--app-public-key", "/nonexistent/key.pem"], "cannot read"),
    (["--partner", "123", "--md5-key", MD5_KEY], "partner"),
])
def test_cli_flags_fail_with_a_fix(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        configure(parser, parser.parse_args(argv))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_keeps_generated_keys_next_to_the_state(keys: Keys, tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(keys.app.public_key().export_key().decode())
    argv = ["--app-id", APP_ID, "--app-public-key", str(key_file), "--state", str(tmp_path / "s.sqlite3"),
            "--partner", PARTNER, "--md5-key", MD5_KEY]
    parser = build_parser()
    first = configure(parser, parser.parse_args(argv))
    first.close()
    assert (tmp_path / "alipay-simulator-alipay-private.pem").stat().st_mode & 0o777 == 0o600
    second = configure(parser, parser.parse_args(argv))
    second.close()
    assert first.alipay_public_key_pem == second.alipay_public_key_pem
    assert first.legacy_public_key_pem == second.legacy_public_key_pem


def test_admin_page_and_fault_switches(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    checkout(client, pay_params(keys, "AD1"))
    page = client.get("/").get_data(as_text=True)
    assert "AD1" in page and 'id="faults"' in page and "SIMULATOR" in page and "BEGIN PUBLIC KEY" in page
    response = client.post("/faults", data={"duplicate_notify": "on", "tamper_amount": "on"})
    assert response.status_code == 303
    assert (sim.faults.duplicate_notify, sim.faults.tamper_amount, sim.faults.out_of_order) == (True, True, False)
    assert 'id="fault-duplicate_notify" name="duplicate_notify" value="on" checked' in client.get("/").get_data(
        as_text=True)
    client.post("/faults", data={})
    assert not sim.faults.duplicate_notify


def test_legacy_config_against_the_simulator_key(sim: Simulator) -> None:
    """LegacyConfig accepts the simulator's legacy public key (1024-bit, not the merchant's own)."""
    LegacyConfig(partner=RSA_PARTNER, sign_type="RSA", private_key=LEGACY_MERCHANT_KEY.export_key().decode(),
                 alipay_public_key=sim.legacy_public_key_pem)


def test_post_forms_from_the_library_helpers(sim: Simulator, keys: Keys, tmp_path: Path) -> None:
    """page_pay_form / direct_pay_form: the params as hidden inputs, the charset in the action URL."""
    from alipay_middleware import Alipay

    def post_form(form: str) -> Any:
        action = html.unescape(re.search(r'action="([^"]*)"', form).group(1))  # type: ignore[union-attr]
        fields = {html.unescape(k): html.unescape(v)
                  for k, v in re.findall(r'name="([^"]*)" value="([^"]*)"', form)}
        charset = "gbk" if "_input_charset=gbk" in action else "utf-8"
        body = urlencode(fields, quote_via=quote_plus, encoding=charset)
        return Client(sim).post("/gateway.do?" + urlsplit(action).query, data=body.encode("ascii"),
                                content_type="application/x-www-form-urlencoded")

    openapi_shop = Alipay(config(keys), ledger=f"sqlite:///{tmp_path / 'a.sqlite3'}")
    legacy_shop = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY, input_charset="gbk"),
                         ledger=f"sqlite:///{tmp_path / 'b.sqlite3'}")
    try:
        form = openapi_shop.helper("http://127.0.0.1:9").page_pay_form(
            out_trade_no="F1", total_amount="1.00", subject='Tea & "茶" <b>', goods_detail=[{"goods_name": "&amp;"}])
        assert post_form(form).status_code == 303
        form = legacy_shop.helper("http://127.0.0.1:9").direct_pay_form(out_trade_no="F2", total_fee="2.00",
                                                                          subject="茶叶 & more")
        assert post_form(form).status_code == 303
        assert [(t.subject, t.charset) for t in sim.trades()] == [('Tea & "茶" <b>', "utf-8"), ("茶叶 & more", "gbk")]
    finally:
        openapi_shop.close()
        legacy_shop.close()


def test_cli_runs_and_prints_what_to_configure(tmp_path: Path) -> None:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "alipay_middleware.simulator", "--port", "0",
                                "--keys-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
    finally:
        process.terminate()
        process.communicate(timeout=10)
    text = "".join(lines)
    assert "SIMULATOR" in text and re.search(r"gateway URL:\s+http://127\.0\.0\.1:\d+/gateway\.do", text)
    assert "BEGIN PUBLIC KEY" in text and (tmp_path / "alipay-simulator-alipay-private.pem").exists()


def test_keys_dir_also_holds_the_alipay_public_key_to_configure(tmp_path: Path) -> None:
    from alipay_middleware.simulator.__main__ import build_parser, configure

    parser = build_parser()
    simulator = configure(parser, parser.parse_args(["--port", "0", "--keys-dir", str(tmp_path)]))
    try:
        assert (tmp_path / "alipay-public-key.pem").read_text() == simulator.alipay_public_key_pem
        assert (tmp_path / "alipay-legacy-public-key.pem").read_text() == simulator.legacy_public_key_pem
    finally:
        simulator.close()
    # A restart keeps the same keys, so the configured public key stays right.
    again = configure(parser, parser.parse_args(["--port", "0", "--keys-dir", str(tmp_path)]))
    try:
        assert again.alipay_public_key_pem == (tmp_path / "alipay-public-key.pem").read_text()
    finally:
        again.close()
