"""Certificate mode (公钥证书模式): the serial numbers Alipay expects, and the key inside a certificate.

In certificate mode a request carries ``app_cert_sn`` (from the app's own certificate) and
``alipay_root_cert_sn`` (from Alipay's root bundle), and a response carries ``alipay_cert_sn``, which must
match the serial number of the Alipay public key certificate the merchant loaded. All three are::

    md5_hex(issuer DN as an RFC 4514 string + decimal serial number)

with the DN in RFC 4514 order (last RDN first: ``CN=...,OU=...,O=...,C=CN``). For the root bundle, the
serial numbers of its RSA-signed certificates (signature algorithm OID under 1.2.840.113549.1.1) are
joined with ``_`` in file order; the bundle's SM2 and ECDSA certificates, and any certificate that does
not parse, are skipped, as the official SDKs do.

Nothing here checks a certificate's validity, chain or dates: these functions only *identify*
certificates. The trust decision is the signature check with the key from :func:`public_key_from_cert`.
Parsing uses pycryptodome's small DER reader; errors are :class:`ValueError` naming the setting.
:func:`load_certificate_mode` reads the three settings of certificate mode at once and cross-checks them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerInteger, DerObject, DerObjectId, DerSequence, DerSetOf

from ..wire.keys import same_key

__all__ = [
    "CertificateMode",
    "cert_sn",
    "escape_dn_value",
    "load_certificate_mode",
    "public_key_from_cert",
    "root_cert_sn",
]

RSA_SIGNATURE_OID = "1.2.840.113549.1.1"

# The block body excludes "-" so a damaged block (BEGIN without END) cannot swallow the next one.
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----([^-]*)-----END CERTIFICATE-----")

# RFC 4514 section 3: the only short names an RFC 4514 string uses; any other type is written dotted.
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}

# Directory string types (by DER tag) with a string form, and how their octets decode.
_STRING_TYPES = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x12: "ascii",  # NumericString
    0x1A: "ascii",  # VisibleString
    0x14: "latin-1",  # TeletexString (T.61; Latin-1 as OpenSSL and cryptography read it)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}

_PARSE_ERRORS = (ValueError, IndexError, TypeError, KeyError)


def cert_sn(pem_or_der: str | bytes, setting: str = "certificate") -> str:
    """The serial number Alipay uses for a certificate: md5 hex of RFC 4514 issuer DN + decimal serial.

    Accepts PEM text (str or bytes) or DER bytes. A PEM text holding several certificates gives the
    first one's serial number, as the official SDKs do; use :func:`root_cert_sn` for the root bundle.
    """
    return _parse(_first_der(pem_or_der, setting), setting).sn


def root_cert_sn(bundle_text: str | bytes, setting: str = "alipay_root_cert") -> str:
    """``alipay_root_cert_sn``: the RSA-signed certificates' serial numbers, ``_``-joined in file order.

    Raises :class:`ValueError` when the bundle holds no PEM certificate, or no RSA-signed one that parses.
    """
    text = _as_pem_text(bundle_text, setting)
    blocks = _PEM_CERT.findall(text)
    if not blocks:
        raise ValueError(f"{setting} holds no PEM certificate (-----BEGIN CERTIFICATE----- ... END)")
    serials: list[str] = []
    for body in blocks:
        try:
            parsed = _parse(_decode_pem_body(body), setting)
        except ValueError:
            continue  # damaged or exotic entries are skipped, as the official SDKs do
        if parsed.rsa_signed:
            serials.append(parsed.sn)
    if not serials:
        raise ValueError(f"{setting} holds no RSA-signed certificate (is this Alipay's alipayRootCert.crt?)")
    return "_".join(serials)


def public_key_from_cert(pem_or_der: str | bytes, setting: str = "alipay_public_cert") -> RSA.RsaKey:
    """The RSA public key inside a certificate (the first one of a PEM text), for signature checks."""
    der = _first_der(pem_or_der, setting)
    _parse(der, setting)  # a clear error for a non-certificate before pycryptodome's generic one
    try:
        return RSA.import_key(der)
    except _PARSE_ERRORS:
        raise ValueError(f"{setting} is a certificate, but not for an RSA key") from None


@dataclass(frozen=True)
class CertificateMode:
    """What certificate mode needs at run time, read once from the three certificate texts."""

    app_cert_sn: str
    alipay_cert_sn: str
    alipay_root_cert_sn: str
    alipay_public_key: RSA.RsaKey = field(repr=False, compare=False)


def load_certificate_mode(
    app_cert: str | bytes, alipay_cert: str | bytes, alipay_root_cert: str | bytes, app_key: RSA.RsaKey
) -> CertificateMode:
    """Read the certificates of certificate mode and check they belong together.

    ``app_key`` is the app's private key. Refused, each with a :class:`ValueError` that says which file is
    wrong: an ``app_cert`` that is not the certificate of ``app_key``, an ``alipay_cert`` that holds the
    app's own key (the two files swapped, or the app's certificate given twice), and an
    ``alipay_root_cert`` that holds ``app_cert`` or ``alipay_cert`` instead of Alipay's root certificates.
    """
    own = app_key.public_key()
    app_public = public_key_from_cert(app_cert, "app_cert")
    alipay_public = public_key_from_cert(alipay_cert, "alipay_cert")
    if same_key(alipay_public, own):
        if not same_key(app_public, own):
            raise ValueError("app_cert and alipay_cert are swapped: alipay_cert holds your app's key")
        raise ValueError(
            "alipay_cert is your app's own certificate (its key matches app_private_key). Configure Alipay's "
            "public key certificate, alipayCertPublicKey_RSA2.crt"
        )
    if not same_key(app_public, own):
        raise ValueError(
            "app_cert is not the certificate of app_private_key: configure the appCertPublicKey_<app_id>.crt "
            "issued for this key (or the private key its certificate request was made with)"
        )
    mode = CertificateMode(
        app_cert_sn=cert_sn(app_cert, "app_cert"),
        alipay_cert_sn=cert_sn(alipay_cert, "alipay_cert"),
        alipay_root_cert_sn=root_cert_sn(alipay_root_cert, "alipay_root_cert"),
        alipay_public_key=alipay_public,
    )
    roots = mode.alipay_root_cert_sn.split("_")
    for setting, sn in (("app_cert", mode.app_cert_sn), ("alipay_cert", mode.alipay_cert_sn)):
        if sn in roots:
            raise ValueError(
                f"alipay_root_cert holds the {setting} certificate; configure Alipay's root certificates, "
                "alipayRootCert.crt"
            )
    return mode


def escape_dn_value(value: str) -> str:
    """Escape an attribute value for an RFC 4514 string (section 2.4).

    ``"``, ``+``, ``,``, ``;``, ``<``, ``>`` and ``\\`` get a backslash anywhere; so do a leading ``#`` or
    space and a trailing space; NUL becomes ``\\00``. Everything else, non-ASCII included, stays as is.
    """
    out = ["\\" + char if char in '"+,;<>\\' else "\\00" if char == "\0" else char for char in value]
    if out and out[0] in ("#", " "):
        out[0] = "\\" + out[0]
    if out and out[-1] == " ":
        out[-1] = "\\ "
    return "".join(out)


# -- internals ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Certificate:
    signature_oid: str
    issuer: str  # RFC 4514
    serial: int

    @property
    def sn(self) -> str:
        return hashlib.md5((self.issuer + str(self.serial)).encode("utf-8")).hexdigest()

    @property
    def rsa_signed(self) -> bool:
        oid = self.signature_oid
        return oid == RSA_SIGNATURE_OID or oid.startswith(RSA_SIGNATURE_OID + ".")


def _as_pem_text(data: str | bytes, setting: str) -> str:
    if isinstance(data, os.PathLike):
        raise TypeError(f"{setting} is a path; pass the certificate's text, e.g. Path(...).read_text()")
    if isinstance(data, bytes):
        text = data.decode("ascii", "replace")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"{setting} must be the certificate text (str) or bytes, not {type(data).__name__}")
    if _looks_like_path(text):
        raise ValueError(f"{setting} looks like a file path; pass the certificate's text, e.g. open(path).read()")
    return text


def _looks_like_path(text: str) -> bool:
    candidate = text.strip()
    if not candidate or "\n" in candidate or "-----" in candidate:
        return False
    # os.path.exists is False (never an error) for names too long or holding NUL.
    return candidate.lower().endswith((".crt", ".cer", ".pem")) or os.path.exists(candidate)


def _first_der(pem_or_der: str | bytes, setting: str) -> bytes:
    if isinstance(pem_or_der, bytes) and b"-----BEGIN" not in pem_or_der:
        if not pem_or_der.strip():
            raise ValueError(f"{setting} is empty: pass the certificate file's text")
        return pem_or_der  # DER
    text = _as_pem_text(pem_or_der, setting)
    match = _PEM_CERT.search(text)
    if match is None:
        if not text.strip():
            raise ValueError(f"{setting} is empty: pass the certificate file's text")
        if "-----BEGIN" in text:
            raise ValueError(
                f"{setting} holds a PEM block that is not a certificate (a key?); certificate mode needs "
                "the .crt files"
            )
        raise ValueError(f"{setting} is not a PEM certificate (-----BEGIN CERTIFICATE----- ... END)")
    return _decode_pem_body(match.group(1), setting)


def _decode_pem_body(body: str, setting: str = "certificate") -> bytes:
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{setting} holds a certificate block that is not valid base64") from None


def _parse(der: bytes, setting: str) -> _Certificate:
    """Read the few fields we need from an X.509 certificate (RFC 5280 section 4.1)."""
    try:
        certificate = DerSequence().decode(der, nr_elements=3)
        algorithm = DerSequence().decode(certificate[1])
        signature_oid = DerObjectId().decode(algorithm[0]).value
        tbs = DerSequence().decode(certificate[0])
        fields: list[object] = tbs[:]
        if isinstance(fields[0], bytes) and fields[0][:1] == b"\xa0":  # [0] EXPLICIT version
            fields = fields[1:]
        serial, _signature, issuer = fields[0], fields[1], fields[2]
        if not isinstance(serial, int) or not isinstance(issuer, bytes):
            raise ValueError("unexpected TBSCertificate layout")
        return _Certificate(signature_oid=signature_oid, issuer=_rfc4514(issuer), serial=serial)
    except _PARSE_ERRORS:
        raise ValueError(f"{setting} is not a readable X.509 certificate") from None


def _rfc4514(name_der: bytes) -> str:
    """An X.501 Name as RFC 4514 text: RDNs last-first, ``,`` between them, ``+`` inside one."""
    rdns = DerSequence().decode(name_der)
    return ",".join("+".join(_attributes(rdn)) for rdn in reversed(rdns[:]))


def _attributes(rdn_der: object) -> Iterator[str]:
    if not isinstance(rdn_der, bytes):
        raise ValueError("an RDN is not a SET")
    for attribute_der in DerSetOf().decode(rdn_der):
        if not isinstance(attribute_der, bytes):
            raise ValueError("an attribute is not a SEQUENCE")
        attribute = DerSequence().decode(attribute_der, nr_elements=2)
        oid = DerObjectId().decode(attribute[0]).value
        value_der = attribute[1]
        if not isinstance(value_der, bytes):  # pycryptodome decodes an INTEGER value: encode it back
            value_der = DerInteger(value_der).encode()
        yield _attribute(oid, value_der)


def _attribute(oid: str, value_der: bytes) -> str:
    name = _SHORT_NAMES.get(oid)
    payload = DerObject().decode(value_der).payload
    codec = _STRING_TYPES.get(value_der[0])
    if name is None or codec is None:
        # RFC 4514 section 2.4: a dotted type, or a value without a string form, is '#' + hex of its BER.
        return f"{name or oid}=#{value_der.hex()}"
    return f"{name}={escape_dn_value(payload.decode(codec))}"
