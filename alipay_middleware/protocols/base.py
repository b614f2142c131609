"""The protocol-neutral interface the callback core talks to.

A protocol knows how its callbacks are signed and what their fields mean; the callback core (``callbacks/``) knows
the order of things (verify, check the recipient, record, check the order, call the hook, acknowledge).
The Open Platform lives in ``openapi.py``; the legacy ``create_direct_pay_by_user`` service slots in
beside it by implementing the same few methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..errors import Rejection, RejectionReason
from ..events import PAID, Kind, PaymentEvent, ReturnResult
from ..wire.form import content_type_charset, parse_amount, parse_form, sniff_charset
from ..wire.signing import Verifier, sign_string


class SettingTypeError(TypeError, ValueError):
    """A setting of the wrong type (``app_id=2021000000000000`` as an int). A :class:`TypeError`, and a
    :class:`ValueError` too, as every other bad setting is."""


_TYPE_NAMES = {str: "a str", int: "an int", float: "a float", bool: "True or False"}


def check_type(setting: str, value: object, expected: type | tuple[type, ...], form: str = "", *,
               optional: bool = False, secret: bool = False) -> None:
    """Raise :class:`SettingTypeError` unless ``value`` is one of ``expected`` (None too when ``optional``).

    The message names the type expected and the type given, and shows the value (not when ``secret``),
    so that ``2021000000000000``, which looks right, is seen to be an int. ``bool`` is never taken for an
    int. ``form`` says what the value is, e.g. "the 16-digit app id": ``app_id must be the 16-digit app id
(a str), got int: 2021000000000000``.
    """
    types = expected if isinstance(expected, tuple) else (expected,)
    if value is None and optional:
        return
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return
    wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types) + (" or None" if optional else "")
    given = type(value).__name__
    shown = "" if secret else f": {value!r:.80}"
    must = f"{form} ({wanted})" if form else wanted
    raise SettingTypeError(f"{setting} must be {must}, got {given}{shown}")


#: The types a key setting may have: its text, as str or bytes.
KEY_TEXT = (str, bytes)


def check_gateway(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a path (``/gateway.do``); else a message naming the form."""
    if not isinstance(url, str):
        raise TypeError(f"gateway must be a URL string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"gateway must be an absolute http(s) URL, got {url[:80]!r}")
    if parts.path in ("", "/"):
        raise ValueError(
            f"gateway {url[:80]!r} has no path: give the gateway's full URL, path included, such as "
            f"'https://openapi.alipay.com/gateway.do' or a simulator's 'http://127.0.0.1:8001/gateway.do'"
        )
    return url


def verify_signed_fields(
    fields: Mapping[str, str],
    charset: str,
    verifier: Verifier,
    rules: Iterable[Iterable[str]],
) -> None:
    """Accept ``fields`` if its ``sign`` verifies under any of ``rules`` (keys left out of the string)."""
    signature = fields.get("sign")
    if not signature:
        raise Rejection("missing_sign", 400)
    declared = fields.get("sign_type")
    if declared and declared != verifier.sign_type:
        # The hash is pinned to the configuration: an RSA (SHA-1) message under RSA2 is a downgrade.
        raise Rejection("sign_type_mismatch", 400, f"message says {declared[:10]!r}")
    for exclude in rules:
        try:
            message = sign_string(fields, exclude).encode(charset)
        except UnicodeEncodeError:  # pragma: no cover - values were decoded from this charset
            break
        if verifier.verify(message, signature):
            return
    raise Rejection("bad_signature", 400)


def amount_field(fields: Mapping[str, str], name: str) -> Decimal | None:
    """A money field of a verified message as a Decimal; None when absent; a rejection when malformed."""
    text = fields.get(name)
    if not text:
        return None
    try:
        return parse_amount(text)
    except ValueError:
        raise Rejection("bad_amount", 400, f"{name} is not an amount") from None


class Protocol(ABC):
    """One Alipay protocol, configured. Methods are pure: no I/O, no clock unless asked."""

    #: The merchant identity that namespaces dedupe keys (app id or partner id).
    account: str
    #: The Open Platform app id events carry ("" for the legacy service, which has none).
    app_id: str = ""
    #: The class of ``environ["alipay"]`` / ``scope["alipay"]`` for this protocol.
    helper_class: ClassVar[type[Any]]

    @abstractmethod
    def verify_notify(self, fields: Mapping[str, str], charset: str) -> None:
        """Raise :class:`Rejection` unless the notification's signature verifies."""

    @abstractmethod
    def verify_return(self, fields: Mapping[str, str], charset: str) -> None:
        """Raise :class:`Rejection` unless the browser return's signature verifies."""

    @abstractmethod
    def recipient_problem(self, fields: Mapping[str, str]) -> RejectionReason | None:
        """A reason code when a verified message is addressed to another app or seller."""

    @abstractmethod
    def event(self, fields: Mapping[str, str]) -> PaymentEvent:
        """Classify a verified notification and give it its dedupe key."""

    @abstractmethod
    def return_result(self, fields: Mapping[str, str]) -> ReturnResult:
        """Read a verified browser return."""

    def return_event(self, fields: Mapping[str, str]) -> PaymentEvent | None:
        """The payment a verified return proves by itself, if its protocol's returns can prove one.

        None here: an Open Platform return carries no trade status. The legacy return does.
        """
        return None

    def origin_url(self, fields: Mapping[str, str], *, on_return: bool) -> str | None:
        """The URL whose answer proves a verified message really came from Alipay just now, or None
        when the protocol has no such check (the Open Platform's RSA signature is the proof).

        Raises :class:`Rejection` when the message lacks what the check needs.
        """
        return None

    #: Seconds to wait for the origin check's answer before answering 503 (Alipay resends).
    origin_timeout: float = 10.0

    def check_origin(self, answer: bytes) -> None:  # noqa: B027 - nothing to check without an origin URL
        """Raise :class:`Rejection` unless ``answer`` (the body behind :meth:`origin_url`) accepts."""

    def amount_problem(self, expected: object, event: PaymentEvent) -> RejectionReason | None:
        """A reason code when the event's amount does not match ``order_amount``'s answer."""
        if expected is None:
            return "unknown_order"
        if isinstance(expected, (float, bool)) or not isinstance(expected, (Decimal, int)):
            raise TypeError(f"order_amount must return a Decimal or None, not {type(expected).__name__}")
        if event.total_amount is None:
            return "amount_missing"
        if Decimal(expected) != event.total_amount:
            return "amount_mismatch"
        return None

    def key(self, kind: Kind, *parts: str) -> str:
        """A dedupe key, namespaced by the merchant: ``paid:<app_id>:<out_trade_no>`` and the like."""
        return ":".join((kind, self.account, *parts))

    def paid_key(self, event: PaymentEvent) -> str:
        """The dedupe key of the trade's payment: SUCCESS and a later FINISHED share it."""
        return self.key(PAID, event.out_trade_no)

    #: Charset assumed when neither the body nor the Content-Type declares one.
    default_charset = "utf-8"

    def parse(self, raw: bytes, content_type: str | None) -> tuple[dict[str, str], str]:
        """Form-decode a callback once, in the charset it declares."""
        charset = sniff_charset(raw, content_type_charset(content_type) or self.default_charset)
        return parse_form(raw, charset), charset
