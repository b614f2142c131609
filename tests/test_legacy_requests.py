"""The legacy service's requests: known-answer vectors (MD5 and RSA/SHA1), LegacyConfig validation, and
the ``create_direct_pay_by_user`` pay helper (URLs, forms, GBK, extras, ``exter_invoke_ip``) through both
fronts. Callbacks and the notify_verify origin check are tested in test_legacy.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import pytest
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from alipay_middleware import Alipay, LegacyConfig
from alipay_middleware.fronts.asgi import asgi_client
from alipay_middleware.fronts.wsgi import wsgi_client
from alipay_middleware.protocols.base import SettingTypeError
from alipay_middleware.protocols.helper import client_address
from alipay_middleware.protocols.legacy import LEGACY_ALIPAY_PUBLIC_KEY, sign_request
from alipay_middleware.wire.keys import load_private_key, load_public_key
from alipay_middleware.wire.signing import Md5Signer, RsaSigner, RsaVerifier, sign_string
from conftest import MD5_KEY, PARTNER, ASGIClient, GatewayStub, Response, WSGIClient

VECTOR_DIR = Path(__file__).parent / "vectors"
MD5_VECTORS = json.loads((VECTOR_DIR / "legacy-md5-vectors.json").read_text(encoding="utf-8"))
RSA_VECTORS = json.loads((VECTOR_DIR / "legacy-rsa-vectors.json").read_text(encoding="utf-8"))
RULE = ("sign", "sign_type")

# The omnipay vector is written in PHP terms (null/false dropped, true -> "1"); its Python equivalent:
OMNIPAY_PARAMS = {"aaa": "111", "bbb": "2222", "ccc": "3333", "dd": "", "ggg": "1"}
# A retired API (wappaygw, alipay.wap.trade.create.direct) that signs a FIXED, unsorted field order.
OLD_WAP = "lxneng-oldwap-notify-md5"


def _md5_vector(vector_id: str) -> dict[str, Any]:
    return next(v for v in MD5_VECTORS["vectors"] if v["id"] == vector_id)


def _params_of(vector: Mapping[str, Any]) -> dict[str, str] | None:
    if "params_php" in vector:
        return dict(OMNIPAY_PARAMS)
    return dict(vector["params"]) if "params" in vector else None


# Vectors with params (or a ready sign string), minus the retired fixed-order API.
STRING_VECTORS = [v for v in MD5_VECTORS["vectors"]
                  if ("params" in v or "params_php" in v) and v["id"] != OLD_WAP]
SIGNED_VECTORS = [v for v in MD5_VECTORS["vectors"]
                  if "key" in v and ("params" in v or "params_php" in v or "sign_string" in v) and v["id"] != OLD_WAP]
URL_VECTORS = [v for v in MD5_VECTORS["vectors"] if "full_signed_url" in v]


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for v in vectors]


def _expected_sign(vector: Mapping[str, Any]) -> str:
    """The vector's signature: given as expected_sign, or (a notification's) in its params."""
    return str(vector.get("expected_sign") or vector["params"]["sign"])


def _message(vector: Mapping[str, Any]) -> str:
    """What a vector's signature covers: our sign string of its params, else its given sign string."""
    params = _params_of(vector)
    if params is None:
        return str(vector["sign_string"])
    return sign_string(params, (*RULE, *vector.get("ignores", ())))


# -- 1. vectors: MD5 ---------------------------------------------------------------------------------------

def test_vector_files_hold_what_this_module_expects():
    assert set(_ids(STRING_VECTORS)) == {"chloerei-sign-params", "chloerei-notify-md5", "omnipay-signer-md5",
                                         "omnipay-signer-content", "odoo-notification-md5"}
    assert set(_ids(SIGNED_VECTORS)) == {"chloerei-md5-string", "chloerei-sign-params", "chloerei-notify-md5",
                                         "omnipay-signer-md5", "odoo-notification-md5"}
    assert len(URL_VECTORS) == 13 and all(v["id"].startswith("chloerei-url-") for v in URL_VECTORS)
    assert {v["id"] for v in MD5_VECTORS["vectors"]} == {*_ids(STRING_VECTORS), *_ids(SIGNED_VECTORS),
                                                         *_ids(URL_VECTORS), OLD_WAP}


@pytest.mark.parametrize("vector", STRING_VECTORS, ids=_ids(STRING_VECTORS))
def test_md5_vector_sign_string(vector):
    assert _message(vector) == vector["expected_sign_string"]


@pytest.mark.parametrize("vector", SIGNED_VECTORS, ids=_ids(SIGNED_VECTORS))
def test_md5_vector_signature_is_reproduced_and_verifies(vector):
    signer = Md5Signer(vector["key"])
    message = _message(vector).encode("utf-8")
    assert signer.sign(message) == _expected_sign(vector)
    assert signer.verify(message, _expected_sign(vector)) is True
    if "also" in vector:  # the same params under another key
        other = Md5Signer(vector["also"]["key"])
        assert other.sign(message) == vector["also"]["expected_sign"]
        assert signer.verify(message, vector["also"]["expected_sign"]) is False


NEGATIVES: dict[str, Callable[[bytes, str, str], tuple[bytes, str]]] = {
    # (message, right signature, key) -> (message, signature) that must not verify
    "sign-danger": lambda message, sign, key: (message, "danger"),
    "added-param": lambda message, sign, key: (message, sign),  # the message changes: see _negative
    "uppercase-of-another-value": lambda message, sign, key: (message, Md5Signer(key).sign(message + b"x").upper()),
    # Alipay sends lowercase hex; the signer documents that only lowercase is accepted.
    "uppercase-of-the-right-value": lambda message, sign, key: (message, sign.upper()),
    "non-ascii-signature": lambda message, sign, key: (message, sign[:-1] + "\u00e9"),
    "fullwidth-digit": lambda message, sign, key: (message, sign[:-1] + "\uff11"),
    "truncated": lambda message, sign, key: (message, sign[:-1]),
    "empty": lambda message, sign, key: (message, ""),
}


def _negative(vector: Mapping[str, Any], kind: str) -> tuple[bytes, str]:
    message = _message(vector)
    if kind == "added-param":
        params = _params_of(vector)
        message = (sign_string({**params, "danger": "danger"}, RULE) if params is not None
                   else message + "&danger=danger")
    return NEGATIVES[kind](message.encode("utf-8"), _expected_sign(vector), vector["key"])


