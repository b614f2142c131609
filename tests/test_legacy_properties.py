"""Property tests for the legacy service: MD5 round trips in both charsets, and nothing a stranger sends
to the notify or return path of a legacy merchant produces a 5xx or an exception."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alipay_middleware import Alipay, LegacyConfig
from alipay_middleware.wire.signing import Md5Signer, sign_string
from conftest import (
    MD5_KEY,
    PARTNER,
    ASGIClient,
    GatewayStub,
    WSGIClient,
    inner_asgi,
    inner_wsgi,
    legacy_body,
    legacy_fields,
)

FIELD_NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _gbk_ok(text: str) -> bool:
    try:
        return text.encode("gbk").decode("gbk") == text
    except UnicodeError:
        return False


@pytest.fixture(scope="module")
def stub():
    gateway = GatewayStub()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def alipay(stub):
    instance = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=stub.url, verify_timeout=1.0),
                      ledger=":memory:")
    instance.order_amount(lambda out_trade_no: Decimal("9.90"))
    instance.on_paid(lambda event: None)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def clients(alipay):
    wsgi = WSGIClient(alipay.wsgi(inner_wsgi))
    asgi = ASGIClient(alipay.asgi(inner_asgi))
    yield (wsgi, asgi)
    asgi.close()


@SETTINGS
@given(extra=st.dictionaries(FIELD_NAMES, TEXT, max_size=8), charset=st.sampled_from(["utf-8", "gbk"]))
def test_signed_legacy_notifications_round_trip_exactly(alipay, extra, charset):
    fields = legacy_fields("L1")
    for name, value in extra.items():
        if name not in ("sign", "sign_type") and (charset == "utf-8" or _gbk_ok(value)):
            fields[name] = value
    body = legacy_body(fields, charset=charset)
    parsed, detected = alipay.protocol.parse(body, f"application/x-www-form-urlencoded; charset={charset}")
    assert detected == charset
    assert {k: v for k, v in parsed.items() if k != "sign"} == fields
    alipay.protocol.verify_notify(parsed, detected)  # raises on failure


@SETTINGS
@given(params=st.dictionaries(FIELD_NAMES, TEXT, min_size=1, max_size=10))
def test_md5_sign_then_verify_and_any_change_fails(params):
    signer = Md5Signer(MD5_KEY)
    message = sign_string(params, ("sign", "sign_type")).encode("utf-8")
    signature = signer.sign(message)
    assert signer.verify(message, signature)
    assert not signer.verify(message + b"x", signature)
    assert not Md5Signer("0" * 32).verify(message, signature)


@SETTINGS
@given(body=st.binary(max_size=600),
       content_type=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)))
def test_no_random_body_gets_a_5xx_on_either_front(clients, body, content_type):
    for client in clients:
        response = client.request("POST", "/alipay/notify", body, content_type=content_type or None)
        assert response.status in (400, 413), (client.kind, response)
        assert response.body == b"fail"


@SETTINGS
@given(query=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300))
def test_no_random_return_query_breaks_the_page(clients, query):
    for client in clients:
        response = client.request("GET", "/alipay/return", query=query.replace(" ", "+"))
        assert response.status == 200, (client.kind, response)
        assert b"return=None" in response.body


@SETTINGS
@given(data=st.data())
def test_mutated_signed_bodies_never_get_a_5xx(clients, stub, data):
    fields = legacy_fields("L1", "9.90")
    stub.issue(fields["notify_id"])
    body = bytearray(legacy_body(fields))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        operation = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from(list(b"&=%+ \x00\xff0aZ")))
        if operation == "flip":
            body[position] = byte
        elif operation == "insert":
            body.insert(position, byte)
        else:
            del body[position]
    for client in clients:
        response = client.request("POST", "/alipay/notify", bytes(body))
        assert response.status in (200, 400, 409), (client.kind, response)
