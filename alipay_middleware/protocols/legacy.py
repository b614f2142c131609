"""The legacy "instant credit" service (partner id + MD5 or RSA): ``create_direct_pay_by_user``.

Facts this module relies on (see the project's protocol reference):
- requests go to ``mapi.alipay.com/gateway.do``; the sign string leaves out ``sign`` *and*
  ``sign_type`` and empty values, sorted, raw ``k=v`` joined with ``&``, in the ``_input_charset``;
- ``MD5`` is lowercase hex md5(sign string + key); ``RSA`` is SHA1withRSA with 1024-bit keys, and
  callbacks are signed with Alipay's one legacy public key, shared by every merchant; ``DSA`` is
  documented but no gateway ever implemented it;
- callbacks are signed the same way and must then pass the origin check: ``notify_verify`` on the
  gateway, with ``notify_id`` concatenated exactly as received (after the one form decode: return ids
  arrive double-encoded, and re-encoding them breaks the check), accepted only on the body ``true``;
- the return *does* carry ``trade_status`` (and ``notify_id``, valid about a minute), so a paid return
  proves the payment by itself; ``TRADE_PENDING`` (seller account frozen) is not paid;
- refunds carry ``refund_status``/``gmt_refund`` (no ``out_biz_no``, no ``refund_fee``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from urllib.parse import quote_plus, urlencode, urlsplit

from ..errors import Rejection, RejectionReason
from ..events import CLOSED, OTHER, PAID, REFUNDED, Kind, PaymentEvent, ReturnResult
from ..wire.form import content_type_charset, format_amount, normalize_charset, parse_cst, parse_form
from ..wire.keys import load_private_key, load_public_key, same_key
from ..wire.signing import Md5Signer, RsaSigner, RsaVerifier, Signer, Verifier, sign_string
from .base import KEY_TEXT, Protocol, amount_field, check_gateway, check_type, verify_signed_fields
from .helper import RequestHelper, check_callback_url, normalize_ip, render_form
from .proxy import parse_proxy

LEGACY_GATEWAY = "https://mapi.alipay.com/gateway.do"

#: Alipay's public key for the legacy service's RSA callbacks: one 1024-bit key for every merchant,
#: not a per-app Open Platform key (published in Alipay's legacy demos; see the vectors' sources).
LEGACY_ALIPAY_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCnxj/9qwVfgoUh/y2W89L6BkRA
FljhNhgPdyPuBV64bfQNN1PjbCzkIM6qRdKBoLPXmKKMiFYnkd6rAoprih3/PrQE
B/VsW8OoM8fxn67UDYuyBTqA23MML9q1+ilIZwBC2AQ2UBVOrFXfFl75p6/B5Ksi
NG9zpgmLCUYuLkxpLQIDAQAB
-----END PUBLIC KEY-----
"""

DIRECT_PAY = "create_direct_pay_by_user"
WAP_DIRECT_PAY = "alipay.wap.create.direct.pay.by.user"
RULE = ("sign", "sign_type")
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
COUPON_POLICIES = ("strict", "accept_lower")

_PARTNER = re.compile(r"2088[0-9]{12}")
_MD5_KEY = re.compile(r"[0-9A-Za-z]{32}")
_OUT_TRADE_NO = re.compile(r"[\x21-\x7e]{1,64}")
_PARAM = re.compile(r"[a-z][a-z0-9_]{0,63}")
# What a notify_id may hold to be pasted into the notify_verify URL as received: base64-ish text,
# possibly carrying its own %XX escapes (a return's id, decoded once from its double encoding).
_NOTIFY_ID = re.compile(r"[A-Za-z0-9%+/=_.\-]{1,256}")
# Set by the helper, never by the caller's extras: a second value would be silently overridden.
_RESERVED = frozenset({
    "service", "partner", "_input_charset", "sign", "sign_type", "payment_type", "seller_id",
    "seller_email", "seller_account_name", "out_trade_no", "subject", "total_fee", "notify_url",
    "return_url",
})