@pytest.mark.parametrize("negative", list(NEGATIVES))
@pytest.mark.parametrize("vector", SIGNED_VECTORS, ids=_ids(SIGNED_VECTORS))
def test_md5_verify_rejects(vector, negative):
    message, signature = _negative(vector, negative)
    assert (message, signature) != (_message(vector).encode("utf-8"), _expected_sign(vector))
    assert Md5Signer(vector["key"]).verify(message, signature) is False


def test_md5_notify_vector_cases_on_the_signature_alone():
    # The notify_verify half of these cases runs end to end in test_legacy.py; here only the signature.
    vector = _md5_vector("chloerei-notify-md5")
    signer = Md5Signer(vector["key"])
    message = sign_string(vector["params"], RULE).encode()
    assert message == b"notify_id=1234"
    for case in vector["cases"]:
        assert signer.verify(message, case["sign"]) is (case["sign"] == _expected_sign(vector))


def test_retired_fixed_order_api_is_not_supported():
    """The old WAP API signed ``service, v, sec_id, notify_data`` in that fixed order; ours sorts.

    The vector itself is sound (its fixed-order string gives its signature), but no service this package
    speaks uses that rule, so the sorted string differs and the signature does not verify."""
    vector = _md5_vector(OLD_WAP)
    params = vector["params"]
    ours = sign_string(params, RULE)
    assert ours != vector["expected_sign_string"]
    assert ours.startswith("notify_data=")  # sorted: notify_data, sec_id, service, v
    fixed = "&".join(f"{k}={params[k]}" for k in ("service", "v", "sec_id", "notify_data"))
    assert fixed == vector["expected_sign_string"]
    signer = Md5Signer(vector["key"])
    assert signer.sign(fixed.encode()) == vector["expected_sign"]
    assert signer.verify(ours.encode(), vector["expected_sign"]) is False


@pytest.mark.parametrize("vector", URL_VECTORS, ids=_ids(URL_VECTORS))
def test_md5_url_vector_is_reproduced_by_sign_request(vector):
    query = urlsplit(vector["full_signed_url"]).query
    pairs = parse_qsl(query, strict_parsing=True, errors="strict")  # decodes once, like Alipay
    params = dict(pairs)
    assert len(params) == len(pairs)
    url_sign, url_sign_type = params.pop("sign"), params.pop("sign_type")
    assert (url_sign, url_sign_type) == (vector["expected_sign"], "MD5")
    assert sign_string(params, RULE) == vector["expected_sign_string_after_form_decoding"]
    signed = sign_request(params, Md5Signer(vector["key"]), "utf-8")
    assert signed["sign"] == vector["expected_sign"] and signed["sign_type"] == "MD5"
    assert list(signed) == [*sorted(params), "sign", "sign_type"]  # sorted, then sign, then sign_type last
    assert {k: v for k, v in signed.items() if k not in RULE} == params


def test_sign_request_drops_empty_values_and_signs_in_the_given_charset():
    params = {"subject": "茶", "body": "", "partner": PARTNER}
    signed = sign_request(params, Md5Signer(MD5_KEY), "gbk")
    assert list(signed) == ["partner", "subject", "sign", "sign_type"]
    message = f"partner={PARTNER}&subject=茶".encode("gbk")
    assert signed["sign"] == hashlib.md5(message + MD5_KEY.encode()).hexdigest()
    assert params == {"subject": "茶", "body": "", "partner": PARTNER}  # the caller's dict is untouched


def test_omnipay_content_vector_honours_its_ignored_key():
    vector = _md5_vector("omnipay-signer-content")
    assert sign_string(vector["params"], (*RULE, *vector["ignores"])) == vector["expected_sign_string"]
    assert "apple=jobs" in sign_string(vector["params"], RULE)  # only because that test ignores it


# -- 1. vectors: RSA (SHA1withRSA) ------------------------------------------------------------------------------

RSA_CASES = [(v, shape) for v in RSA_VECTORS["vectors"] for shape in ("as-given", "pkcs1", "pkcs8")]


def _pem_in_shape(pem: str, shape: str) -> str:
    if shape == "as-given":
        return pem
    return RSA.import_key(pem).export_key(pkcs=1 if shape == "pkcs1" else 8).decode()


def test_rsa_vectors_come_in_both_pem_shapes():
    headers = {v["id"]: v["private_key_pem"].splitlines()[0] for v in RSA_VECTORS["vectors"]}
    assert headers == {"chloerei-rsa-sha1": "-----BEGIN PRIVATE KEY-----",  # PKCS#8
                       "omnipay-rsa-sha1": "-----BEGIN RSA PRIVATE KEY-----"}  # PKCS#1
    assert "BEGIN RSA PRIVATE KEY" in _pem_in_shape(RSA_VECTORS["vectors"][0]["private_key_pem"], "pkcs1")
    assert "BEGIN PRIVATE KEY" in _pem_in_shape(RSA_VECTORS["vectors"][1]["private_key_pem"], "pkcs8")


@pytest.mark.parametrize("vector,shape", RSA_CASES, ids=[f"{v['id']}-{s}" for v, s in RSA_CASES])
def test_rsa_vector_signature_byte_for_byte(vector, shape):
    key = load_private_key(_pem_in_shape(vector["private_key_pem"], shape), "private_key")
    assert key.size_in_bits() == 1024
    assert RsaSigner(key, "RSA").sign(vector["sign_string"].encode()) == vector["expected_sign"]


@pytest.mark.parametrize("vector", RSA_VECTORS["vectors"], ids=_ids(RSA_VECTORS["vectors"]))
def test_rsa_vector_verifies_and_rejects_a_changed_string(vector):
    if "public_key_pem" in vector:
        public = load_public_key(vector["public_key_pem"])
        assert public.n == load_private_key(vector["private_key_pem"]).n
    else:
        public = load_private_key(vector["private_key_pem"]).public_key()
    verifier = RsaVerifier(public, "RSA")
    message = vector["sign_string"].encode()
    assert verifier.verify(message, vector["expected_sign"]) is True
    assert verifier.verify(b"danger" + message, vector["expected_sign"]) is False
    assert verifier.verify(message, vector["expected_sign"][:-4]) is False
    assert verifier.verify(message, "not base64!") is False
    # RSA is pinned to SHA-1 here: the same key under RSA2 (SHA-256) does not accept a SHA-1 signature.
    assert RsaVerifier(public, "RSA2").verify(message, vector["expected_sign"]) is False


def test_sign_request_with_rsa_reproduces_the_chloerei_signature():
    vector = RSA_VECTORS["vectors"][0]
    signer = RsaSigner(load_private_key(vector["private_key_pem"]), "RSA")
    signed = sign_request({"service": "test", "partner": "123"}, signer, "utf-8")
    assert signed == {"partner": "123", "service": "test", "sign": vector["expected_sign"], "sign_type": "RSA"}


