"""A tiny certificate authority for tests: minimal, genuinely signed X.509 v3 certificates.

Built with pycryptodome's DER encoder only (RFC 5280 section 4.1): version 3, serial, signature algorithm,
issuer, validity, subject, subjectPublicKeyInfo and, for CAs, a critical basicConstraints CA:TRUE (which
OpenSSL requires of an intermediate); for a TLS server, subjectAltName (``san``: DNS names and IP
addresses, which is what hostname checks read). Signatures are real: PKCS#1 v1.5 with SHA-256 (or SHA-1) for RSA
issuers, ECDSA with SHA-256 for EC issuers; ``openssl verify`` accepts the chains (see test_cert_mode.py).
A certificate can also be given an unknown signature algorithm with junk signature bytes, as a stand-in
for the exotic entries of Alipay's root bundle.
"""

from __future__ import annotations

import base64
import ipaddress
import textwrap
from dataclasses import dataclass

from Crypto.Hash import SHA1, SHA256
from Crypto.PublicKey import ECC, RSA
from Crypto.Signature import DSS, pkcs1_15
from Crypto.Util.asn1 import (
    DerBitString,
    DerInteger,
    DerNull,
    DerObject,
    DerObjectId,
    DerOctetString,
    DerSequence,
    DerSetOf,
)

Key = RSA.RsaKey | ECC.EccKey

SHA256_RSA = "1.2.840.113549.1.1.11"
SHA1_RSA = "1.2.840.113549.1.1.5"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"

_ATTRIBUTE_OIDS = {"C": "2.5.4.6", "O": "2.5.4.10", "OU": "2.5.4.11", "CN": "2.5.4.3"}
_DER_TRUE = b"\x01\x01\xff"  # BOOLEAN TRUE, encoded by hand (DerBoolean is missing from older pycryptodome)
_BASIC_CONSTRAINTS = "2.5.29.19"
_SUBJECT_ALT_NAME = "2.5.29.17"


def dn(*attributes: tuple[str, str]) -> bytes:
    """An X.501 Name, one attribute per RDN, in encoding order (``C`` first, ``CN`` last, as CAs write them).

    ``C`` is a PrintableString, the rest UTF8String. Its RFC 4514 string lists the RDNs in reverse.
    """
    rdns = []
    for kind, value in attributes:
        tag, octets = (0x13, value.encode("ascii")) if kind == "C" else (0x0C, value.encode("utf-8"))
        attribute = DerSequence([DerObjectId(_ATTRIBUTE_OIDS[kind]), DerObject(tag, octets)]).encode()
        rdns.append(DerSetOf([attribute]).encode())
    return DerSequence(rdns).encode()


@dataclass(frozen=True)
class Issued:
    der: bytes
    key: Key  # the subject's private key: what this certificate's key pair signs with
    subject: bytes  # DER Name, the issuer of whatever this certificate signs

    @property
    def pem(self) -> str:
        body = "\n".join(textwrap.wrap(base64.b64encode(self.der).decode("ascii"), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def _general_name(name: str) -> bytes:
    """A GeneralName: iPAddress [7] for an address, dNSName [2] otherwise (both IMPLICIT)."""
    try:
        return DerObject(0x04, ipaddress.ip_address(name).packed, implicit=7).encode()  # OCTET STRING
    except ValueError:
        return DerObject(0x16, name.encode("ascii"), implicit=2).encode()  # IA5String


def issue(subject: bytes, serial: int, key: Key, *, issuer: Issued | None = None, ca: bool = False,
          signature_oid: str | None = None, san: tuple[str, ...] = ()) -> Issued:
    """A certificate for ``key``'s public half, signed by ``issuer`` (self-signed when None).

    ``signature_oid`` forces the signature algorithm: SHA1_RSA for an RSA issuer gives a real SHA-1
    signature; an OID this factory does not know gives junk signature bytes.
    """
    signer = key if issuer is None else issuer.key
    is_rsa = isinstance(signer, RSA.RsaKey)
    oid = signature_oid or (SHA256_RSA if is_rsa else ECDSA_SHA256)
    # RFC 4055: RSA algorithm identifiers carry NULL parameters; RFC 5758: ECDSA ones carry none.
    algorithm = DerSequence([DerObjectId(oid), DerNull()] if is_rsa else [DerObjectId(oid)]).encode()
    validity = DerSequence([DerObject(0x17, b"240101000000Z"), DerObject(0x17, b"491231235959Z")]).encode()
    fields: list[int | bytes] = [
        DerInteger(2, explicit=0).encode(),  # [0] EXPLICIT version: v3
        serial,
        algorithm,
        issuer.subject if issuer else subject,
        validity,
        subject,
        key.public_key().export_key(format="DER"),
    ]
    extensions = []
    if ca:
        constraints = DerSequence([_DER_TRUE]).encode()
        basic = DerSequence([DerObjectId(_BASIC_CONSTRAINTS), _DER_TRUE, DerOctetString(constraints)])
        extensions.append(basic.encode())
    if san:
        names = DerSequence([_general_name(name) for name in san]).encode()
        extensions.append(DerSequence([DerObjectId(_SUBJECT_ALT_NAME), DerOctetString(names)]).encode())
    if extensions:
        fields.append(DerSequence(extensions, explicit=3).encode())  # [3] EXPLICIT extensions
    tbs = DerSequence(fields).encode()
    signature = _sign(signer, oid, tbs)
    return Issued(DerSequence([tbs, algorithm, DerBitString(signature)]).encode(), key, subject)


def _sign(signer: Key, oid: str, tbs: bytes) -> bytes:
    if oid == SHA256_RSA and isinstance(signer, RSA.RsaKey):
        return bytes(pkcs1_15.new(signer).sign(SHA256.new(tbs)))
    if oid == SHA1_RSA and isinstance(signer, RSA.RsaKey):
        return bytes(pkcs1_15.new(signer).sign(SHA1.new(tbs)))
    if oid == ECDSA_SHA256 and isinstance(signer, ECC.EccKey):
        return bytes(DSS.new(signer, "fips-186-3", encoding="der").sign(SHA256.new(tbs)))
    return b"\x00junk signature of an algorithm nobody here knows"
