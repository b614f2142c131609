"""Reading Alipay's synchronous gateway responses (``alipay.trade.query``, ``.refund``, ``.close``, ...).

Pure functions, no I/O: give them the body text the gateway answered and the method that was called.

Security notes, up front:

- Alipay signs the *exact raw text* of one JSON object inside the body::

      {"alipay_trade_query_response":{"code":"10000",...},"sign":"...","alipay_cert_sn":"..."}

  The signed text is ``{"code":"10000",...}`` byte for byte, found by a string- and escape-aware scan
  (values may hold ``{``, ``}``, quotes and backslash escapes, so counting braces is wrong). It is never
  re-serialised: any re-encoding changes the bytes and breaks (or, worse, fakes) the check.
- Only the verified text is parsed, and a duplicate key anywhere inside it is rejected: two parsers that
  disagree on ``{"code":"40004","code":"10000"}`` once let a forged success through a popular SDK.
- Only top-level keys count. A ``"sign"`` inside the payload is data, not the signature.

The policy :func:`verify_response` applies:

- ``<method>_response`` must carry a valid ``sign``; unsigned or badly signed, it raises
  :class:`~alipay_middleware.errors.ResponseError` (``missing_sign`` / ``bad_signature``).
- ``error_response`` with a ``sign`` is verified the same way and comes back with ``is_error=True``.
- ``error_response`` *without* a ``sign`` (Alipay sends some, e.g. for an invalid app id, when it cannot
  know which key to sign with) is returned with ``verified=False, is_error=True``. It is only ever an
  error: treat it as "this call did not succeed, outcome as if unknown" and never as evidence of a trade
  state (anyone on the path could have written it). :attr:`GatewayResponse.succeeded` is false for it
  whatever its ``code`` says.
- Certificate mode: when ``expected_cert_sn`` is given and the body carries a top-level
  ``alipay_cert_sn`` (not covered by the signature) that differs, it raises ``cert_sn_mismatch``: Alipay
  signed with a certificate other than the one loaded (it rotated its key; load the new certificate).

Every failure is a :class:`~alipay_middleware.errors.ResponseError` with a stable ``reason``; no
``IndexError``, ``KeyError`` or ``JSONDecodeError`` escapes, whatever the body holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NoReturn

from ..errors import ResponseError
from .signing import Verifier

__all__ = ["ERROR_KEY", "GatewayResponse", "SignedPart", "extract_signed", "response_key", "verify_response"]

ERROR_KEY = "error_response"
SUCCESS_CODE = "10000"

_METHOD = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_WHITESPACE = " \t\n\r"  # JSON's four whitespace characters, nothing else (RFC 8259 section 2)
# Strings in the "unrolled loop" form: linear time even when the closing quote never comes.
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


def response_key(method: str) -> str:
    """The top-level key of a method's response: ``alipay.trade.query`` -> ``alipay_trade_query_response``."""
    if not isinstance(method, str) or not _METHOD.fullmatch(method) or method == "error":
        raise ValueError(f"method must be an Open Platform method name like 'alipay.trade.query', got {method!r}")
    return method.replace(".", "_") + "_response"


@dataclass(frozen=True)
class SignedPart:
    """What :func:`extract_signed` finds at the top level of a response body.

    ``text`` is the exact raw substring of the response object, ``{`` to its matching ``}``: the bytes
    (utf-8) that ``sign`` covers. ``sign`` and ``cert_sn`` are the decoded top-level ``sign`` and
    ``alipay_cert_sn`` strings, or None when absent. Nothing here has been verified yet.
    """

    text: str
    which: Literal["response", "error"]
    sign: str | None
    cert_sn: str | None

    @property
    def is_error(self) -> bool:
        return self.which == "error"