def test_builtin_legacy_public_key_is_the_published_one():
    ours = load_public_key(LEGACY_ALIPAY_PUBLIC_KEY)
    published = load_public_key(RSA_VECTORS["alipay_legacy_rsa_public_key"]["pem"])
    assert (ours.n, ours.e) == (published.n, published.e)
    assert ours.size_in_bits() == 1024 and not ours.has_private()


# -- 2. LegacyConfig validation ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa1024() -> RSA.RsaKey:
    return RSA.generate(1024)


@pytest.fixture(scope="module")
def rsa2048() -> RSA.RsaKey:
    return RSA.generate(2048)


# Placeholders resolved in the test, since keys are fixtures.
OWN_PRIVATE, OWN_PUBLIC, BIG_PRIVATE = "<1024-bit private>", "<1024-bit public>", "<2048-bit private>"

BAD_CONFIGS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("partner-not-2088", {"partner": "1000000000000000"}, ValueError, "partner must be the 16-digit partner id"),
    ("partner-too-short", {"partner": "2088123"}, ValueError, "partner must be the 16-digit partner id"),
    ("partner-17-digits", {"partner": "20880000000000021"}, ValueError, "partner must be the 16-digit"),
    ("partner-letters", {"partner": "2088abcdefghijkl"}, ValueError, "partner must be the 16-digit"),
    ("partner-int", {"partner": 2088000000000002}, SettingTypeError, "partner must be the 16-digit.*got int"),
    ("dsa", {"sign_type": "DSA"}, ValueError, r"sign_type 'DSA' .*no gateway implements it.*use 'MD5'"),
    ("rsa2", {"sign_type": "RSA2", "key": None, "private_key": OWN_PRIVATE}, ValueError,
     r"sign_type 'RSA2' belongs to the Open Platform.*OpenApiConfig"),
    ("sha256", {"sign_type": "SHA256"}, ValueError, "sign_type must be 'MD5' or 'RSA', got 'SHA256'"),
    ("md5-lowercase-name", {"sign_type": "md5"}, ValueError, "sign_type must be 'MD5' or 'RSA'"),
    ("md5-without-key", {"key": None}, ValueError, "key must be the 32-character MD5 key"),
    ("md5-key-31-chars", {"key": MD5_KEY[:31]}, ValueError, "key must be the 32-character MD5 key"),
    ("md5-key-with-space", {"key": MD5_KEY[:31] + " "}, ValueError, "key must be the 32-character MD5 key"),
    ("md5-with-private-key", {"private_key": OWN_PRIVATE}, ValueError,
     r"private_key/alipay_public_key are for sign_type='RSA'; with MD5 give key=\.\.\. only"),
    ("md5-with-alipay-public-key", {"alipay_public_key": LEGACY_ALIPAY_PUBLIC_KEY}, ValueError,
     "are for sign_type='RSA'"),
    ("rsa-without-private-key", {"sign_type": "RSA", "key": None}, ValueError,
     r"sign_type='RSA' needs private_key=\.\.\. \(your 1024-bit RSA private key\)"),
    ("rsa-with-md5-key", {"sign_type": "RSA", "private_key": OWN_PRIVATE}, ValueError,
     "key is the MD5 key; with sign_type='RSA' give private_key"),
    ("rsa-2048-bit", {"sign_type": "RSA", "key": None, "private_key": BIG_PRIVATE}, ValueError,
     r"private_key is a 2048-bit key; the legacy service uses 1024-bit RSA keys.*OpenApiConfig"),
    ("rsa-public-where-private-belongs", {"sign_type": "RSA", "key": None, "private_key": OWN_PUBLIC}, ValueError,
     "private_key holds a public key"),
    ("rsa-alipay-key-is-own-key", {"sign_type": "RSA", "key": None, "private_key": OWN_PRIVATE,
                                   "alipay_public_key": OWN_PUBLIC}, ValueError,
     "alipay_public_key is your own public key.*leave it unset"),
    ("rsa-alipay-key-is-private", {"sign_type": "RSA", "key": None, "private_key": OWN_PRIVATE,
                                   "alipay_public_key": BIG_PRIVATE}, ValueError,
     "alipay_public_key holds a private key"),
    ("input-charset-latin-1", {"input_charset": "latin-1"}, ValueError,
     "input_charset must be 'utf-8' or 'gbk', got 'latin-1'"),
    ("gateway-ftp", {"gateway": "ftp://x"}, ValueError, r"gateway must be an absolute http\(s\) URL"),
    ("gateway-relative", {"gateway": "/gateway.do"}, ValueError, r"gateway must be an absolute http\(s\) URL"),
    ("notify-url-with-query", {"notify_url": "https://shop.example/alipay/notify?order=1"}, ValueError,
     "notify_url must not carry a query string"),
    ("return-url-with-fragment", {"return_url": "https://shop.example/alipay/return#top"}, ValueError,
     "return_url must not carry a query string or fragment"),
    ("return-url-relative", {"return_url": "/alipay/return"}, ValueError, r"return_url must be an absolute http\(s\)"),
    ("coupon-policy-unknown", {"coupon_policy": "whatever"}, ValueError,
     r"coupon_policy must be one of \('strict', 'accept_lower'\), got 'whatever'"),
    ("verify-timeout-0", {"verify_timeout": 0}, ValueError, "verify_timeout must be between 0 and 60 seconds, got 0"),
    ("verify-timeout-120", {"verify_timeout": 120}, ValueError, "verify_timeout must be between 0 and 60 seconds"),
    ("verify-timeout-true", {"verify_timeout": True}, SettingTypeError, "verify_timeout must be between 0 and 60"),
    ("seller-id-malformed", {"seller_id": "2088-0000-0000-01"}, ValueError, "seller_id must be a 16-digit 2088"),
    ("seller-id-not-2088", {"seller_id": "1000000000000000"}, ValueError, "seller_id must be a 16-digit 2088"),
    ("seller-email-spaces", {"seller_email": " shop@example.com "}, ValueError,
     "seller_email must be the seller's Alipay account"),
    ("verify-notify-id-not-bool", {"verify_notify_id": "yes"}, SettingTypeError,
     "verify_notify_id must be True or False"),
]


def _resolve(overrides: Mapping[str, Any], own: RSA.RsaKey, big: RSA.RsaKey) -> dict[str, Any]:
    table = {OWN_PRIVATE: own.export_key().decode(), OWN_PUBLIC: own.public_key().export_key().decode(),
             BIG_PRIVATE: big.export_key().decode()}
    return {k: table.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}


