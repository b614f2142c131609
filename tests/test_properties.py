"""Property tests over both protocols (the Open Platform and the legacy service): signed notifications
round-trip exactly in both charsets, signatures verify and any change fails them, and nothing a stranger
sends to the notify or return path produces a 5xx or an exception.

The module-scoped ``side`` fixture is parametrised over ``openapi`` and ``legacy``: one merchant of that
protocol (an in-memory ledger; the legacy one's origin check goes to conftest's ``GatewayStub``) and how its
notifications are made and read. A property that only one protocol has takes that protocol's merchant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alipay_middleware import Alipay, LegacyConfig, Rejection
from alipay_middleware.wire.form import format_amount, parse_amount
from alipay_middleware.wire.signing import Md5Signer, RsaSigner, RsaVerifier, sign_string
from conftest import (
    MD5_KEY,
    PARTNER,
    ASGIClient,
    GatewayStub,
    Keys,
    WSGIClient,
    inner_asgi,
    inner_wsgi,
    legacy_body,
    legacy_fields,
    make_config,
    notify_fields,
    signed_body,
)

FIELD_NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _gbk_ok(text: str) -> bool:
    try:
        return text.encode("gbk").decode("gbk") == text
    except UnicodeError:
        return False


@dataclass(frozen=True)
class Side:
    """One protocol's merchant, and how its notifications are made and read."""

    alipay: Alipay
    #: fresh notification fields, unsigned, for a body in this charset
    fields: Callable[[str], dict[str, str]]
    #: the names an extra field may not take: the signature's, and the one that names the charset
    reserved: tuple[str, ...]
    #: the signed form body of these fields in this charset
    body: Callable[[Mapping[str, str], str], bytes]
    #: the Content-Type a body in this charset arrives with (None: the body names its charset)
    content_type: Callable[[str], str | None]
    #: a signed notification the notify path takes (the legacy one's id issued to the origin check)
    valid_body: Callable[[], bytes]


def _merchant(config: Any) -> Alipay:
    alipay = Alipay(config, ledger=":memory:")
    alipay.order_amount(lambda out_trade_no: Decimal("9.90"))
    alipay.on_paid(lambda event: None)
    return alipay


@pytest.fixture(scope="module")
def stub() -> Iterator[GatewayStub]:
    gateway = GatewayStub()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def openapi_alipay(keys: Keys) -> Iterator[Alipay]:
    alipay = _merchant(make_config(keys))
    yield alipay
    alipay.close()


@pytest.fixture(scope="module")
def legacy_alipay(stub: GatewayStub) -> Iterator[Alipay]:
    alipay = _merchant(LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=stub.url, verify_timeout=1.0))
    yield alipay
    alipay.close()


@pytest.fixture(scope="module", params=["openapi", "legacy"])
def side(request: pytest.FixtureRequest, keys: Keys) -> Side:
    if request.param == "openapi":
        valid = signed_body(notify_fields("T1", gmt_payment="2024-01-01 12:00:06"), keys.alipay)
        return Side(alipay=request.getfixturevalue("openapi_alipay"),
                    fields=lambda charset: notify_fields("T1", charset=charset),
                    reserved=("sign", "charset"),
                    body=lambda fields, charset: signed_body(fields, keys.alipay, charset=charset),
                    content_type=lambda charset: None,
                    valid_body=lambda: valid)
    stub = request.getfixturevalue("stub")

    def valid_legacy_body() -> bytes:
        fields = legacy_fields("L1", "9.90")
        stub.issue(fields["notify_id"])
        return legacy_body(fields)

    return Side(alipay=request.getfixturevalue("legacy_alipay"),
                fields=lambda charset: legacy_fields("L1"),
                reserved=("sign", "sign_type"),
                body=lambda fields, charset: legacy_body(fields, charset=charset),
                content_type=lambda charset: f"application/x-www-form-urlencoded; charset={charset}",
                valid_body=valid_legacy_body)


@pytest.fixture(scope="module")
def clients(side: Side) -> Iterator[tuple[WSGIClient, ASGIClient]]:
    wsgi = WSGIClient(side.alipay.wsgi(inner_wsgi))
    asgi = ASGIClient(side.alipay.asgi(inner_asgi))
    yield (wsgi, asgi)
    asgi.close()


