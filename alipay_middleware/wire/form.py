"""Bytes on the wire: charset-aware form decoding, money and Alipay's UTC+8 timestamps.

Framework form parsers decode bodies as UTF-8 (or latin-1) before we see them, which mangles the GBK
notifications Alipay sends to merchants whose requests said ``charset=GBK``. So callbacks are parsed here,
from the raw bytes, exactly once: ``+`` is a space, ``%XX`` a byte, and the bytes of each value are
decoded with the charset the message declares.
"""

from __future__ import annotations

import codecs
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from ..errors import Rejection

#: China Standard Time. China has no daylight saving time, so a fixed offset is exact.
CST = timezone(timedelta(hours=8), "UTC+08:00")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk"}
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CHARSET_FIELD = re.compile(rb"(?:^|&)charset=([^&]*)")
_CONTENT_TYPE_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_KEY = re.compile(rb"[A-Za-z0-9_.\-\[\]]{1,64}")
_PAIR = re.compile(rb"(?:^|(?<=&))([A-Za-z0-9_.\-\[\]]{1,64})=([^&]*)")


def normalize_charset(name: str) -> str:
    """``utf-8``/``gbk`` for the charsets Alipay uses (gb2312 is decoded as its superset gbk)."""
    try:
        return _CHARSETS[name.strip().lower()]
    except KeyError:
        raise Rejection("unknown_charset", 400, f"charset {name[:20]!r} is not utf-8, gbk or gb2312") from None


def content_type_charset(content_type: str | None) -> str | None:
    # Real notifications arrive with malformed types such as
    # "application/x-www-form-urlencoded; text/html; charset=UTF-8": search, do not parse strictly.
    if not content_type:
        return None
    match = _CONTENT_TYPE_CHARSET.search(content_type)
    return match.group(1) if match else None


def sniff_charset(raw: bytes, fallback: str | None) -> str:
    """The ``charset`` field (ASCII, readable before decoding), else ``fallback``, else utf-8."""
    match = _CHARSET_FIELD.search(raw)
    if match and match.group(1):
        if _BAD_ESCAPE.search(match.group(1)):
            raise Rejection("malformed_body", 400, "bad percent escape")
        try:
            declared = unescape(match.group(1)).decode("ascii")
        except UnicodeDecodeError:
            raise Rejection("unknown_charset", 400, "charset field is not ASCII") from None
        return normalize_charset(declared)
    return normalize_charset(fallback) if fallback else "utf-8"


def unescape(data: bytes) -> bytes:
    """Form-decode one component: ``+`` is a space, ``%XX`` a byte (escapes already validated).

    Same result as ``urllib.parse.unquote_to_bytes`` after ``+`` -> space, but in C: percent escapes
    become ``\\xHH`` escapes (literal backslashes doubled first) for ``codecs.escape_decode``. A
    notification has a hundred-odd escapes (CJK subjects, times, the signature); this keeps parsing
    well under the RSA verify it precedes.
    """
    if b"+" in data:
        data = data.replace(b"+", b" ")
    if b"%" not in data:
        return data
    return codecs.escape_decode(data.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]


