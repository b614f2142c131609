"""Certificate mode (公钥证书模式) through OpenApiConfig: serial numbers, signed requests, callbacks, errors.

The REAL certificates in tests/vectors/cert-sn/ come without their private keys, so the full-config path runs
on a test PKI built here (tests/certfactory.py): a root CA, an intermediate that issues the app's and
"Alipay's" certificates (for the session keys of conftest), and a root bundle that mixes RSA roots with an
ECDSA-signed root and a certificate of an unknown signature algorithm, both of which must be skipped.
Expected serial numbers are computed here independently: md5 of the RFC 4514 issuer string, written out by
hand, and the decimal serial.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC, RSA
from Crypto.Signature import pkcs1_15
from Crypto.Util.asn1 import DerBitString, DerSequence

from alipay_middleware import OpenApiConfig
from certfactory import SHA1_RSA, Issued, dn, issue
from conftest import (
    APP_ID,
    SELLER_ID,
    Keys,
    Recorder,
    encode_form,
    make_config,
    notify_fields,
    sign_fields,
    signed_body,
)

CERTS = Path(__file__).parent / "vectors" / "cert-sn"
VECTOR = json.loads((CERTS / "vector.json").read_text(encoding="utf-8"))["expected"]
VECTOR_APP_CERT = (CERTS / "appCertPublicKey_2021001161683774.crt").read_text()
VECTOR_ALIPAY_CERT = (CERTS / "alipayCertPublicKey_RSA2.crt").read_text()
VECTOR_ROOT_BUNDLE = (CERTS / "alipayRootCert.crt").read_text()

# The test PKI's names, as RFC 4514 strings (last RDN first, ',' in a value escaped).
ROOT_DN = "CN=Test Ant Root CA R1,OU=Certification Authority,O=Test Ant,C=CN"
ROOT2_DN = "CN=Test iTrus Class 2 Root CA - G3,O=Test iTrus,C=CN"
CA_DN = "CN=Test Ant Class 2 CA R1,OU=Certification Authority,O=Test Ant\\, Inc.,C=CN"
ROOT_SERIAL, ROOT2_SERIAL, CA_SERIAL = 7, 2**127 + 3, 2**100 + 11
APP_SERIAL, ALIPAY_SERIAL = 2**140 + 12345, 2**152 + 67890


def md5_sn(issuer: str, serial: int) -> str:
    return hashlib.md5((issuer + str(serial)).encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Pki:
    root: Issued
    ca: Issued
    app: Issued  # for keys.app
    alipay: Issued  # for keys.alipay
    stranger: Issued  # for an unrelated RSA key
    stranger_key: RSA.RsaKey
    ec_root: Issued
    odd: Issued  # an unknown signature algorithm, junk signature
    bundle: str  # ECDSA root, RSA root, odd, SHA-1 RSA root: in that file order


@pytest.fixture(scope="module")
def pki(keys: Keys) -> Pki:
    root = issue(dn(("C", "CN"), ("O", "Test Ant"), ("OU", "Certification Authority"), ("CN", "Test Ant Root CA R1")),
                 ROOT_SERIAL, RSA.generate(2048), ca=True)
    root2 = issue(dn(("C", "CN"), ("O", "Test iTrus"), ("CN", "Test iTrus Class 2 Root CA - G3")),
                  ROOT2_SERIAL, RSA.generate(2048), ca=True, signature_oid=SHA1_RSA)
    ca = issue(dn(("C", "CN"), ("O", "Test Ant, Inc."), ("OU", "Certification Authority"),
                  ("CN", "Test Ant Class 2 CA R1")), CA_SERIAL, RSA.generate(2048), issuer=root, ca=True)
    app = issue(dn(("C", "CN"), ("O", "Tea Shop"), ("OU", "Alipay Open Platform"), ("CN", APP_ID)),
                APP_SERIAL, keys.app, issuer=ca)
    alipay = issue(dn(("C", "CN"), ("O", "Test Ant"), ("OU", "Alipay Open Platform"), ("CN", "Alipay RSA2")),
                   ALIPAY_SERIAL, keys.alipay, issuer=ca)
    stranger_key = RSA.generate(2048)
    stranger = issue(dn(("C", "CN"), ("CN", "Someone Else")), 99, stranger_key, issuer=ca)
    ec_root = issue(dn(("C", "CN"), ("O", "Test NRCAC"), ("CN", "ROOTCA")), 1, ECC.generate(curve="P-256"), ca=True)
    odd = issue(dn(("C", "CN"), ("CN", "Odd Root")), 2, RSA.generate(1024), ca=True, signature_oid="1.2.3.4.5.6")
    bundle = "\n".join(c.pem for c in (ec_root, root, odd, root2))
    return Pki(root, ca, app, alipay, stranger, stranger_key, ec_root, odd, bundle)


def cert_overrides(pki: Pki) -> dict[str, Any]:
    """make_config's key-mode settings turned into certificate mode for the conftest session keys."""
    return {"alipay_public_key": None, "app_cert": pki.app.pem, "alipay_cert": pki.alipay.pem,
            "alipay_root_cert": pki.bundle}


