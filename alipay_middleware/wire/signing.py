"""Sign strings and the signature schemes, behind two tiny protocol-neutral interfaces.

Both Alipay protocols sign the same kind of string: every parameter except a few, empty values dropped,
sorted by key, raw ``k=v`` pairs joined with ``&`` (never URL-encoded). They differ only in which keys are
left out and in the scheme: RSA2/RSA (both protocols) or MD5 with a shared key (legacy service only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Protocol

from Crypto.Hash import SHA1, SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15


def sign_string(params: Mapping[str, str | None], exclude: Iterable[str] = ("sign",)) -> str:
    """``k=v&k=v`` over the non-empty parameters not in ``exclude``, sorted by key (ASCII order)."""
    skip = frozenset(exclude)
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in skip and params[k])


class Signer(Protocol):
    sign_type: str

    def sign(self, message: bytes) -> str: ...


class Verifier(Protocol):
    sign_type: str

    def verify(self, message: bytes, signature: str) -> bool: ...


_HASHES = {"RSA2": SHA256, "RSA": SHA1}


class RsaSigner:
    """PKCS#1 v1.5 signatures, base64 without newlines. ``RSA2`` is SHA-256, ``RSA`` is SHA-1."""

    def __init__(self, key: RSA.RsaKey, sign_type: str) -> None:
        self.sign_type = sign_type
        self._hash = _HASHES[sign_type]
        self._scheme = pkcs1_15.new(key)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._scheme.sign(self._hash.new(message))).decode("ascii")

    def __repr__(self) -> str:  # never show key material
        return f"RsaSigner({self.sign_type})"


class RsaVerifier:
    """Verifies with the hash pinned to the configured sign type: no downgrade to SHA-1 under RSA2."""

    def __init__(self, key: RSA.RsaKey, sign_type: str) -> None:
        self.sign_type = sign_type
        self._hash = _HASHES[sign_type]
        self._scheme = pkcs1_15.new(key)
        self._size = key.size_in_bytes()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        if len(raw) != self._size:  # truncated or padded signatures fail fast
            return False
        try:
            self._scheme.verify(self._hash.new(message), raw)
        except (ValueError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        return f"RsaVerifier({self.sign_type})"


class Md5Signer:
    """The legacy service's MD5 "signature": lowercase hex of md5(message + key), no separator.

    Both directions share the one secret key, so the same object signs and verifies; the comparison
    runs in constant time and accepts only the lowercase hex Alipay sends.
    """

    sign_type = "MD5"

    def __init__(self, key: str) -> None:
        self._key = key.encode("ascii")

    def sign(self, message: bytes) -> str:
        return hashlib.md5(message + self._key).hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            given = signature.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(self.sign(message).encode("ascii"), given)

    def __repr__(self) -> str:  # never show the key
        return "Md5Signer()"