def legacy_config(**overrides: Any) -> LegacyConfig:
    settings: dict[str, Any] = {"partner": PARTNER, "key": MD5_KEY}
    settings.update(overrides)
    return LegacyConfig(**settings)


@pytest.mark.parametrize("overrides,error,message", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_legacy_settings_say_which_and_how_to_fix(overrides, error, message, rsa1024, rsa2048):
    with pytest.raises(error, match=message) as caught:
        legacy_config(**_resolve(overrides, rsa1024, rsa2048))
    assert type(caught.value) is error
    # Never key material in the message.
    text = str(caught.value)
    assert MD5_KEY[:12] not in text and "PRIVATE KEY" not in text
    assert rsa1024.export_key().decode().splitlines()[1] not in text


# Wrong *types* (None from an unset environment variable, an int from a JSON config): the same promise
# of a ValueError/TypeError that names the setting.
WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("key-int", {"key": 12345678901234567890123456789012}, "key must be the 32-character MD5 key"),
    ("sign-type-none", {"sign_type": None}, "sign_type must be 'MD5' or 'RSA'"),
    ("coupon-policy-none", {"coupon_policy": None}, "coupon_policy must be one of"),
    ("notify-url-bytes", {"notify_url": b"https://shop.example/n"}, "notify_url must be an absolute"),
    ("verify-timeout-nan", {"verify_timeout": float("nan")}, "verify_timeout must be between 0 and 60"),
]
WRONG_TYPES_NAMED: list[tuple[str, dict[str, Any], str]] = [
    ("input-charset-none", {"input_charset": None}, "input_charset"),
    ("verify-timeout-str", {"verify_timeout": "10"}, "verify_timeout"),
    ("seller-id-int", {"seller_id": 2088000000000002}, "seller_id"),
    ("gateway-none", {"gateway": None}, "gateway"),
]


@pytest.mark.parametrize("overrides,message", [c[1:] for c in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES])
def test_wrong_types_are_clear_errors(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        legacy_config(**overrides)


@pytest.mark.parametrize(
    "overrides,setting",
    [pytest.param(c[1], c[2], id=c[0]) for c in WRONG_TYPES_NAMED],
)
def test_wrong_types_name_the_setting(overrides, setting):
    with pytest.raises((ValueError, TypeError)) as caught:
        legacy_config(**overrides)
    assert setting in str(caught.value)


def _verifier_key(config: LegacyConfig) -> RSA.RsaKey:
    return config._verifier._scheme._key  # pycryptodome's PKCS115_SigScheme keeps the key here


def test_rsa_config_with_a_fresh_1024_bit_key_defaults_to_the_legacy_alipay_key(rsa1024):
    config = legacy_config(key=None, sign_type="RSA", private_key=rsa1024.export_key().decode())
    legacy = load_public_key(LEGACY_ALIPAY_PUBLIC_KEY)
    verifier_key = _verifier_key(config)
    assert (verifier_key.n, verifier_key.e) == (legacy.n, legacy.e)
    assert config._signer.sign_type == config._verifier.sign_type == "RSA"
    signed = config._signer.sign(b"partner=123&service=test")
    assert RsaVerifier(rsa1024.public_key(), "RSA").verify(b"partner=123&service=test", signed)
    # Bare base64 PKCS#8 (the console's shape) works as well.
    bare = "".join(rsa1024.export_key(pkcs=8).decode().splitlines()[1:-1])
    assert legacy_config(key=None, sign_type="RSA", private_key=bare)._signer.sign(b"x") == config._signer.sign(b"x")


def test_rsa_config_with_an_explicit_alipay_key(rsa1024):
    stand_in = RSA.generate(1024)
    config = legacy_config(key=None, sign_type="RSA", private_key=rsa1024.export_key().decode(),
                           alipay_public_key=stand_in.public_key().export_key().decode())
    assert _verifier_key(config).n == stand_in.n


def test_md5_config_defaults():
    config = legacy_config()
    assert config.seller_id == PARTNER and config.seller_email is None
    assert config.sign_type == "MD5" and config.input_charset == "utf-8" and config.coupon_policy == "strict"
    assert config.gateway == "https://mapi.alipay.com/gateway.do" and config.verify_notify_id is True
    assert config._signer is config._verifier and config._signer.sign_type == "MD5"


@pytest.mark.parametrize("given,normalised", [("GBK", "gbk"), ("gb2312", "gbk"), ("UTF-8", "utf-8"),
                                              ("utf8", "utf-8"), (" gbk ", "gbk")])
def test_input_charset_is_normalised(given, normalised):
    assert legacy_config(input_charset=given).input_charset == normalised


def test_seller_email_instead_of_seller_id():
    config = legacy_config(seller_email="shop@example.com")
    assert config.seller_id is None and config.seller_email == "shop@example.com"
    both = legacy_config(seller_email="shop@example.com", seller_id="2088000000000009")
    assert both.seller_id == "2088000000000009"


def test_repr_shows_no_key_material(rsa1024):
    md5 = legacy_config()
    assert MD5_KEY not in repr(md5) and MD5_KEY[:8] not in repr(md5) and PARTNER in repr(md5)
    assert MD5_KEY not in repr(md5._signer)
    pem = rsa1024.export_key().decode()
    rsa = legacy_config(key=None, sign_type="RSA", private_key=pem)
    text = repr(rsa)
    assert "PRIVATE" not in text and "PUBLIC" not in text
    assert not any(line in text for line in pem.splitlines()[1:-1])
    assert not any(line in text for line in LEGACY_ALIPAY_PUBLIC_KEY.splitlines()[1:-1])
    assert repr(rsa._signer) == "RsaSigner(RSA)"


# -- 3. the pay helper through both fronts ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_gateway_stub() -> Iterator[GatewayStub]:
    stub = GatewayStub()
    yield stub
    stub.close()


@pytest.fixture
def gateway_stub(shared_gateway_stub: GatewayStub) -> GatewayStub:
    """One loopback stub for this module (``make_legacy`` points the gateway at it). Nothing here calls
    notify_verify, and closing a stub costs half a second (serve_forever's poll interval) per test."""
    return shared_gateway_stub


DEFAULT_ARGS: dict[str, Any] = {"out_trade_no": "L1", "total_fee": Decimal("9.9"), "subject": "Tea"}


def _to_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    return value


def _from_json(obj: dict[str, Any]) -> Any:
    return Decimal(obj["$decimal"]) if set(obj) == {"$decimal"} else obj


def _call_helper(helper: Any, query: str) -> tuple[int, str]:
    """What a shop's view does: call the helper; a TypeError/ValueError becomes a 400 naming it."""
    request = dict(parse_qsl(query))
    args = dict(DEFAULT_ARGS)
    args.update(json.loads(request.get("args", "{}"), object_hook=_from_json))
    try:
        return 200, getattr(helper, request.get("call", "direct_pay_url"))(**args)
    except (TypeError, ValueError) as exc:
        return 400, f"{type(exc).__name__}: {exc}"


def pay_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status, body = _call_helper(environ["alipay"], environ.get("QUERY_STRING", ""))
    start_response("200 OK" if status == 200 else "400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode("utf-8")]


async def pay_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status, body = _call_helper(scope["alipay"], scope["query_string"].decode("latin-1"))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body.encode("utf-8")})