def parse_form(raw: bytes, charset: str) -> dict[str, str]:
    """Decode ``application/x-www-form-urlencoded`` bytes once, strictly.

    Rejects (never raises anything else): missing ``=``, bad percent escapes, bytes that are not valid in
    ``charset``, odd keys, and duplicate keys (a duplicate is how a forged value hides behind a signed one).
    """
    if _BAD_ESCAPE.search(raw):
        raise Rejection("malformed_body", 400, "bad percent escape")
    # Fast path, for every well-formed body: one C-level scan finds all pairs. Anything unusual (an
    # empty or escaped key, a segment without '=', a duplicate) falls through to the strict loop below,
    # which gives the precise rejection.
    pairs = _PAIR.findall(raw)
    if len(pairs) == raw.count(b"&") + 1:
        # All values are unescaped and decoded in one go, joined by a newline: a byte that never occurs
        # inside a UTF-8 or GBK character. Should a value itself hold a newline, the count is off and
        # the loop below takes over.
        decoded = unescape(b"\n".join(value for _, value in pairs))
        if decoded.count(b"\n") == len(pairs) - 1:
            try:
                values = decoded.decode(charset).split("\n")
            except UnicodeDecodeError:
                raise Rejection("undecodable", 400, f"bytes not valid in {charset}") from None
            fields = dict(zip(b"\n".join(key for key, _ in pairs).decode("ascii").split("\n"), values, strict=True))
            if len(fields) == len(pairs):
                return fields
    fields = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        key_bytes, sep, value_bytes = pair.partition(b"=")
        if not sep:
            raise Rejection("malformed_body", 400, "a field without '='")
        key_bytes = unescape(key_bytes)
        if not _KEY.fullmatch(key_bytes):
            raise Rejection("malformed_body", 400, "a field name that Alipay never sends")
        key = key_bytes.decode("ascii")
        try:
            value = unescape(value_bytes).decode(charset)
        except UnicodeDecodeError:
            raise Rejection("undecodable", 400, f"bytes not valid in {charset}") from None
        if key in fields:
            raise Rejection("duplicate_field", 400, f"field {key!r} appears twice")
        fields[key] = value
    if not fields:
        raise Rejection("malformed_body", 400, "no fields")
    return fields


_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,8})(\.[0-9]{1,2})?")
_CENT = Decimal("0.01")
MIN_AMOUNT = Decimal("0.01")
MAX_AMOUNT = Decimal("100000000")


def parse_amount(text: str) -> Decimal:
    """An amount as Alipay sends it (``"9.90"``), strictly; raises ValueError otherwise."""
    if not _AMOUNT.fullmatch(text):
        raise ValueError(f"not an amount: {text[:32]!r}")
    return Decimal(text)


def format_amount(value: object, name: str = "total_amount") -> str:
    """Money for a request: a Decimal or a str like ``"9.90"``, exactly two decimals, in Alipay's range.

    A float is a TypeError (0.1 + 0.2 is not money); more than two decimals is a ValueError rather
    than a silent rounding.
    """
    if isinstance(value, (float, bool)) or not isinstance(value, (Decimal, str, int)):
        raise TypeError(f"{name} must be a Decimal or a str such as '9.90', not {type(value).__name__}")
    if isinstance(value, str):
        if not _AMOUNT.fullmatch(value.strip()):
            raise ValueError(f"{name} {value!r} is not an amount with at most two decimals")
        amount = Decimal(value.strip())
    else:
        try:
            amount = Decimal(value)
        except (InvalidOperation, ValueError):  # pragma: no cover - Decimal(Decimal) never fails
            raise ValueError(f"{name} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{name} must be a finite amount")
    quantized = amount.quantize(_CENT)
    if quantized != amount:
        raise ValueError(f"{name} {amount} has more than two decimals; round it yourself first")
    if not MIN_AMOUNT <= quantized <= MAX_AMOUNT:
        raise ValueError(f"{name} {quantized} is outside Alipay's range 0.01 .. 100000000.00")
    return f"{quantized:f}"


def cst_timestamp(now: datetime | None = None) -> str:
    """The ``timestamp`` request parameter: Beijing time, whatever the server's local zone."""
    moment = now.astimezone(CST) if now is not None else datetime.now(CST)
    return moment.strftime(TIMESTAMP_FORMAT)


_CST_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?")


def parse_cst(text: str | None) -> datetime | None:
    """An Alipay time (``2024-01-01 12:00:06``, refunds sometimes with milliseconds) as an aware
    datetime in UTC+8; None when absent or not in that shape."""
    if not text or not _CST_TIME.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=CST)
    except ValueError:  # e.g. month 13
        return None