#: Each setting's type, checked first: (setting, types, None allowed, what it is, secret).
SETTING_TYPES: tuple[tuple[str, type | tuple[type, ...], bool, str, bool], ...] = (
    ("partner", str, False, "the 16-digit partner id starting with 2088", False),
    ("key", str, True, "the 32-character MD5 key", True),
    ("sign_type", str, False, "'MD5' or 'RSA'", False),
    ("private_key", KEY_TEXT, True, "the key's text", True),
    ("alipay_public_key", KEY_TEXT, True, "the key's text", True),
    ("seller_id", str, True, "a 16-digit 2088... id", False),
    ("seller_email", str, True, "the seller's Alipay account", False),
    ("gateway", str, False, "an absolute http(s) URL", False),
    ("verify_notify_id", bool, False, "", False),
    ("input_charset", str, False, "'utf-8' or 'gbk'", False),
    ("notify_url", str, True, "an absolute http(s) URL", False),
    ("return_url", str, True, "an absolute http(s) URL", False),
    ("coupon_policy", str, False, f"one of {COUPON_POLICIES}", False),
    ("verify_timeout", (int, float), False, "between 0 and 60 seconds", False),
)


@dataclass(frozen=True)
class LegacyConfig:
    """A legacy merchant: partner id and MD5 key, or partner id and an RSA key pair.

    Keys are parsed (and cross-checked) when this object is built; key text never appears in its repr.
    ``proxy``: ``"http://[user:password@]host:port"`` to send every call to Alipay (``notify_verify``,
    ``single_trade_query``) through an HTTP proxy's CONNECT tunnel; None (the default) connects directly,
    and environment proxy variables are never used. See :mod:`alipay_middleware.gateway.transport`.
    """

    partner: str
    key: str | None = field(default=None, repr=False)
    sign_type: str = "MD5"
    private_key: str | None = field(default=None, repr=False)
    alipay_public_key: str | None = field(default=None, repr=False)
    seller_id: str | None = None
    seller_email: str | None = None
    gateway: str = LEGACY_GATEWAY
    verify_notify_id: bool = True
    input_charset: str = "utf-8"
    notify_url: str | None = None
    return_url: str | None = None
    coupon_policy: str = "strict"
    verify_timeout: float = 10.0
    proxy: str | None = field(default=None, repr=False)  # may hold a password: never shown
    _signer: Signer = field(init=False, repr=False, compare=False)
    _verifier: Verifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, types, optional, form, secret in SETTING_TYPES:
            check_type(name, getattr(self, name), types, form, optional=optional, secret=secret)
        if not _PARTNER.fullmatch(self.partner):
            raise ValueError(f"partner must be the 16-digit partner id starting with 2088, got {self.partner!r}")
        self._check_keys()
        if self.seller_id is None and self.seller_email is None:
            object.__setattr__(self, "seller_id", self.partner)
        if self.seller_id is not None and not (isinstance(self.seller_id, str) and _PARTNER.fullmatch(self.seller_id)):
            raise ValueError(f"seller_id must be a 16-digit 2088... id as a str, got {self.seller_id!r}")
        if self.seller_email is not None and (
            not isinstance(self.seller_email, str) or not self.seller_email
            or self.seller_email != self.seller_email.strip()
        ):
            raise ValueError("seller_email must be the seller's Alipay account as a str, without surrounding spaces")
        check_gateway(self.gateway)
        parse_proxy(self.proxy)
        if not isinstance(self.verify_notify_id, bool):
            raise TypeError("verify_notify_id must be True or False")
        if not isinstance(self.input_charset, str):
            raise TypeError(f"input_charset must be 'utf-8' or 'gbk', not {type(self.input_charset).__name__}")
        try:
            object.__setattr__(self, "input_charset", normalize_charset(self.input_charset))
        except Rejection:
            raise ValueError(f"input_charset must be 'utf-8' or 'gbk', got {self.input_charset!r}") from None
        for name in ("notify_url", "return_url"):
            url = getattr(self, name)
            if url is not None:
                check_callback_url(url, name)
        if self.coupon_policy not in COUPON_POLICIES:
            raise ValueError(f"coupon_policy must be one of {COUPON_POLICIES}, got {self.coupon_policy!r}")
        if isinstance(self.verify_timeout, bool) or not isinstance(self.verify_timeout, (int, float)) \
                or not 0 < self.verify_timeout <= 60:
            raise ValueError(f"verify_timeout must be between 0 and 60 seconds, got {self.verify_timeout!r}")

    def _check_keys(self) -> None:
        if self.sign_type == "DSA":
            raise ValueError("sign_type 'DSA' is documented by Alipay but no gateway implements it; "
                             "use 'MD5' (with key=...) or 'RSA' (with private_key=...)")
        if self.sign_type == "RSA2":
            raise ValueError("sign_type 'RSA2' belongs to the Open Platform; the legacy service signs with "
                             "'MD5' or 'RSA' (SHA1withRSA). With an app id, use OpenApiConfig instead")
        if self.sign_type == "MD5":
            if self.private_key is not None or self.alipay_public_key is not None:
                raise ValueError("private_key/alipay_public_key are for sign_type='RSA'; with MD5 give key=... only")
            if not isinstance(self.key, str) or not _MD5_KEY.fullmatch(self.key):
                raise ValueError("key must be the 32-character MD5 key from the merchant console "
                                 "(letters and digits, no spaces)")
            md5 = Md5Signer(self.key)
            object.__setattr__(self, "_signer", md5)
            object.__setattr__(self, "_verifier", md5)
            return
        if self.sign_type != "RSA":
            raise ValueError(f"sign_type must be 'MD5' or 'RSA', got {self.sign_type!r}")
        if self.key is not None:
            raise ValueError("key is the MD5 key; with sign_type='RSA' give private_key=... instead")
        if self.private_key is None:
            raise ValueError("sign_type='RSA' needs private_key=... (your 1024-bit RSA private key)")
        private = load_private_key(self.private_key, "private_key")
        if private.size_in_bits() != 1024:
            raise ValueError(f"private_key is a {private.size_in_bits()}-bit key; the legacy service uses "
                             "1024-bit RSA keys (a 2048-bit key belongs to an Open Platform app: OpenApiConfig)")
        public = load_public_key(self.alipay_public_key or LEGACY_ALIPAY_PUBLIC_KEY, "alipay_public_key")
        if same_key(private.public_key(), public):
            raise ValueError("alipay_public_key is your own public key (it matches private_key); leave it "
                             "unset to use Alipay's legacy public key")
        object.__setattr__(self, "_signer", RsaSigner(private, "RSA"))
        object.__setattr__(self, "_verifier", RsaVerifier(public, "RSA"))

    def protocol(self) -> LegacyProtocol:
        return LegacyProtocol(self)