DEFAULT_PEER = "198.51.100.7"


def set_peer(client: WSGIClient | ASGIClient, peer: str | None) -> None:
    """Make the connection's peer ``peer`` (None: a Unix socket), as a server would.

    conftest's WSGIClient uses werkzeug's EnvironBuilder, which sets no REMOTE_ADDR at all, and the
    ASGIClient always reports 127.0.0.1 (see test_the_conftest_clients_peer_addresses)."""
    app = client.app
    if isinstance(client, WSGIClient):
        def with_peer(environ: dict[str, Any], start_response: Any) -> Any:
            environ = {k: v for k, v in environ.items() if k != "REMOTE_ADDR"}
            if peer is not None:
                environ["REMOTE_ADDR"] = peer
            return app(environ, start_response)

        client.app = with_peer
    else:
        async def with_asgi_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await app({**scope, "client": (peer, 50000) if peer is not None else None}, receive, send)

        client.app = with_asgi_peer


@pytest.fixture
def legacy_shop(make_legacy, mount, front_kind):
    """``legacy_shop(peer=..., alipay_kwargs=..., **config)`` -> (alipay, client) around the pay app."""

    def _make(*, peer: str | None = DEFAULT_PEER, alipay_kwargs: Mapping[str, Any] | None = None,
              **config: Any) -> tuple[Alipay, WSGIClient | ASGIClient]:
        alipay = make_legacy(alipay_kwargs=alipay_kwargs, **config)
        client = mount(alipay, pay_wsgi if front_kind == "wsgi" else pay_asgi)
        set_peer(client, peer)
        return alipay, client

    return _make


def pay(client: WSGIClient | ASGIClient, call: str = "direct_pay_url", *, headers: Mapping[str, str] | None = None,
        **args: Any) -> Response:
    query = urlencode({"call": call, "args": json.dumps({k: _to_json(v) for k, v in args.items()})})
    return client.request("GET", "/buy", query=query, headers=headers)


def pay_ok(client: WSGIClient | ASGIClient, call: str = "direct_pay_url", **kwargs: Any) -> str:
    response = pay(client, call, **kwargs)
    assert response.status == 200, response.body.decode()
    return response.body.decode("utf-8")


def pay_error(client: WSGIClient | ASGIClient, call: str = "direct_pay_url", **kwargs: Any) -> str:
    response = pay(client, call, **kwargs)
    assert response.status == 400, response.body.decode()
    return response.body.decode("utf-8")


def query_of(url: str, charset: str = "utf-8") -> dict[str, str]:
    pairs = parse_qsl(urlsplit(url).query, strict_parsing=True, encoding=charset, errors="strict")
    params = dict(pairs)
    assert len(params) == len(pairs), "a parameter appears twice"
    return params


def independent_md5(params: Mapping[str, str], charset: str = "utf-8", key: str = MD5_KEY) -> str:
    """The legacy MD5, written out here rather than taken from the package."""
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type") and params[k] != "")
    return hashlib.md5(text.encode(charset) + key.encode("ascii")).hexdigest()


def assert_md5_signed(params: Mapping[str, str], charset: str = "utf-8") -> None:
    assert params["sign_type"] == "MD5"
    assert params["sign"] == independent_md5(params, charset)


