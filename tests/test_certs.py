"""Certificate mode: serial numbers of Alipay-issued certificates, the root bundle, and RFC 4514 names.

The REAL certificates are in tests/vectors/cert-sn/ (sources in SOURCES.md); the synthetic ones are built
here with pycryptodome's DER encoder (structure only: nothing here checks a certificate's signature).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from Crypto.PublicKey import ECC, RSA
from Crypto.Util.asn1 import DerBitString, DerInteger, DerNull, DerObject, DerObjectId, DerSequence, DerSetOf

from alipay_middleware.protocols.certs import cert_sn, escape_dn_value, public_key_from_cert, root_cert_sn

CERTS = Path(__file__).parent / "vectors" / "cert-sn"
VECTOR = json.loads((CERTS / "vector.json").read_text(encoding="utf-8"))["expected"]
APP_CERT = (CERTS / "appCertPublicKey_2021001161683774.crt").read_text()
ALIPAY_CERT = (CERTS / "alipayCertPublicKey_RSA2.crt").read_text()
ROOT_BUNDLE = (CERTS / "alipayRootCert.crt").read_text()
ROOT_SN = VECTOR["alipay_root_cert_sn(alipayRootCert.crt)"]
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----")

SHA256_RSA = "1.2.840.113549.1.1.11"
OID_CN, OID_O, OID_OU, OID_C = "2.5.4.3", "2.5.4.10", "2.5.4.11", "2.5.4.6"


def md5_sn(issuer: str, serial: int) -> str:
    return hashlib.md5((issuer + str(serial)).encode("utf-8")).hexdigest()


def pem(der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def der_of(pem_text: str) -> bytes:
    body = pem_text.split("-----")[2]
    return base64.b64decode("".join(body.split()))


def utf8(text: str) -> bytes:
    return DerObject(0x0C, text.encode("utf-8")).encode()


def printable(text: str) -> bytes:
    return DerObject(0x13, text.encode("ascii")).encode()


def name(*rdns: list[tuple[str, bytes]]) -> bytes:
    """An X.501 Name, RDNs in encoding order (the RFC 4514 string lists them reversed)."""
    return DerSequence([
        DerSetOf([DerSequence([DerObjectId(oid), value]).encode() for oid, value in rdn]).encode()
        for rdn in rdns
    ]).encode()


def certificate(issuer: bytes, serial: int, signature_oid: str = SHA256_RSA, spki: bytes | None = None) -> bytes:
    """A structurally valid X.509 v3 certificate (the signature is junk: nothing here verifies it)."""
    algorithm = DerSequence([DerObjectId(signature_oid), DerNull()]).encode()
    if spki is None:
        spki = RSA.generate(1024).public_key().export_key(format="DER")
    validity = DerSequence([DerObject(0x17, b"240101000000Z"), DerObject(0x17, b"340101000000Z")]).encode()
    tbs = DerSequence([DerInteger(2, explicit=0), serial, algorithm, issuer, validity, issuer, spki]).encode()
    return DerSequence([tbs, algorithm, DerBitString(b"\x00" * 32)]).encode()


ANT_ISSUER = name(
    [(OID_C, printable("CN"))],
    [(OID_O, utf8("Ant Financial"))],
    [(OID_OU, utf8("Certification Authority"))],
    [(OID_CN, utf8("Ant Financial Certification Authority Class 2 R1"))],
)


def test_certs_module_is_pure():
    code = ("import sys, alipay_middleware.protocols.certs; "
            "print([m for m in ('werkzeug', 'asgiref') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# -- the REAL vectors ----------------------------------------------------------------------------------------

def test_app_cert_sn():
    assert cert_sn(APP_CERT) == VECTOR["app_cert_sn(appCertPublicKey_2021001161683774.crt)"]


def test_alipay_cert_sn():
    assert cert_sn(ALIPAY_CERT) == VECTOR["alipay_cert_sn(alipayCertPublicKey_RSA2.crt)"]


def test_alipay_root_cert_sn_skips_the_sm2_and_ecdsa_certificates():
    assert len(PEM_BLOCK.findall(ROOT_BUNDLE)) == 4
    assert root_cert_sn(ROOT_BUNDLE) == ROOT_SN
    assert root_cert_sn(ROOT_BUNDLE.encode()) == ROOT_SN


def test_public_key_in_the_alipay_cert_is_the_published_one():
    key = public_key_from_cert(ALIPAY_CERT)
    assert not key.has_private()
    spki = base64.b64encode(key.export_key(format="DER")).decode()
    assert spki == VECTOR["alipay_public_key_in_alipayCertPublicKey_RSA2.crt (SPKI base64)"]


@pytest.mark.parametrize("shape", ["str", "bytes", "der", "crlf", "surrounded"])
def test_input_shapes_give_the_same_serial(shape):
    given: str | bytes = {
        "str": ALIPAY_CERT,
        "bytes": ALIPAY_CERT.encode(),
        "der": der_of(ALIPAY_CERT),
        "crlf": ALIPAY_CERT.replace("\n", "\r\n"),
        "surrounded": "subject=CN=whatever\nissuer=...\n" + ALIPAY_CERT + "\ntrailing notes",
    }[shape]
    assert cert_sn(given) == VECTOR["alipay_cert_sn(alipayCertPublicKey_RSA2.crt)"]
    assert public_key_from_cert(given) == public_key_from_cert(ALIPAY_CERT)


def test_first_certificate_of_a_chain_is_used():
    assert cert_sn(ALIPAY_CERT + APP_CERT) == cert_sn(ALIPAY_CERT)


# -- the root bundle --------------------------------------------------------------------------------------------

def test_bundle_is_split_by_pem_markers_not_blank_lines():
    blocks = PEM_BLOCK.findall(ROOT_BUNDLE)
    assert root_cert_sn("".join(blocks)) == ROOT_SN  # no separator at all
    assert root_cert_sn("\n\n\n".join(blocks)) == ROOT_SN
    assert root_cert_sn("\r\n".join(b.replace("\n", "\r\n") for b in blocks)) == ROOT_SN
    blank_lines_inside = [b.replace("\n", "\n\n") for b in blocks]
    assert root_cert_sn("\n".join(blank_lines_inside)) == ROOT_SN


GARBAGE_BLOCKS = {
    "not base64": "-----BEGIN CERTIFICATE-----\nthis is !! not base64\n-----END CERTIFICATE-----\n",
    "base64 of junk": pem(b"hello, not DER"),
    "truncated certificate": pem(der_of(ALIPAY_CERT)[:200]),
    "empty block": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    "begin without end": "-----BEGIN CERTIFICATE-----\nMIIB\n",
    "a public key block": RSA.generate(1024).public_key().export_key().decode() + "\n",
}


@pytest.mark.parametrize("garbage", list(GARBAGE_BLOCKS.values()), ids=list(GARBAGE_BLOCKS))
def test_garbage_inside_the_bundle_is_skipped(garbage):
    blocks = PEM_BLOCK.findall(ROOT_BUNDLE)
    for where in range(len(blocks) + 1):
        bundle = "\n".join(blocks[:where]) + "\n" + garbage + "\n".join(blocks[where:])
        assert root_cert_sn(bundle) == ROOT_SN, where


@pytest.mark.parametrize("bundle", ["", "   \n", "not a certificate", RSA.generate(1024).export_key().decode()],
                         ids=["empty", "blank", "text", "a private key"])
def test_bundle_without_certificates_raises(bundle):
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        root_cert_sn(bundle)


def test_bundle_without_an_rsa_certificate_raises():
    blocks = PEM_BLOCK.findall(ROOT_BUNDLE)
    only_sm2_and_ecdsa = blocks[0] + "\n" + blocks[2] + "\n" + GARBAGE_BLOCKS["base64 of junk"]
    with pytest.raises(ValueError, match="holds no RSA-signed certificate"):
        root_cert_sn(only_sm2_and_ecdsa)


@pytest.mark.parametrize("oid,counted", [
    ("1.2.840.113549.1.1.5", True),  # sha1WithRSAEncryption
    ("1.2.840.113549.1.1.11", True),  # sha256WithRSAEncryption
    ("1.2.840.113549.1.1.10", True),  # RSASSA-PSS
    ("1.2.840.113549.1.10", False),  # shares the text prefix, not the arc
    ("1.2.840.10045.4.3.2", False),  # ecdsa-with-SHA256
    ("1.2.156.10197.1.501", False),  # SM2-with-SM3
])
def test_only_the_rsa_signature_arc_counts(oid, counted):
    cert = pem(certificate(ANT_ISSUER, 7, signature_oid=oid))
    bundle = PEM_BLOCK.findall(ROOT_BUNDLE)[1] + "\n" + cert
    first = ROOT_SN.split("_")[0]
    assert root_cert_sn(bundle) == (f"{first}_{cert_sn(cert)}" if counted else first)


# -- not a certificate --------------------------------------------------------------------------------------

NOT_CERTS = {
    "empty": ("", "is empty"),
    "empty bytes": (b"", "is empty"),
    "public key PEM": (RSA.generate(1024).public_key().export_key().decode(), "not a certificate"),
    "plain text": ("hello", "is not a PEM certificate"),
    "junk DER": (b"\x30\x03\x02\x01\x01", "is not a readable X.509 certificate"),
    "random bytes": (bytes(range(256)), "is not a readable X.509 certificate"),
    "PEM of junk": (GARBAGE_BLOCKS["base64 of junk"], "is not a readable X.509 certificate"),
    "PEM not base64": (GARBAGE_BLOCKS["not base64"], "not valid base64"),
    "truncated": (GARBAGE_BLOCKS["truncated certificate"], "is not a readable X.509 certificate"),
    "indefinite length": (b"\x30\x80\x00\x00", "is not a readable X.509 certificate"),
}


@pytest.mark.parametrize("data,message", list(NOT_CERTS.values()), ids=list(NOT_CERTS))
def test_non_certificates_raise_a_clear_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        cert_sn(data, setting="app_cert")
    with pytest.raises(ValueError, match=r"^alipay_public_cert "):
        public_key_from_cert(data)


def test_certificate_for_a_non_rsa_key():
    ec_spki = ECC.generate(curve="P-256").public_key().export_key(format="DER")
    cert = pem(certificate(ANT_ISSUER, 1, spki=ec_spki))
    assert cert_sn(cert) == md5_sn(
        "CN=Ant Financial Certification Authority Class 2 R1,OU=Certification Authority,O=Ant Financial,C=CN", 1
    )
    with pytest.raises(ValueError, match="not for an RSA key"):
        public_key_from_cert(cert)


def test_synthetic_certificate_key_and_serial():
    key = RSA.generate(1024)
    cert = pem(certificate(ANT_ISSUER, 2**70 + 5, spki=key.public_key().export_key(format="DER")))
    assert public_key_from_cert(cert) == key.public_key()
    issuer = "CN=Ant Financial Certification Authority Class 2 R1,OU=Certification Authority,O=Ant Financial,C=CN"
    assert cert_sn(cert) == md5_sn(issuer, 2**70 + 5)


# -- RFC 4514 -----------------------------------------------------------------------------------------------

ESCAPES = {
    "plain": ("Ant Financial", "Ant Financial"),
    "comma": ("Foo, Inc.", "Foo\\, Inc."),
    "plus": ("a+b", "a\\+b"),
    "quote": ('say "hi"', 'say \\"hi\\"'),
    "backslash": ("a\\b", "a\\\\b"),
    "angle brackets": ("<x>", "\\<x\\>"),
    "semicolon": ("a;b", "a\\;b"),
    "leading hash": ("#1", "\\#1"),
    "inner hash": ("No#1", "No#1"),
    "leading space": (" a", "\\ a"),
    "trailing space": ("a ", "a\\ "),
    "single space": (" ", "\\ "),
    "two spaces": ("  ", "\\ \\ "),
    "inner spaces": ("a  b", "a  b"),
    "equals": ("a=b", "a=b"),
    "NUL": ("a\0b", "a\\00b"),
    "CJK": ("蚂蚁金服", "蚂蚁金服"),
    "empty": ("", ""),
}


@pytest.mark.parametrize("value,escaped", list(ESCAPES.values()), ids=list(ESCAPES))
def test_rfc4514_escaping(value, escaped):
    assert escape_dn_value(value) == escaped


EMAIL = "1.2.840.113549.1.9.1"
NAMES = {
    "order is reversed": (
        name([(OID_C, printable("CN"))], [(OID_O, utf8("Ant"))], [(OID_CN, utf8("Root"))]),
        "CN=Root,O=Ant,C=CN",
    ),
    "all RFC 4514 short names": (
        name([("0.9.2342.19200300.100.1.25", DerObject(0x16, b"com").encode())], [("2.5.4.7", utf8("Hangzhou"))],
             [("2.5.4.8", utf8("Zhejiang"))], [("2.5.4.9", utf8("1 Road"))],
             [("0.9.2342.19200300.100.1.1", utf8("u1"))]),
        "UID=u1,STREET=1 Road,ST=Zhejiang,L=Hangzhou,DC=com",
    ),
    "special characters escaped": (
        name([(OID_O, utf8('Foo, "Bar" + <Baz>; #1'))], [(OID_CN, utf8(" padded "))]),
        'CN=\\ padded\\ ,O=Foo\\, \\"Bar\\" \\+ \\<Baz\\>\\; #1',
    ),
    "multi-valued RDN": (
        name([(OID_C, printable("CN"))], [(OID_OU, utf8("B")), (OID_CN, utf8("A"))]),
        "CN=A+OU=B,C=CN",  # DER sorts the SET's members: the CN attribute encodes first
    ),
    "emailAddress has no RFC 4514 name": (
        name([(OID_C, printable("CN"))], [(EMAIL, DerObject(0x16, b"ca@example.com").encode())]),
        "1.2.840.113549.1.9.1=#160e6361406578616d706c652e636f6d,C=CN",
    ),
    "BMPString and UniversalString": (
        name([(OID_O, DerObject(0x1E, "蚂蚁".encode("utf-16-be")).encode())],
             [(OID_CN, DerObject(0x1C, "金服".encode("utf-32-be")).encode())]),
        "CN=金服,O=蚂蚁",
    ),
    "a value without a string form": (
        name([(OID_CN, DerObject(0x04, b"\x01\x02").encode())]),
        "CN=#04020102",
    ),
    "empty name": (DerSequence([]).encode(), ""),
}


@pytest.mark.parametrize("issuer,expected", list(NAMES.values()), ids=list(NAMES))
def test_issuer_dn_as_rfc4514(issuer, expected):
    assert cert_sn(certificate(issuer, 12345)) == md5_sn(expected, 12345)