@dataclass(frozen=True)
class GatewayResponse:
    """A response read by :func:`verify_response`.

    ``payload`` is the parsed response object (JSON numbers with a fraction or exponent become
    ``Decimal``, never float). ``verified`` says the signature covered it; ``is_error`` says it came as
    ``error_response``. An unverified response is always an error (see the module docstring).
    """

    payload: dict[str, Any]
    verified: bool
    is_error: bool

    @property
    def code(self) -> str:
        """The gateway ``code`` (``10000`` success, ``40004`` business failure, ``20000`` unknown ...)."""
        code = self.payload.get("code")
        return code if isinstance(code, str) else ""

    @property
    def succeeded(self) -> bool:
        """True only for a verified ``<method>_response`` with ``code`` 10000."""
        return self.verified and not self.is_error and self.code == SUCCESS_CODE


def extract_signed(raw: str | bytes, method: str) -> SignedPart:
    """Find the signed object, ``sign`` and ``alipay_cert_sn`` at the top level of ``raw``. Verifies nothing.

    ``raw`` is the body as text (or utf-8 bytes). Raises :class:`ResponseError` when the body is not one
    well-formed JSON object (``malformed_response``), repeats a top-level key (``duplicate_key``), holds
    neither ``<method>_response`` nor ``error_response`` (``missing_response``) or both
    (``ambiguous_response``), or when ``sign``/``alipay_cert_sn`` are not strings.
    """
    key = response_key(method)
    text = _as_text(raw)
    members = _Scanner(text).top_level()
    if key in members and ERROR_KEY in members:
        raise ResponseError("ambiguous_response", f"the body holds both {key} and {ERROR_KEY}")
    which: Literal["response", "error"]
    if key in members:
        found, which = key, "response"
    elif ERROR_KEY in members:
        found, which = ERROR_KEY, "error"
    else:
        raise ResponseError("missing_response", f"the body holds neither {key} nor {ERROR_KEY}")
    start, end = members[found]
    if text[start] != "{":
        raise ResponseError("malformed_response", f"{found} is not a JSON object")
    return SignedPart(
        text=text[start:end],
        which=which,
        sign=_top_level_string(text, members, "sign"),
        cert_sn=_top_level_string(text, members, "alipay_cert_sn"),
    )


def verify_response(
    raw: str | bytes, method: str, verifier: Verifier, *, expected_cert_sn: str | None = None
) -> GatewayResponse:
    """Extract, verify, and only then parse a synchronous gateway response (policy: module docstring).

    ``verifier`` is Alipay's (e.g. :class:`~alipay_middleware.wire.signing.RsaVerifier` over Alipay's public
    key, with the sign type the request used). ``expected_cert_sn`` is the loaded Alipay certificate's
    serial number in certificate mode. An empty ``sign`` counts as no ``sign``.
    """
    part = extract_signed(raw, method)
    if expected_cert_sn is not None and part.cert_sn is not None and part.cert_sn != expected_cert_sn:
        raise ResponseError(
            "cert_sn_mismatch",
            "alipay_cert_sn differs from the loaded Alipay certificate (Alipay may have rotated it: "
            "download and load its current public key certificate)",
        )
    if not part.sign:
        if part.is_error:
            return GatewayResponse(_parse_object(part.text), verified=False, is_error=True)
        raise ResponseError("missing_sign", f"{response_key(method)} carries no sign")
    try:
        message = part.text.encode("utf-8")
    except UnicodeEncodeError:
        raise ResponseError("bad_encoding", "the response text is not encodable as utf-8") from None
    if not verifier.verify(message, part.sign):
        raise ResponseError("bad_signature", f"the {part.which} object does not match its sign")
    return GatewayResponse(_parse_object(part.text), verified=True, is_error=part.is_error)


# -- internals ---------------------------------------------------------------------------------------------