def test_direct_pay_url_parameters_and_signature(legacy_shop, gateway_stub):
    _, client = legacy_shop()
    url = pay_ok(client)
    assert url.startswith(gateway_stub.url + "?")
    params = query_of(url)
    assert params == {
        "_input_charset": "utf-8",
        "exter_invoke_ip": DEFAULT_PEER,
        "notify_url": "http://shop.example/alipay/notify",
        "out_trade_no": "L1",
        "partner": PARTNER,
        "payment_type": "1",
        "return_url": "http://shop.example/alipay/return",
        "seller_id": PARTNER,
        "service": "create_direct_pay_by_user",
        "subject": "Tea",
        "total_fee": "9.90",
        "sign": params["sign"],
        "sign_type": "MD5",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", params["sign"])
    assert_md5_signed(params)
    # Sent as signed: sorted, then sign and sign_type.
    assert list(params) == [*sorted(set(params) - {"sign", "sign_type"}), "sign", "sign_type"]


def test_default_callback_urls_follow_the_host(legacy_shop):
    _, client = legacy_shop()
    params = query_of(pay_ok(client, headers={"Host": "shop.example:8443"}))
    assert params["notify_url"] == "http://shop.example:8443/alipay/notify"
    assert params["return_url"] == "http://shop.example:8443/alipay/return"
    assert_md5_signed(params)


SUBJECTS = {
    "cjk": "龙井茶",
    "spaces": "green tea  two boxes",
    "ampersand-equals": "tea & milk=1",
    "plus": "tea+milk",
    "percent": "100% tea %41 %zz",
    "all-of-it": "特级 龙井 & 100% 新茶+ a=b?c#d",
    "quotes-and-markup": "Tea \"<b>\" & 'x'",
}


@pytest.mark.parametrize("subject", list(SUBJECTS.values()), ids=list(SUBJECTS))
def test_subject_round_trips_through_the_url(legacy_shop, subject):
    _, client = legacy_shop()
    url = pay_ok(client, subject=subject)
    raw_query = urlsplit(url).query
    assert " " not in raw_query and not re.search(r"[^\x21-\x7e]", raw_query)
    assert f"subject={quote_plus(subject)}&" in raw_query  # encoded once, in utf-8
    params = query_of(url)
    assert params["subject"] == subject
    assert_md5_signed(params)


def test_wap_direct_pay_url(legacy_shop):
    _, client = legacy_shop(alipay_kwargs={"trusted_proxies": 1})
    params = query_of(pay_ok(client, "wap_direct_pay_url", subject="龙井茶", headers={"X-Forwarded-For": "1.2.3.4"}))
    assert params["service"] == "alipay.wap.create.direct.pay.by.user"
    assert params["_input_charset"] == "utf-8" and params["seller_id"] == PARTNER and params["total_fee"] == "9.90"
    assert "exter_invoke_ip" not in params
    assert_md5_signed(params)


def test_wap_speaks_utf8_even_when_the_merchant_uses_gbk(legacy_shop):
    _, client = legacy_shop(input_charset="gbk")
    url = pay_ok(client, "wap_direct_pay_url", subject="龙井茶")
    assert f"subject={quote_plus('龙井茶', encoding='utf-8')}&" in urlsplit(url).query
    params = query_of(url)
    assert params["_input_charset"] == "utf-8" and params["subject"] == "龙井茶"
    assert "exter_invoke_ip" not in params
    assert_md5_signed(params, "utf-8")


def test_wap_needs_seller_id(legacy_shop):
    _, client = legacy_shop(seller_email="shop@example.com")
    assert pay_error(client, "wap_direct_pay_url").startswith("ValueError: the wap service requires seller_id")
    params = query_of(pay_ok(client))  # the desktop service takes seller_email
    assert params["seller_email"] == "shop@example.com" and "seller_id" not in params
    assert_md5_signed(params)


def test_gbk_direct_pay_url_encodes_and_signs_gbk_bytes(legacy_shop):
    _, client = legacy_shop(input_charset="GBK")
    subject = "龙井茶 & 100%"
    url = pay_ok(client, subject=subject, body="特级")
    raw_query = urlsplit(url).query
    assert f"subject={quote_plus(subject, encoding='gbk')}&" in raw_query
    assert "subject=%C1%FA%BE%AE%B2%E8+%26+100%25&" in raw_query  # 龙井茶 in GBK, not UTF-8's %E9%BE%99...
    assert quote_plus("龙", encoding="utf-8") not in raw_query
    params = query_of(url, "gbk")
    assert params["subject"] == subject and params["body"] == "特级" and params["_input_charset"] == "gbk"
    assert_md5_signed(params, "gbk")
    assert params["sign"] != independent_md5(params, "utf-8")


def test_gbk_merchant_cannot_send_what_gbk_cannot_encode(legacy_shop):
    _, client = legacy_shop(input_charset="gbk")
    # A ValueError naming the parameter, never a request signed over different bytes than it sends.
    assert pay_error(client, subject="Tea \u2615") == (
        "ValueError: subject holds characters that gbk cannot encode; remove them or use input_charset='utf-8'")
    params = query_of(pay_ok(client, "wap_direct_pay_url", subject="Tea \u2615"))  # wap is utf-8
    assert params["subject"] == "Tea \u2615"
    assert_md5_signed(params, "utf-8")


INPUT = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_direct_pay_form_posts_the_same_signed_params(legacy_shop, gateway_stub, charset):
    _, client = legacy_shop(input_charset=charset)
    subject = "Tea \"<b>\" & 'x' 龙井"
    page = pay_ok(client, "direct_pay_form", subject=subject, body="a&b")
    url = pay_ok(client, subject=subject, body="a&b")
    form = re.search(r'<form id="alipay-pay-form" action="([^"]*)" method="POST" accept-charset="([^"]*)">', page)
    assert form is not None, page
    assert html.unescape(form.group(1)) == f"{gateway_stub.url}?_input_charset={charset}"
    assert form.group(2) == charset
    assert ".submit()" in page and "<noscript>" in page
    assert "<b>" not in page and "'x'" not in page
    assert "Tea &quot;&lt;b&gt;&quot; &amp; &#x27;x&#x27; 龙井" in page and 'value="a&amp;b"' in page
    fields = [(name, html.unescape(value)) for name, value in INPUT.findall(page)]
    assert fields == list(query_of(url, charset).items())  # same values, same order
    values = dict(fields)
    assert values["subject"] == subject and values["_input_charset"] == charset
    assert values["exter_invoke_ip"] == DEFAULT_PEER
    assert_md5_signed(values, charset)


def test_wap_direct_pay_form(legacy_shop, gateway_stub):
    _, client = legacy_shop(input_charset="gbk")
    page = pay_ok(client, "wap_direct_pay_form", subject="龙井")
    assert f'action="{gateway_stub.url}?_input_charset=utf-8"' in page and 'accept-charset="utf-8"' in page
    values = {name: html.unescape(value) for name, value in INPUT.findall(page)}
    assert values["service"] == "alipay.wap.create.direct.pay.by.user" and "exter_invoke_ip" not in values
    assert_md5_signed(values, "utf-8")


def test_extras_pass_through_and_are_signed(legacy_shop):
    _, client = legacy_shop()
    extras = {
        "body": "二两 & more",
        "show_url": "https://shop.example/tea/1?ref=a&b=2",
        "extra_common_param": "order=1&u=2%3D",
        "it_b_pay": "30m",
        "qr_pay_mode": "2",
        "anti_phishing_key": "KEY123abc",
        "paymethod": "directPay",
    }
    params = query_of(pay_ok(client, **extras))
    for name, value in extras.items():
        assert params[name] == value
    assert_md5_signed(params)
    # Empty or None extras are left out, not signed as "name=".
    params = query_of(pay_ok(client, body="", show_url=None))
    assert "body" not in params and "show_url" not in params
    assert_md5_signed(params)


@pytest.mark.parametrize("given,sent", [(Decimal("1.5"), "1.50"), (Decimal("2"), "2.00"), (Decimal("0.10"), "0.10")])
def test_decimal_extras_get_two_decimals(legacy_shop, given, sent):
    _, client = legacy_shop()
    params = query_of(pay_ok(client, royalty_fee=given))
    assert params["royalty_fee"] == sent
    assert_md5_signed(params)


@pytest.mark.parametrize("total_fee,sent", [(Decimal("9.9"), "9.90"), ("9.90", "9.90"), ("10", "10.00"),
                                            (Decimal("0.01"), "0.01"), (Decimal("100000000"), "100000000.00")])
def test_total_fee_formats(legacy_shop, total_fee, sent):
    _, client = legacy_shop()
    assert query_of(pay_ok(client, total_fee=total_fee))["total_fee"] == sent


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("float-total-fee", {"total_fee": 9.9}, "TypeError: total_fee must be a Decimal or a str"),
    ("three-decimals", {"total_fee": Decimal("9.999")}, "ValueError: total_fee 9.999 has more than two decimals"),
    ("zero", {"total_fee": "0.00"}, "ValueError: total_fee 0.00 is outside"),
    ("too-much", {"total_fee": "100000000.01"}, "ValueError"),
    ("not-an-amount", {"total_fee": "9,90"}, "ValueError: total_fee '9,90' is not an amount"),
    ("float-extra", {"royalty_fee": 1.5}, "TypeError: royalty_fee must not be a float"),
    ("decimal-extra-three-places", {"royalty_fee": Decimal("1.555")}, "ValueError: royalty_fee"),
    ("out-trade-no-space", {"out_trade_no": "L 1"}, "ValueError: out_trade_no must be 1-64 printable ASCII"),
    ("out-trade-no-cjk", {"out_trade_no": "订单1"}, "ValueError: out_trade_no"),
    ("out-trade-no-65", {"out_trade_no": "L" * 65}, "ValueError: out_trade_no"),
    ("subject-empty", {"subject": " "}, "ValueError: subject must be a non-empty str"),
    ("subject-257", {"subject": "茶" * 257}, "ValueError: subject must be a non-empty str of at most 256"),
    ("bad-param-name", {"Bad-Name": "x"}, "ValueError: 'Bad-Name' is not a request parameter name"),
    ("notify-url-query", {"notify_url": "https://shop.example/n?x=1"}, "ValueError: notify_url must not carry"),
    ("return-url-relative", {"return_url": "/back"}, "ValueError: return_url must be an absolute"),
] + [(f"reserved-{name}", {name: "x"}, f"ValueError: {name} is set by the helper")
     for name in ("partner", "service", "price", "quantity", "sign", "sign_type", "_input_charset",
                  "payment_type", "seller_id", "seller_email")]