# -- signing ---------------------------------------------------------------------------------------------

@SETTINGS
@given(extra=st.dictionaries(FIELD_NAMES, TEXT, max_size=8), charset=st.sampled_from(["utf-8", "gbk"]))
def test_signed_notifications_round_trip_exactly(side, extra, charset):
    fields = side.fields(charset)
    for name, value in extra.items():
        if name not in side.reserved and (charset == "utf-8" or _gbk_ok(value)):
            fields[name] = value
    body = side.body(fields, charset)
    parsed, detected = side.alipay.protocol.parse(body, side.content_type(charset))
    assert detected == charset
    assert {k: v for k, v in parsed.items() if k != "sign"} == fields
    side.alipay.protocol.verify_notify(parsed, detected)  # raises on failure


def _signing(sign_type: str, keys: Keys) -> tuple[Any, Any, Any, tuple[str, ...]]:
    """(signer, its verifier, a verifier that must refuse its signatures, the names the sign string leaves out)"""
    if sign_type == "MD5":  # the legacy service: one shared key; another key refuses
        return Md5Signer(MD5_KEY), Md5Signer(MD5_KEY), Md5Signer("0" * 32), ("sign", "sign_type")
    public = keys.app.public_key()
    other = RsaVerifier(public, "RSA" if sign_type == "RSA2" else "RSA2")  # the hash is pinned
    return RsaSigner(keys.app, sign_type), RsaVerifier(public, sign_type), other, ("sign",)


@pytest.mark.parametrize("sign_type", ["RSA2", "RSA", "MD5"])
@SETTINGS
@given(params=st.dictionaries(FIELD_NAMES, TEXT, min_size=1, max_size=10))
def test_sign_then_verify_and_any_change_fails(keys, sign_type, params):
    signer, verifier, wrong, exclude = _signing(sign_type, keys)
    message = sign_string(params, exclude).encode("utf-8")
    signature = signer.sign(message)
    assert verifier.verify(message, signature)
    assert not verifier.verify(message + b"x", signature)
    assert not wrong.verify(message, signature)


# -- nothing a stranger sends gets a 5xx ---------------------------------------------------------------------

@SETTINGS
@given(body=st.binary(max_size=600),
       content_type=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)))
def test_no_random_body_gets_a_5xx_on_either_front(clients, body, content_type):
    for client in clients:
        response = client.request("POST", "/alipay/notify", body, content_type=content_type or None)
        assert response.status in (400, 413), (client.kind, response)
        assert response.body == b"fail"


@SETTINGS
@given(data=st.data())
def test_mutated_signed_bodies_never_get_a_5xx(clients, side, data):
    body = bytearray(side.valid_body())
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


@SETTINGS
@given(query=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300))
def test_no_random_return_query_breaks_the_page(clients, query):
    for client in clients:
        response = client.request("GET", "/alipay/return", query=query.replace(" ", "+"))
        assert response.status == 200, (client.kind, response)
        assert b"return=None" in response.body


def test_parse_rejections_are_rejections_not_crashes(side):
    for raw in (b"=", b"&&&", b"a", b"%", b"a=%F", b"\xff=\xff", b"k=v&k=v", b"a b=c"):
        with pytest.raises(Rejection):
            side.alipay.protocol.parse(raw, None)


def test_field_name_with_trailing_newline_is_refused(side):
    with pytest.raises(Rejection):
        side.alipay.protocol.parse(b"a=1&sign%0A=x", None)


@pytest.mark.parametrize("charset_field", [b"%tf-8", b"utf-8%", b"%2", b"%zz"])
def test_bad_escape_in_the_charset_field_is_a_rejection(openapi_alipay, charset_field):
    # Found by the mutation test above: the charset field is read before the body's escapes are checked.
    with pytest.raises(Rejection) as caught:
        openapi_alipay.protocol.parse(b"a=1&charset=" + charset_field + b"&b=2", None)
    assert caught.value.reason == "malformed_body"


# -- amounts and escapes (no protocol) -----------------------------------------------------------------------

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