def _as_text(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ResponseError("bad_encoding", "the body is not valid utf-8") from None
    if not isinstance(raw, str):
        raise TypeError(f"raw must be the response body as str or bytes, not {type(raw).__name__}")
    return raw


def _top_level_string(text: str, members: dict[str, tuple[int, int]], name: str) -> str | None:
    span = members.get(name)
    if span is None:
        return None
    token = text[span[0] : span[1]]
    if not token.startswith('"'):
        raise ResponseError("malformed_response", f"top-level {name} is not a string")
    value: str = json.loads(token)  # a string token the scanner has validated
    return value


class _Scanner:
    """Finds value spans in JSON text without building values. Iterative: nesting depth costs no stack."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.end = len(text)

    def fail(self, at: int, expected: str) -> NoReturn:
        if at >= self.end:
            raise ResponseError("malformed_response", f"the body ends early (expected {expected})")
        raise ResponseError("malformed_response", f"expected {expected} at offset {at}")

    def skip_ws(self, at: int) -> int:
        text, end = self.text, self.end
        while at < end and text[at] in _WHITESPACE:
            at += 1
        return at

    def peek(self, at: int) -> str:
        return self.text[at] if at < self.end else ""

    def string(self, at: int) -> int:
        match = _STRING.match(self.text, at)
        if match is None:
            self.fail(at, "a complete JSON string")
        return match.end()

    def member_name(self, at: int) -> int:
        """Skip ``"name" :`` and return where the member's value may start."""
        at = self.skip_ws(self.string(at))
        if self.peek(at) != ":":
            self.fail(at, "':'")
        return at + 1

    def value(self, at: int) -> int:
        """Return the end (exclusive) of the JSON value starting at or after ``at``, validating its syntax."""
        closers: list[str] = []
        while True:
            at = self.skip_ws(at)
            char = self.peek(at)
            if char in ("{", "["):
                closer = "}" if char == "{" else "]"
                at = self.skip_ws(at + 1)
                if self.peek(at) == closer:
                    at += 1
                else:
                    closers.append(closer)
                    if closer == "}":
                        at = self.member_name(at)
                    continue
            elif char == '"':
                at = self.string(at)
            else:
                match = _SCALAR.match(self.text, at)
                if match is None:
                    self.fail(at, "a JSON value")
                at = match.end()
            # A value ended: close containers until one continues with ','.
            while closers:
                at = self.skip_ws(at)
                char = self.peek(at)
                if char == ",":
                    at += 1
                    if closers[-1] == "}":
                        at = self.member_name(self.skip_ws(at))
                    break
                if char != closers[-1]:
                    self.fail(at, f"',' or '{closers[-1]}'")
                closers.pop()
                at += 1
            else:
                return at

    def top_level(self) -> dict[str, tuple[int, int]]:
        """Spans of the top-level object's member values, by (decoded) name; the whole text must be that object."""
        at = self.skip_ws(0)
        if self.peek(at) != "{":
            self.fail(at, "a JSON object")
        members: dict[str, tuple[int, int]] = {}
        at = self.skip_ws(at + 1)
        if self.peek(at) == "}":
            at += 1
        else:
            while True:
                name_end = self.string(at)
                name = json.loads(self.text[at:name_end])  # decodes escapes: "\u0073ign" is "sign"
                if name in members:
                    raise ResponseError("duplicate_key", f"top-level key {name[:64]!r} appears twice")
                start = self.skip_ws(self.member_name(at))
                end = self.value(start)
                members[name] = (start, end)
                at = self.skip_ws(end)
                char = self.peek(at)
                if char == ",":
                    at = self.skip_ws(at + 1)
                    continue
                if char == "}":
                    at += 1
                    break
                self.fail(at, "',' or '}'")
        if self.skip_ws(at) != self.end:
            self.fail(self.skip_ws(at), "the end of the body after the JSON object")
        return members


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateKey(name)
        result[name] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(
            text, object_pairs_hook=_unique_object, parse_float=Decimal, parse_constant=_reject_constant
        )
    except _DuplicateKey as exc:
        raise ResponseError("duplicate_key", f"key {str(exc)[:64]!r} appears twice in the response object") from None
    except (ValueError, RecursionError):
        raise ResponseError("malformed_response", "the response object is not valid JSON") from None
    if not isinstance(value, dict):
        raise ResponseError("malformed_response", "the response is not a JSON object")
    return value