@pytest.mark.parametrize("args,error", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_are_refused_before_signing(legacy_shop, args, error):
    _, client = legacy_shop()
    assert pay_error(client, **args).startswith(error)


def test_callback_urls_can_be_overridden_per_call(legacy_shop):
    _, client = legacy_shop()
    params = query_of(pay_ok(client, notify_url="https://pay.shop.example/n", return_url="https://shop.example/done"))
    assert (params["notify_url"], params["return_url"]) == ("https://pay.shop.example/n", "https://shop.example/done")
    assert_md5_signed(params)
    params = query_of(pay_ok(client, return_url="https://shop.example/done"))
    assert params["notify_url"] == "http://shop.example/alipay/notify"


def test_configured_callback_urls_are_used(legacy_shop):
    _, client = legacy_shop(notify_url="https://pay.shop.example/alipay/n", return_url="https://shop.example/r")
    params = query_of(pay_ok(client))
    assert (params["notify_url"], params["return_url"]) == ("https://pay.shop.example/alipay/n",
                                                            "https://shop.example/r")
    params = query_of(pay_ok(client, notify_url="https://other.example/n"))  # a call still wins
    assert params["notify_url"] == "https://other.example/n" and params["return_url"] == "https://shop.example/r"


def test_rsa_merchant_pay_url_is_sha1_signed(legacy_shop, rsa1024):
    _, client = legacy_shop(key=None, sign_type="RSA", private_key=rsa1024.export_key().decode())
    params = query_of(pay_ok(client, subject="龙井茶"))
    assert params["sign_type"] == "RSA"
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))
    pkcs1_15.new(rsa1024.public_key()).verify(SHA1.new(text.encode()), base64.b64decode(params["sign"]))


# -- exter_invoke_ip ------------------------------------------------------------------------------------------

CLIENT_IPS: list[tuple[str, int, str | None, str | None, str | None]] = [
    # id, trusted_proxies, peer, X-Forwarded-For, expected exter_invoke_ip
    ("peer", 0, DEFAULT_PEER, None, DEFAULT_PEER),
    ("header-ignored-without-proxies", 0, DEFAULT_PEER, "203.0.113.5", DEFAULT_PEER),
    ("one-proxy-rightmost", 1, DEFAULT_PEER, "6.6.6.6, 203.0.113.5", "203.0.113.5"),
    ("two-proxies", 2, DEFAULT_PEER, "1.1.1.1, 2.2.2.2, 3.3.3.3", "2.2.2.2"),
    ("header-shorter-than-proxies", 3, DEFAULT_PEER, "1.1.1.1, 2.2.2.2", DEFAULT_PEER),
    ("no-header-with-proxies", 1, DEFAULT_PEER, None, DEFAULT_PEER),
    ("not-an-ip", 1, DEFAULT_PEER, "unknown", None),
    ("ipv6-in-header", 1, DEFAULT_PEER, "2001:DB8:0:0::0001", "2001:db8::1"),
    ("ipv6-peer", 0, "2001:DB8::0001", None, "2001:db8::1"),
    ("loopback-peer", 0, "127.0.0.1", None, "127.0.0.1"),
    ("no-peer", 0, None, None, None),
]


@pytest.mark.parametrize("proxies,peer,forwarded,expected", [c[1:] for c in CLIENT_IPS], ids=[c[0] for c in CLIENT_IPS])
def test_exter_invoke_ip_is_the_customers_address(legacy_shop, proxies, peer, forwarded, expected):
    _, client = legacy_shop(peer=peer, alipay_kwargs={"trusted_proxies": proxies})
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else None
    params = query_of(pay_ok(client, headers=headers))
    assert params.get("exter_invoke_ip") == expected
    assert_md5_signed(params)


EXPLICIT_IPS: list[tuple[str, Any, str | None]] = [
    ("ipv4", "203.0.113.9", "203.0.113.9"),
    ("ipv6-normalised", "2001:DB8::0001", "2001:db8::1"),
    ("none-omits", None, None),
]


@pytest.mark.parametrize("given,expected", [c[1:] for c in EXPLICIT_IPS], ids=[c[0] for c in EXPLICIT_IPS])
def test_explicit_exter_invoke_ip_overrides(legacy_shop, given, expected):
    _, client = legacy_shop(alipay_kwargs={"trusted_proxies": 1})
    params = query_of(pay_ok(client, exter_invoke_ip=given, headers={"X-Forwarded-For": "6.6.6.6"}))
    assert params.get("exter_invoke_ip") == expected
    assert_md5_signed(params)


@pytest.mark.parametrize("given", ["not-an-ip", "", "1.2.3.4:80", "256.1.1.1"])
def test_invalid_explicit_exter_invoke_ip_is_refused(legacy_shop, given):
    _, client = legacy_shop()
    assert pay_error(client, exter_invoke_ip=given).startswith("ValueError")


