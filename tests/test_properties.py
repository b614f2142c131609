"""Property tests: sign/verify round trips, and no input makes the notify path answer 5xx."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alipay_middleware import Alipay, Rejection
from alipay_middleware.wire.form import format_amount, parse_amount
from alipay_middleware.wire.signing import RsaSigner, RsaVerifier, sign_string
from conftest import ASGIClient, WSGIClient, make_config, notify_fields, signed_body

FIELD_NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
GBK_TEXT = TEXT.filter(lambda s: _gbk_ok(s))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _gbk_ok(text: str) -> bool:
    try:
        return text.encode("gbk").decode("gbk") == text
    except UnicodeError:
        return False


@pytest.fixture(scope="module")
def alipay(keys):
    instance = Alipay(make_config(keys), ledger=":memory:")
    instance.order_amount(lambda out_trade_no: Decimal("9.90"))
    instance.on_paid(lambda event: None)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def clients(alipay):
    wsgi = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    asgi = ASGIClient(alipay.asgi(lambda scope, receive, send: None))
    yield (wsgi, asgi)
    asgi.close()


@SETTINGS
@given(extra=st.dictionaries(FIELD_NAMES, TEXT, max_size=8), charset=st.sampled_from(["utf-8", "gbk"]))
def test_signed_notifications_round_trip_exactly(alipay, keys, extra, charset):
    fields = notify_fields("T1", charset=charset)
    for name, value in extra.items():
        if name not in ("sign", "charset") and (charset == "utf-8" or _gbk_ok(value)):
            fields[name] = value
    body = signed_body(fields, keys.alipay, charset=charset)
    parsed, detected = alipay.protocol.parse(body, None)
    assert detected == charset
    assert {k: v for k, v in parsed.items() if k != "sign"} == fields
    alipay.protocol.verify_notify(parsed, detected)  # raises on failure


@SETTINGS
@given(params=st.dictionaries(FIELD_NAMES, TEXT, min_size=1, max_size=10), sign_type=st.sampled_from(["RSA2", "RSA"]))
def test_sign_then_verify_and_any_change_fails(keys, params, sign_type):
    signer = RsaSigner(keys.app, sign_type)
    verifier = RsaVerifier(keys.app.public_key(), sign_type)
    message = sign_string(params).encode("utf-8")
    signature = signer.sign(message)
    assert verifier.verify(message, signature)
    assert not verifier.verify(message + b"x", signature)
    other = RsaVerifier(keys.app.public_key(), "RSA" if sign_type == "RSA2" else "RSA2")
    assert not other.verify(message, signature)  # the hash is pinned


@SETTINGS
@given(body=st.binary(max_size=600),
       content_type=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)))
def test_no_random_body_gets_a_5xx_on_either_front(clients, body, content_type):
    for client in clients:
        response = client.request("POST", "/alipay/notify", body, content_type=content_type or None)
        assert response.status in (400, 413), (client.kind, response)
        assert response.body == b"fail"


@pytest.fixture(scope="module")
def valid_body(keys):
    return signed_body(notify_fields("T1", gmt_payment="2024-01-01 12:00:06"), keys.alipay)


@SETTINGS
@given(data=st.data())
def test_mutated_signed_bodies_never_get_a_5xx(clients, valid_body, data):
    body = bytearray(valid_body)
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


@given(cents=st.integers(1, 10_000_000_000))
def test_amount_format_and_parse_are_inverse(cents):
    amount = Decimal(cents) / 100
    text = format_amount(amount)
    assert parse_amount(text) == amount and text.count(".") == 1 and len(text.split(".")[1]) == 2


@given(text=st.text(max_size=20))
def test_parse_amount_accepts_only_amounts(text):
    try:
        value = parse_amount(text)
    except ValueError:
        return
    assert value == Decimal(text) and value >= 0


def test_parse_rejections_are_rejections_not_crashes(alipay):
    for raw in (b"=", b"&&&", b"a", b"%", b"a=%F", b"\xff=\xff", b"k=v&k=v", b"a b=c"):
        with pytest.raises(Rejection):
            alipay.protocol.parse(raw, None)


@given(data=st.binary(max_size=200))
def test_unescape_equals_the_standard_library(data):
    from urllib.parse import unquote_to_bytes

    from alipay_middleware.wire.form import _BAD_ESCAPE, unescape

    if _BAD_ESCAPE.search(data):
        return  # rejected before unescaping
    assert unescape(data) == unquote_to_bytes(data.replace(b"+", b" "))


@pytest.mark.parametrize("text", ["9.90\n", " 9.90", "09.90", "1e3", "9.", ".9"])
def test_amount_patterns_match_whole_strings_only(text):
    with pytest.raises(ValueError):
        parse_amount(text)


def test_field_name_with_trailing_newline_is_refused(alipay):
    with pytest.raises(Rejection):
        alipay.protocol.parse(b"a=1&sign%0A=x", None)


@pytest.mark.parametrize("charset_field", [b"%tf-8", b"utf-8%", b"%2", b"%zz"])
def test_bad_escape_in_the_charset_field_is_a_rejection(alipay, charset_field):
    # Found by the mutation test above: the charset field is read before the body's escapes are checked.
    with pytest.raises(Rejection) as caught:
        alipay.protocol.parse(b"a=1&charset=" + charset_field + b"&b=2", None)
    assert caught.value.reason == "malformed_body"