def sign_request(params: Mapping[str, str], signer: Signer, charset: str) -> dict[str, str]:
    """``params`` sorted, then ``sign`` and ``sign_type``: the signed request, as sent."""
    signed = {k: params[k] for k in sorted(params) if params[k] != ""}
    signed["sign"] = signer.sign(sign_string(signed, RULE).encode(charset))
    signed["sign_type"] = signer.sign_type
    return signed


class LegacyProtocol(Protocol):
    def __init__(self, config: LegacyConfig) -> None:
        self.config = config
        self.account = config.partner
        self.default_charset = config.input_charset
        self.origin_timeout = config.verify_timeout
        #: What callbacks and ``single_trade_query`` answers are verified with (MD5 key or Alipay's RSA key).
        self.verifier = config._verifier

    # -- callbacks ---------------------------------------------------------------------------------

    def parse(self, raw: bytes, content_type: str | None) -> tuple[dict[str, str], str]:
        # Legacy callbacks carry no charset field: the Content-Type's, else the one we asked for.
        declared = content_type_charset(content_type)
        charset = normalize_charset(declared) if declared else self.config.input_charset
        return parse_form(raw, charset), charset

    def verify_notify(self, fields: Mapping[str, str], charset: str) -> None:
        verify_signed_fields(fields, charset, self.verifier, (RULE,))

    def verify_return(self, fields: Mapping[str, str], charset: str) -> None:
        verify_signed_fields(fields, charset, self.verifier, (RULE,))

    def recipient_problem(self, fields: Mapping[str, str]) -> RejectionReason | None:
        config = self.config
        if config.seller_id is not None and fields.get("seller_id") != config.seller_id:
            return "seller_id_mismatch"
        if config.seller_email is not None and fields.get("seller_email") != config.seller_email:
            return "seller_email_mismatch"
        return None

    def origin_url(self, fields: Mapping[str, str], *, on_return: bool) -> str | None:
        if not self.config.verify_notify_id:
            return None
        notify_id = fields.get("notify_id")
        if not notify_id:
            # The official demo skips the check when the id is missing: exactly what a forger would send.
            raise Rejection("missing_notify_id", 400)
        if not _NOTIFY_ID.fullmatch(notify_id):
            raise Rejection("bad_notify_id", 400)
        gateway = self.config.gateway
        separator = "&" if urlsplit(gateway).query else "?"
        # Concatenated as received, never re-encoded (see the module docstring).
        return f"{gateway}{separator}service=notify_verify&partner={self.config.partner}&notify_id={notify_id}"

    def check_origin(self, answer: bytes) -> None:
        # The verdict is one lowercase word. Surrounding ASCII whitespace (a trailing CRLF) is forgiven, as
        # Alipay's own demos forgive it (the Java demo reads one line with readLine); nothing else is:
        # "<html>true</html>", "truex", "untrue" and "TRUE" are not what Alipay answers, though the PHP
        # demo's preg_match("/true$/i") would take them.
        verdict = answer.strip()  # bytes.strip(): ASCII whitespace only
        if verdict == b"true":
            return
        if verdict in (b"false", b"invalid"):
            raise Rejection("origin_refused", 400, f"notify_verify answered {verdict.decode()}")
        # An error page, a proxy's banner: not a verdict. 503, so that Alipay asks again later.
        raise Rejection("origin_unclear", 503, f"notify_verify answered {answer[:40]!r}")

    def event(self, fields: Mapping[str, str]) -> PaymentEvent:
        status = fields.get("trade_status", "")
        out_trade_no = fields.get("out_trade_no", "")
        notify_id = fields.get("notify_id", "")
        refund_status = fields.get("refund_status", "")
        gmt_refund = fields.get("gmt_refund", "")
        trade = out_trade_no or f"notify:{notify_id}"
        kind: Kind
        if not out_trade_no:  # not a trade message: recorded, never hooked
            kind, key = OTHER, self.key(OTHER, "notify", notify_id or fields.get("sign", "")[:32])
        elif refund_status == "REFUND_SUCCESS":
            # No refund request number in this protocol: one refund per trade and refund time.
            kind, key = REFUNDED, self.key(REFUNDED, out_trade_no, gmt_refund or notify_id)
        elif refund_status:
            kind, key = OTHER, self.key(OTHER, out_trade_no, refund_status, gmt_refund or notify_id)
        elif status in PAID_STATUSES:
            kind, key = PAID, self.key(PAID, out_trade_no)
        elif status == "TRADE_CLOSED":
            kind, key = CLOSED, self.key(CLOSED, out_trade_no)
        else:  # WAIT_BUYER_PAY, TRADE_PENDING (paid into a frozen account: not paid yet)
            kind, key = OTHER, self.key(OTHER, out_trade_no, status or "none")
        return PaymentEvent(
            kind=kind,
            key=key,
            trade_key=f"{self.account}:{trade}",
            out_trade_no=out_trade_no,
            trade_no=fields.get("trade_no", ""),
            trade_status=status,
            total_amount=amount_field(fields, "total_fee"),
            refund_fee=None,
            out_biz_no="",
            notify_id=notify_id,
            gmt_payment=parse_cst(fields.get("gmt_payment")),
            gmt_refund=parse_cst(gmt_refund),
            app_id="",
            seller_id=fields.get("seller_id", ""),
            raw=dict(fields),
            buyer_id=fields.get("buyer_id") or None,
            buyer_open_id=fields.get("buyer_open_id") or None,
        )

    def _return_paid(self, fields: Mapping[str, str]) -> bool:
        return fields.get("is_success") == "T" and fields.get("trade_status") in PAID_STATUSES

    def return_event(self, fields: Mapping[str, str]) -> PaymentEvent | None:
        if not self._return_paid(fields):
            return None
        event = self.event(fields)
        return event if event.kind == PAID else None

    def return_result(self, fields: Mapping[str, str]) -> ReturnResult:
        return ReturnResult(
            out_trade_no=fields.get("out_trade_no", ""),
            trade_no=fields.get("trade_no", ""),
            total_amount=amount_field(fields, "total_fee"),
            app_id="",
            seller_id=fields.get("seller_id", ""),
            timestamp=parse_cst(fields.get("notify_time")),
            raw=dict(fields),
            trade_status=fields.get("trade_status", ""),
            paid=self._return_paid(fields) and not fields.get("refund_status"),
        )

    def amount_problem(self, expected: object, event: PaymentEvent) -> RejectionReason | None:
        problem = super().amount_problem(expected, event)
        if problem != "amount_mismatch" or event.raw.get("use_coupon") != "Y":
            return problem
        # A coupon (红包) can make the paid total_fee lower than the order. Accepting that is a business
        # decision, so it is a setting; under "strict" the rejection says why, so nobody is surprised.
        paid, ordered = event.total_amount, Decimal(cast(Any, expected))
        if self.config.coupon_policy == "accept_lower" and paid is not None and 0 < paid <= ordered:
            return None
        return "amount_mismatch_coupon"

    # -- requests ----------------------------------------------------------------------------------

    def signed_params(self, service: str, params: Mapping[str, str], charset: str) -> dict[str, str]:
        base = {"service": service, "partner": self.config.partner, "_input_charset": charset}
        return sign_request({**params, **base}, self.config._signer, charset)

    def _gateway(self) -> tuple[str, str]:
        gateway = self.config.gateway
        return gateway, "&" if urlsplit(gateway).query else "?"

    def gateway_url(self, params: Mapping[str, str], charset: str) -> str:
        gateway, separator = self._gateway()
        return gateway + separator + urlencode(params, quote_via=quote_plus, encoding=charset)

    def gateway_form(self, params: Mapping[str, str], charset: str) -> str:
        gateway, separator = self._gateway()
        # _input_charset in the action URL too: without it Alipay reads a POSTed form as GBK.
        return render_form(gateway + separator + "_input_charset=" + charset, params, charset=charset)