def cert_config(keys: Keys, pki: Pki, **overrides: Any) -> OpenApiConfig:
    return make_config(keys, **{**cert_overrides(pki), **overrides})


def pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


# -- the test PKI is real -------------------------------------------------------------------------------------

def test_generated_certificates_carry_valid_signatures(pki):
    for cert, issuer in ((pki.ca, pki.root), (pki.app, pki.ca), (pki.alipay, pki.ca), (pki.root, pki.root)):
        tbs, _algorithm, signature = DerSequence().decode(cert.der, nr_elements=3)
        assert isinstance(issuer.key, RSA.RsaKey)
        pkcs1_15.new(issuer.key.public_key()).verify(SHA256.new(tbs), DerBitString().decode(signature).value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_accepts_the_generated_chains(pki, tmp_path):
    for name, cert in {"root": pki.root, "ca": pki.ca, "app": pki.app, "alipay": pki.alipay,
                       "ec": pki.ec_root}.items():
        (tmp_path / f"{name}.pem").write_text(cert.pem)
    chains = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "ca.pem", "app.pem",
                             "alipay.pem"], cwd=tmp_path, capture_output=True, text=True)
    assert chains.returncode == 0 and chains.stdout == "app.pem: OK\nalipay.pem: OK\n", chains.stderr
    ecdsa = subprocess.run(["openssl", "verify", "-check_ss_sig", "-CAfile", "ec.pem", "ec.pem"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert ecdsa.returncode == 0, ecdsa.stderr


def test_hand_written_issuer_names_agree_with_the_cryptography_package(pki):
    x509 = pytest.importorskip("cryptography.x509")
    for cert, issuer, serial in ((pki.app, CA_DN, APP_SERIAL), (pki.alipay, CA_DN, ALIPAY_SERIAL),
                                 (pki.root, ROOT_DN, ROOT_SERIAL)):
        parsed = x509.load_der_x509_certificate(cert.der)
        assert (parsed.issuer.rfc4514_string(), parsed.serial_number) == (issuer, serial)


# -- serial numbers through OpenApiConfig -------------------------------------------------------------------

def test_serial_numbers_are_computed_when_the_config_is_built(keys, pki):
    config = cert_config(keys, pki)
    assert config.cert_mode
    assert config.app_cert_sn == md5_sn(CA_DN, APP_SERIAL)
    assert config.alipay_cert_sn == md5_sn(CA_DN, ALIPAY_SERIAL)
    # the ECDSA-signed root and the unknown-algorithm certificate are skipped; file order is kept
    assert config.alipay_root_cert_sn == f"{md5_sn(ROOT_DN, ROOT_SERIAL)}_{md5_sn(ROOT2_DN, ROOT2_SERIAL)}"
    assert config._public == keys.alipay.public_key()  # callbacks verify with the key in alipay_cert
    assert config.alipay_public_key is None


def test_key_mode_has_no_serial_numbers(keys):
    config = make_config(keys)
    assert not config.cert_mode
    assert (config.app_cert_sn, config.alipay_cert_sn, config.alipay_root_cert_sn) == (None, None, None)
    assert getattr(config, "alipay_cert_sn", None) is None


def test_repr_shows_serial_numbers_but_never_certificate_text(keys, pki):
    config = cert_config(keys, pki)
    text = repr(config)
    assert config.app_cert_sn in text and config.alipay_cert_sn in text and config.alipay_root_cert_sn in text
    for pem in (pki.app.pem, pki.alipay.pem, pki.bundle):
        assert not any(line in text for line in pem_body_lines(pem))
    assert "CERTIFICATE" not in text and "PRIVATE" not in text


def test_certificate_text_in_other_shapes_gives_the_same_config(keys, pki):
    config = cert_config(keys, pki, app_cert="\r\n  " + pki.app.pem.replace("\n", "\r\n") + "  \r\n",
                         alipay_cert="Bag Attributes\n" + pki.alipay.pem + pki.ca.pem,  # a chain: the first counts
                         alipay_root_cert=pki.bundle.replace("\n", "\r\n"))
    reference = cert_config(keys, pki)
    assert (config.app_cert_sn, config.alipay_cert_sn, config.alipay_root_cert_sn) == (
        reference.app_cert_sn, reference.alipay_cert_sn, reference.alipay_root_cert_sn)
    assert config._public == reference._public


def test_replace_recomputes_the_serial_numbers(keys, pki):
    config = dataclasses.replace(cert_config(keys, pki), notify_url="https://shop.example/n")
    assert config.app_cert_sn == md5_sn(CA_DN, APP_SERIAL) and config.notify_url == "https://shop.example/n"


def test_an_agreeing_alipay_public_key_is_tolerated(keys, pki):
    config = cert_config(keys, pki, alipay_public_key=keys.alipay_public_pem)
    assert config.alipay_cert_sn == md5_sn(CA_DN, ALIPAY_SERIAL) and config._public == keys.alipay.public_key()


# -- the REAL vector certificates ---------------------------------------------------------------------------

def test_vector_alipay_cert_and_root_bundle_give_the_published_serial_numbers(keys, pki):
    config = cert_config(keys, pki, alipay_cert=VECTOR_ALIPAY_CERT, alipay_root_cert=VECTOR_ROOT_BUNDLE)
    assert config.alipay_cert_sn == VECTOR["alipay_cert_sn(alipayCertPublicKey_RSA2.crt)"]
    assert config.alipay_root_cert_sn == VECTOR["alipay_root_cert_sn(alipayRootCert.crt)"]
    assert config.app_cert_sn == md5_sn(CA_DN, APP_SERIAL)
    spki = base64.b64encode(config._public.export_key(format="DER")).decode()
    assert spki == VECTOR["alipay_public_key_in_alipayCertPublicKey_RSA2.crt (SPKI base64)"]


def test_vector_app_cert_is_refused_for_a_key_it_was_not_issued_for(keys, pki):
    with pytest.raises(ValueError, match="app_cert is not the certificate of app_private_key"):
        cert_config(keys, pki, app_cert=VECTOR_APP_CERT, alipay_cert=VECTOR_ALIPAY_CERT,
                    alipay_root_cert=VECTOR_ROOT_BUNDLE)


# -- signed requests ------------------------------------------------------------------------------------------

NOW = datetime(2024, 1, 1, 4, 0, 9, tzinfo=timezone.utc)


def my_sign_string(params: dict[str, str]) -> bytes:
    """The request sign string, written out again here: all but sign, non-empty, sorted, raw k=v."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "").encode("utf-8")


def rsa2_verifies(message: bytes, signature: str, key: RSA.RsaKey) -> bool:
    try:
        pkcs1_15.new(key).verify(SHA256.new(message), base64.b64decode(signature))
    except ValueError:
        return False
    return True


def test_signed_params_carry_both_serial_numbers_under_the_signature(keys, pki):
    config = cert_config(keys, pki)
    params = config.protocol().signed_params("alipay.trade.query", {"out_trade_no": "A1"}, now=NOW)
    assert params["app_cert_sn"] == md5_sn(CA_DN, APP_SERIAL)
    assert params["alipay_root_cert_sn"] == f"{md5_sn(ROOT_DN, ROOT_SERIAL)}_{md5_sn(ROOT2_DN, ROOT2_SERIAL)}"
    assert list(params) == sorted(k for k in params if k != "sign") + ["sign"]
    app_public = keys.app.public_key()
    assert rsa2_verifies(my_sign_string(params), params["sign"], app_public)
    for left_out in ("app_cert_sn", "alipay_root_cert_sn"):  # the signature covers each of them
        without = {k: v for k, v in params.items() if k != left_out}
        assert not rsa2_verifies(my_sign_string(without), params["sign"], app_public)


def test_certificate_mode_only_adds_the_two_serial_numbers(keys, pki):
    biz = {"out_trade_no": "A1", "subject": "茶"}
    in_cert_mode = cert_config(keys, pki).protocol().signed_params("alipay.trade.query", biz, now=NOW)
    in_key_mode = make_config(keys).protocol().signed_params("alipay.trade.query", biz, now=NOW)
    assert "app_cert_sn" not in in_key_mode and "alipay_root_cert_sn" not in in_key_mode
    assert set(in_cert_mode) - set(in_key_mode) == {"app_cert_sn", "alipay_root_cert_sn"}
    assert {k: v for k, v in in_cert_mode.items() if k not in ("app_cert_sn", "alipay_root_cert_sn", "sign")} == {
        k: v for k, v in in_key_mode.items() if k != "sign"}


def pay_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    call = environ.get("QUERY_STRING") or "page_pay_url"
    body = getattr(environ["alipay"], call)(out_trade_no="A1", total_amount="9.90", subject="Tea")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


async def pay_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    call = scope["query_string"].decode() or "page_pay_url"
    body = getattr(scope["alipay"], call)(out_trade_no="A1", total_amount="9.90", subject="Tea")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.fixture
def cert_shop(make_alipay, mount, front_kind, keys, pki) -> Iterator[Any]:
    """An Alipay in certificate mode with order T1 of 9.90, mounted on the current front."""

    class Shop:
        pass

    shop = Shop()
    shop.alipay = make_alipay(orders={"T1": "9.90"}, config=cert_overrides(pki))
    shop.paid = Recorder()
    shop.alipay.on_paid(shop.paid)
    shop.pay = mount(shop.alipay, pay_wsgi if front_kind == "wsgi" else pay_asgi)
    shop.client = mount(shop.alipay)
    yield shop


@pytest.mark.parametrize("call", ["page_pay_url", "wap_pay_url"])
def test_pay_urls_through_the_middleware_carry_the_serial_numbers(cert_shop, keys, call):
    config = cert_shop.alipay.config
    url = cert_shop.pay.request("GET", "/buy", query=call).body.decode()
    query = dict(parse_qsl(urlsplit(url).query, strict_parsing=True))
    assert query["app_cert_sn"] == config.app_cert_sn == md5_sn(CA_DN, APP_SERIAL)
    assert query["alipay_root_cert_sn"] == config.alipay_root_cert_sn
    assert rsa2_verifies(my_sign_string(query), query["sign"], keys.app.public_key())


@pytest.mark.parametrize("call", ["page_pay_form", "wap_pay_form"])
def test_pay_forms_through_the_middleware_carry_the_serial_numbers(cert_shop, keys, call):
    page = cert_shop.pay.request("GET", "/buy", query=call).body.decode()
    values = {name: html.unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}
    assert values["app_cert_sn"] == md5_sn(CA_DN, APP_SERIAL)
    assert values["alipay_root_cert_sn"] == cert_shop.alipay.config.alipay_root_cert_sn
    assert rsa2_verifies(my_sign_string(values), values["sign"], keys.app.public_key())


# -- callbacks verify with the key inside alipay_cert -------------------------------------------------------

def test_notify_signed_with_the_alipay_cert_key_is_accepted(cert_shop, keys):
    response = cert_shop.client.request("POST", "/alipay/notify", signed_body(notify_fields("T1"), keys.alipay))
    assert (response.status, response.body) == (200, b"success")
    assert [event.out_trade_no for event in cert_shop.paid.calls] == ["T1"]


@pytest.mark.parametrize("signer", ["stranger", "app"])
def test_notify_signed_with_another_key_is_rejected(cert_shop, keys, pki, signer):
    key = pki.stranger_key if signer == "stranger" else keys.app
    response = cert_shop.client.request("POST", "/alipay/notify", signed_body(notify_fields("T1"), key))
    assert (response.status, response.body) == (400, b"fail")
    assert cert_shop.paid.calls == [] and cert_shop.alipay.ledger.events() == []


@pytest.mark.parametrize("signer,verified", [("alipay", True), ("stranger", False)])
def test_return_verifies_with_the_alipay_cert_key(cert_shop, keys, pki, signer, verified):
    fields = {"charset": "utf-8", "out_trade_no": "T1", "method": "alipay.trade.page.pay.return",
              "total_amount": "9.90", "trade_no": "2024010122001400000000000077", "auth_app_id": APP_ID,
              "version": "1.0", "app_id": APP_ID, "sign_type": "RSA2", "seller_id": SELLER_ID,
              "timestamp": "2024-01-01 12:00:09"}
    key = keys.alipay if signer == "alipay" else pki.stranger_key
    query = encode_form(dict(fields, sign=sign_fields(fields, key))).decode()
    body = cert_shop.client.request("GET", "/alipay/return", query=query).body.decode()
    assert ("return=ReturnResult(out_trade_no='T1'" in body) is verified
    assert ("return=None" in body) is not verified


# -- configuration errors ---------------------------------------------------------------------------------------

def junk_pem() -> str:
    body = base64.b64encode(b"not DER at all").decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def test_each_missing_certificate_is_named(keys, pki):
    for missing in ("app_cert", "alipay_cert", "alipay_root_cert"):
        with pytest.raises(ValueError, match=f"needs app_cert, alipay_cert and alipay_root_cert; {missing} missing"):
            cert_config(keys, pki, **{missing: None})
    with pytest.raises(ValueError, match="; alipay_cert and alipay_root_cert missing"):
        make_config(keys, app_cert=pki.app.pem)  # a key-mode config with one certificate added


def test_no_alipay_key_at_all(keys):
    with pytest.raises(ValueError, match="alipay_public_key is missing: .*or app_cert, alipay_cert and alipay_root"):
        make_config(keys, alipay_public_key=None)


BAD_CERTIFICATES = {
    "app_cert empty": ({"app_cert": ""}, "app_cert is empty"),
    "app_cert plain text": ({"app_cert": "paste the certificate here"}, "app_cert is not a PEM certificate"),
    "alipay_cert junk DER": ({"alipay_cert": "junk"}, "alipay_cert is not a readable X.509 certificate"),
    "root bundle garbage": ({"alipay_root_cert": "garbage"}, "alipay_root_cert holds no PEM certificate"),
    "root bundle of junk": ({"alipay_root_cert": "junk"}, "alipay_root_cert holds no RSA-signed certificate"),
    "a key where a certificate belongs": ({"app_cert": "public key"}, "app_cert holds a PEM block that is not a cert"),
    "an ECDSA certificate as alipay_cert": ({"alipay_cert": "ec"}, "alipay_cert is a certificate, but not for an RSA"),
    "only exotic roots": ({"alipay_root_cert": "exotic"}, "alipay_root_cert holds no RSA-signed certificate"),
}


@pytest.mark.parametrize("overrides,message", list(BAD_CERTIFICATES.values()), ids=list(BAD_CERTIFICATES))
def test_unreadable_certificates_are_named(keys, pki, overrides, message):
    stand_ins = {"junk": junk_pem(), "public key": keys.app.public_key().export_key().decode(),
                 "ec": pki.ec_root.pem, "exotic": pki.ec_root.pem + pki.odd.pem}
    overrides = {k: stand_ins.get(v, v) for k, v in overrides.items()}
    with pytest.raises(ValueError, match=message) as caught:
        cert_config(keys, pki, **overrides)
    assert not any(line in str(caught.value) for line in pem_body_lines(pki.bundle + pki.app.pem))


@pytest.mark.parametrize("setting", ["app_cert", "alipay_cert", "alipay_root_cert"])
def test_a_file_path_instead_of_the_certificate_text(keys, pki, setting, tmp_path):
    existing = tmp_path / "cert.txt"
    existing.write_text(pki.app.pem)
    for path in (str(existing), "certs/appCertPublicKey_2021000000000001.crt", " alipayRootCert.crt\n"):
        with pytest.raises(ValueError, match=f"{setting} looks like a file path; pass the certificate's text"):
            cert_config(keys, pki, **{setting: path})
    with pytest.raises(TypeError, match=f"{setting} is a path; pass the certificate's text"):
        cert_config(keys, pki, **{setting: existing})


def test_app_cert_of_another_key(keys, pki):
    with pytest.raises(ValueError, match="app_cert is not the certificate of app_private_key"):
        cert_config(keys, pki, app_cert=pki.stranger.pem)


def test_swapped_app_and_alipay_certificates(keys, pki):
    with pytest.raises(ValueError, match="app_cert and alipay_cert are swapped"):
        cert_config(keys, pki, app_cert=pki.alipay.pem, alipay_cert=pki.app.pem)


def test_the_apps_own_certificate_as_alipay_cert(keys, pki):
    with pytest.raises(ValueError, match="alipay_cert is your app's own certificate"):
        cert_config(keys, pki, alipay_cert=pki.app.pem)


@pytest.mark.parametrize("setting", ["app_cert", "alipay_cert"])
def test_a_leaf_certificate_as_the_root_bundle(keys, pki, setting):
    leaf = pki.app.pem if setting == "app_cert" else pki.alipay.pem
    with pytest.raises(ValueError, match=f"alipay_root_cert holds the {setting} certificate"):
        cert_config(keys, pki, alipay_root_cert=leaf)


def test_alipay_public_key_that_disagrees_with_alipay_cert(keys, pki):
    other = pki.stranger_key.public_key().export_key().decode()
    with pytest.raises(ValueError, match="alipay_public_key is not the key in alipay_cert"):
        cert_config(keys, pki, alipay_public_key=other)
    with pytest.raises(ValueError, match="alipay_public_key is not the key in alipay_cert"):
        cert_config(keys, pki, alipay_cert=VECTOR_ALIPAY_CERT, alipay_public_key=keys.alipay_public_pem)