def test_the_conftest_clients_peer_addresses(make_legacy, mount, front_kind):
    """Checks the premise of set_peer: the ASGI test client reports 127.0.0.1; werkzeug's EnvironBuilder
    sets no REMOTE_ADDR, so unwrapped the WSGI front has no peer and sends no exter_invoke_ip."""
    client = mount(make_legacy(), pay_wsgi if front_kind == "wsgi" else pay_asgi)
    params = query_of(pay_ok(client))
    assert params.get("exter_invoke_ip") == ("127.0.0.1" if front_kind == "asgi" else None)


def test_helper_outside_a_request(make_legacy):
    alipay = make_legacy(alipay_kwargs={"trusted_proxies": 1})
    helper = alipay.helper("https://shop.example/")
    params = query_of(helper.direct_pay_url(out_trade_no="L9", total_fee=Decimal("9.9"), subject="Tea"))
    assert "exter_invoke_ip" not in params
    assert params["notify_url"] == "https://shop.example/alipay/notify"
    assert params["return_url"] == "https://shop.example/alipay/return"
    assert_md5_signed(params)
    assert helper.client_address() is None
    explicit = query_of(helper.direct_pay_url(out_trade_no="L9", total_fee="9.90", subject="Tea",
                                              exter_invoke_ip="203.0.113.9"))
    assert explicit["exter_invoke_ip"] == "203.0.113.9"


@pytest.mark.parametrize("value", [-1, True, False, 17, 1.0, "1", None])
def test_trusted_proxies_must_be_a_hop_count(value):
    with pytest.raises(ValueError, match=r"trusted_proxies must be the number of proxy hops \(0-16\)"):
        Alipay(legacy_config(), ledger=":memory:", trusted_proxies=value)


@pytest.mark.parametrize("value", [0, 1, 16])
def test_trusted_proxies_accepts_0_to_16(value):
    alipay = Alipay(legacy_config(), ledger=":memory:", trusted_proxies=value)
    try:
        assert alipay.trusted_proxies == value
    finally:
        alipay.close()


CLIENT_ADDRESS: list[tuple[str, str | None, str | None, int, str | None]] = [
    # id, peer, X-Forwarded-For, trusted_proxies, expected
    ("peer-only", "203.0.113.5", None, 0, "203.0.113.5"),
    ("header-ignored-at-0", "203.0.113.5", "1.1.1.1", 0, "203.0.113.5"),
    ("rightmost-at-1", "10.0.0.1", "1.1.1.1, 2.2.2.2", 1, "2.2.2.2"),
    ("second-from-right-at-2", "10.0.0.1", "1.1.1.1, 2.2.2.2, 3.3.3.3", 2, "2.2.2.2"),
    ("whole-header-at-3", "10.0.0.1", "1.1.1.1, 2.2.2.2, 3.3.3.3", 3, "1.1.1.1"),
    ("short-header-falls-back", "10.0.0.1", "1.1.1.1", 2, "10.0.0.1"),
    ("no-spaces", "10.0.0.1", "1.1.1.1,2.2.2.2", 1, "2.2.2.2"),
    ("extra-spaces", "10.0.0.1", "  1.1.1.1 ,  2.2.2.2  ", 2, "1.1.1.1"),
    ("empty-header-uses-peer", "10.0.0.1", "", 1, "10.0.0.1"),
    ("empty-hop-is-no-address", "10.0.0.1", "1.1.1.1, ", 1, None),
    ("not-an-ip-hop", "10.0.0.1", "unknown", 1, None),
    ("ip-with-port", "10.0.0.1", "1.2.3.4:5678", 1, None),
    ("bracketed-ipv6", "10.0.0.1", "[2001:db8::1]", 1, None),
    ("ipv6-hop-normalised", "10.0.0.1", "1.1.1.1, 2001:0DB8:0000::0001", 1, "2001:db8::1"),
    ("ipv6-peer-normalised", "2001:DB8:0:0:0:0:0:1", None, 0, "2001:db8::1"),
    ("ipv6-loopback", "0:0:0:0:0:0:0:1", None, 0, "::1"),
    ("peer-not-an-ip", "unix:/run/app.sock", None, 0, None),
    ("no-peer", None, None, 0, None),
    ("no-peer-empty", "", None, 0, None),
    ("no-peer-but-header", None, "1.1.1.1", 1, "1.1.1.1"),
]


@pytest.mark.parametrize("peer,forwarded,proxies,expected", [c[1:] for c in CLIENT_ADDRESS],
                         ids=[c[0] for c in CLIENT_ADDRESS])
def test_client_address(peer, forwarded, proxies, expected):
    assert client_address(peer, forwarded, proxies) == expected


# A dual-stack server (bound to '::') reports an IPv4 customer as '::ffff:203.0.113.5'.
@pytest.mark.parametrize("peer,forwarded,proxies", [("::ffff:203.0.113.5", None, 0),
                                                    ("10.0.0.1", "::ffff:203.0.113.5", 1)],
                         ids=["mapped-peer", "mapped-hop"])
def test_client_address_unmaps_ipv4_mapped_ipv6(peer, forwarded, proxies):
    assert client_address(peer, forwarded, proxies) == "203.0.113.5"


def test_front_client_readers():
    # ASGI: every X-Forwarded-For header line counts, in order; a Unix socket has no client.
    scope = {"client": ("192.0.2.1", 1234),
             "headers": [(b"x-forwarded-for", b"1.1.1.1"), (b"host", b"shop.example"),
                         (b"X-Forwarded-For", b"2.2.2.2, 3.3.3.3")]}
    assert asgi_client(scope) == ("192.0.2.1", "1.1.1.1, 2.2.2.2, 3.3.3.3")
    assert asgi_client({"client": None, "headers": []}) == (None, None)
    # WSGI: REMOTE_ADDR and the server-joined header.
    assert wsgi_client({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}) == ("192.0.2.1", "1.1.1.1")
    assert wsgi_client({}) == (None, None)


def test_asgi_front_reads_repeated_forwarded_headers(make_legacy):
    """Two X-Forwarded-For lines (one per proxy) are one list: with two proxies, the second-from-right."""
    alipay = make_legacy(alipay_kwargs={"trusted_proxies": 2})
    app = alipay.asgi(pay_asgi)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "https",
             "path": "/buy", "raw_path": b"/buy", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"shop.example"), (b"x-forwarded-for", b"6.6.6.6, 203.0.113.5"),
                         (b"x-forwarded-for", b"10.0.0.2")],
             "client": ("10.0.0.3", 4000), "server": ("shop.example", 443)}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    params = query_of(body)
    assert params["exter_invoke_ip"] == "203.0.113.5"
    assert params["notify_url"] == "https://shop.example/alipay/notify"
    assert_md5_signed(params)