_AUTO: Any = object()


class LegacyHelper(RequestHelper):
    """``environ["alipay"]`` for a legacy merchant: signed ``create_direct_pay_by_user`` URLs and forms.

    Extra keyword arguments are passed as request parameters (``body``, ``show_url``,
    ``extra_common_param`` (echoed back in callbacks), ``it_b_pay``, ``qr_pay_mode``, ``paymethod``,
    ``anti_phishing_key`` from a ``query_timestamp`` call when your contract requires it, ...).
    ``exter_invoke_ip`` defaults to the customer's address (see ``Alipay(trusted_proxies=...)``);
    pass a value to override it or None to leave it out. ``notify_url``/``return_url`` override the
    defaults for one call.
    """

    __slots__ = ()

    def _signed(self, service: str, out_trade_no: str, total_fee: Decimal | str, subject: str,
                extra: dict[str, Any]) -> tuple[LegacyProtocol, dict[str, str], str]:
        protocol = cast(LegacyProtocol, self._alipay.protocol)
        config = protocol.config
        wap = service == WAP_DIRECT_PAY
        charset = "utf-8" if wap else config.input_charset  # the wap service speaks utf-8 only
        if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.fullmatch(out_trade_no):
            raise ValueError("out_trade_no must be 1-64 printable ASCII characters without spaces")
        if not isinstance(subject, str) or not subject.strip() or len(subject) > 256:
            raise ValueError("subject must be a non-empty str of at most 256 characters")
        notify_url, return_url = self.callback_urls(extra.pop("notify_url", None), extra.pop("return_url", None))
        client_ip = extra.pop("exter_invoke_ip", _AUTO)
        params: dict[str, str] = {
            "out_trade_no": out_trade_no,
            "subject": subject,
            "payment_type": "1",
            "total_fee": format_amount(total_fee, "total_fee"),
            "notify_url": notify_url,
            "return_url": return_url,
        }
        if config.seller_id is not None:
            params["seller_id"] = config.seller_id
        elif wap:
            raise ValueError("the wap service requires seller_id: set LegacyConfig(seller_id=...)")
        else:
            params["seller_email"] = cast(str, config.seller_email)
        if wap:
            if client_ip is not _AUTO and client_ip is not None:
                raise ValueError("exter_invoke_ip is not a parameter of the wap service")
        else:
            if client_ip is _AUTO:
                client_ip = self.client_address()
            elif client_ip is not None:
                client_ip = normalize_ip(client_ip)
            if client_ip:
                params["exter_invoke_ip"] = client_ip
        for name, value in extra.items():
            if name in _RESERVED or name in ("price", "quantity"):
                raise ValueError(f"{name} is set by the helper (total_fee, never price and quantity); "
                                 "pass it as the named argument if there is one")
            if not _PARAM.fullmatch(name):
                raise ValueError(f"{name!r} is not a request parameter name")
            if isinstance(value, float):
                raise TypeError(f"{name} must not be a float; amounts are Decimal or str")
            if isinstance(value, Decimal):
                value = format_amount(value, name)
            if value is not None:
                params[name] = str(value)
        for name, value in params.items():
            try:
                value.encode(charset)
            except UnicodeEncodeError:
                raise ValueError(f"{name} holds characters that {charset} cannot encode; "
                                 "remove them or use input_charset='utf-8'") from None
        return protocol, protocol.signed_params(service, params, charset), charset

    def direct_pay_url(self, *, out_trade_no: str, total_fee: Decimal | str, subject: str, **extra: Any) -> str:
        """A signed GET URL for ``create_direct_pay_by_user`` (desktop checkout)."""
        protocol, params, charset = self._signed(DIRECT_PAY, out_trade_no, total_fee, subject, extra)
        return protocol.gateway_url(params, charset)

    def wap_direct_pay_url(self, *, out_trade_no: str, total_fee: Decimal | str, subject: str, **extra: Any) -> str:
        """A signed GET URL for ``alipay.wap.create.direct.pay.by.user`` (mobile browsers)."""
        protocol, params, charset = self._signed(WAP_DIRECT_PAY, out_trade_no, total_fee, subject, extra)
        return protocol.gateway_url(params, charset)

    def direct_pay_form(self, *, out_trade_no: str, total_fee: Decimal | str, subject: str, **extra: Any) -> str:
        """An auto-submitting POST form for ``create_direct_pay_by_user``."""
        protocol, params, charset = self._signed(DIRECT_PAY, out_trade_no, total_fee, subject, extra)
        return protocol.gateway_form(params, charset)

    def wap_direct_pay_form(self, *, out_trade_no: str, total_fee: Decimal | str, subject: str,
                            **extra: Any) -> str:
        """An auto-submitting POST form for the wap service."""
        protocol, params, charset = self._signed(WAP_DIRECT_PAY, out_trade_no, total_fee, subject, extra)
        return protocol.gateway_form(params, charset)


LegacyProtocol.helper_class = LegacyHelper
