"""The Open Platform (app id + RSA2): configuration, pay requests and callback reading.

Facts this module relies on (see the project's protocol reference):
- requests sign every parameter but ``sign`` (``sign_type`` stays in), empty values dropped, sorted;
- ``timestamp`` is Beijing time; amounts are strings with two decimals;
- callbacks verify under rule V1 (``sign`` and ``sign_type`` left out) and, for some gateway messages,
  rule V2 (only ``sign`` left out); the browser return verifies under V1 only;
- refunds arrive at the payment's notify_url with ``refund_fee``/``gmt_refund``/``out_biz_no`` and must
  never be taken for a payment; ``TRADE_CLOSED`` with a refund is a full refund, not a closed order;
  ``TRADE_FINISHED`` carrying refund fields reports earlier refunds and is the payment's message;
- in certificate mode (公钥证书模式) every request also carries ``app_cert_sn`` and ``alipay_root_cert_sn``,
  both signed; callbacks verify with the key inside Alipay's certificate, exactly as in key mode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from urllib.parse import quote_plus, urlencode, urlsplit

from Crypto.PublicKey import RSA

from ..errors import RejectionReason
from ..events import CLOSED, OTHER, PAID, REFUNDED, Kind, PaymentEvent, ReturnResult
from ..wire.form import cst_timestamp, format_amount, parse_cst
from ..wire.keys import load_private_key, load_public_key, same_key
from ..wire.signing import RsaSigner, RsaVerifier, sign_string
from .base import KEY_TEXT, Protocol, amount_field, check_gateway, check_type, verify_signed_fields
from .certs import load_certificate_mode
from .helper import RequestHelper, check_callback_url, render_form
from .proxy import parse_proxy

PRODUCTION_GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"

RULE_V1 = ("sign", "sign_type")
RULE_V2 = ("sign",)
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})

_APP_ID = re.compile(r"[0-9]{16}")
_OUT_TRADE_NO = re.compile(r"[\x21-\x7e]{1,64}")


_CERT_SETTINGS = ("app_cert", "alipay_cert", "alipay_root_cert")
#: Each setting's type, checked first so that a message says "got int" for ``app_id=2021000000000000``:
#: (setting, types, None allowed, what it is, secret). The certificates' loader names their types itself.
SETTING_TYPES: tuple[tuple[str, type | tuple[type, ...], bool, str, bool], ...] = (
    ("app_id", str, False, "the 16-digit app id from the Open Platform console", False),
    ("app_private_key", KEY_TEXT, False, "the key's text", True),
    ("alipay_public_key", KEY_TEXT, True, "the key's text", True),
    ("sign_type", str, False, "'RSA2' (recommended) or 'RSA'", False),
    ("gateway", str, False, "an absolute http(s) URL", False),
    ("seller_id", str, True, "the 16-digit 2088... partner id", False),
    ("notify_url", str, True, "an absolute http(s) URL", False),
    ("return_url", str, True, "an absolute http(s) URL", False),
)


@dataclass(frozen=True)
class OpenApiConfig:
    """An Open Platform app. Keys and certificates are parsed (and cross-checked) when this is built.

    Key mode: ``alipay_public_key``. Certificate mode (公钥证书模式): ``app_cert``, ``alipay_cert`` and
    ``alipay_root_cert`` (the text of appCertPublicKey_<app_id>.crt, alipayCertPublicKey_RSA2.crt and
    alipayRootCert.crt); Alipay's key then comes from ``alipay_cert``, and ``app_cert_sn``,
    ``alipay_cert_sn`` and ``alipay_root_cert_sn`` are set (they are None in key mode).

    ``proxy``: ``"http://[user:password@]host:port"`` to send every call to Alipay (query, refund, close)
    through an HTTP proxy's CONNECT tunnel; None (the default) connects directly, and environment proxy
    variables are never used. See :mod:`alipay_middleware.gateway.transport`.
    """

    app_id: str
    app_private_key: str = field(repr=False)
    alipay_public_key: str | None = field(default=None, repr=False)
    sign_type: str = "RSA2"
    gateway: str = PRODUCTION_GATEWAY
    seller_id: str | None = None
    notify_url: str | None = None
    return_url: str | None = None
    app_cert: str | None = field(default=None, repr=False)
    alipay_cert: str | None = field(default=None, repr=False)
    alipay_root_cert: str | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)  # may hold a password: never shown
    app_cert_sn: str | None = field(init=False, default=None, compare=False)
    alipay_cert_sn: str | None = field(init=False, default=None, compare=False)
    alipay_root_cert_sn: str | None = field(init=False, default=None, compare=False)
    _private: RSA.RsaKey = field(init=False, repr=False, compare=False)
    _public: RSA.RsaKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, types, optional, form, secret in SETTING_TYPES:
            check_type(name, getattr(self, name), types, form, optional=optional, secret=secret)
        if not _APP_ID.fullmatch(self.app_id):
            raise ValueError(
                f"app_id must be the 16-digit app id from the Open Platform console, got {self.app_id!r}"
            )
        if self.sign_type not in ("RSA2", "RSA"):
            raise ValueError(f"sign_type must be 'RSA2' (recommended) or 'RSA', got {self.sign_type!r}")
        check_gateway(self.gateway)
        parse_proxy(self.proxy)
        if self.seller_id is not None and not re.fullmatch(r"2088[0-9]{12}", self.seller_id):
            raise ValueError(f"seller_id must be the 16-digit 2088... partner id, got {self.seller_id!r}")
        if self.notify_url is not None:
            check_callback_url(self.notify_url, "notify_url")
        if self.return_url is not None:
            check_callback_url(self.return_url, "return_url")
        private = load_private_key(self.app_private_key, "app_private_key")
        public = self._certificate_mode(private) if self.cert_mode else self._key_mode()
        if same_key(private.public_key(), public):
            raise ValueError(
                "alipay_public_key is your app's own public key (it matches app_private_key). Configure "
                "the *Alipay* public key shown next to it in the Open Platform console."
            )
        object.__setattr__(self, "_private", private)
        object.__setattr__(self, "_public", public)

    @property
    def cert_mode(self) -> bool:
        """True when any certificate is configured (``__post_init__`` then insists on all three)."""
        return any(getattr(self, name) is not None for name in _CERT_SETTINGS)

    def _key_mode(self) -> RSA.RsaKey:
        if self.alipay_public_key is None:
            raise ValueError(
                "alipay_public_key is missing: give Alipay's public key (key mode), or app_cert, alipay_cert "
                "and alipay_root_cert (certificate mode)"
            )
        return load_public_key(self.alipay_public_key, "alipay_public_key")

    def _certificate_mode(self, private: RSA.RsaKey) -> RSA.RsaKey:
        if self.app_cert is None or self.alipay_cert is None or self.alipay_root_cert is None:
            missing = " and ".join(name for name in _CERT_SETTINGS if getattr(self, name) is None)
            raise ValueError(
                f"certificate mode needs app_cert, alipay_cert and alipay_root_cert; {missing} missing"
            )
        mode = load_certificate_mode(self.app_cert, self.alipay_cert, self.alipay_root_cert, private)
        if self.alipay_public_key is not None:
            # Tolerated when it agrees (a half-done migration), since the key then comes from alipay_cert.
            configured = load_public_key(self.alipay_public_key, "alipay_public_key")
            if not same_key(configured, mode.alipay_public_key):
                raise ValueError(
                    "alipay_public_key is not the key in alipay_cert; in certificate mode leave "
                    "alipay_public_key out (Alipay's key is read from alipay_cert)"
                )
        object.__setattr__(self, "app_cert_sn", mode.app_cert_sn)
        object.__setattr__(self, "alipay_cert_sn", mode.alipay_cert_sn)
        object.__setattr__(self, "alipay_root_cert_sn", mode.alipay_root_cert_sn)
        return mode.alipay_public_key

    def protocol(self) -> OpenApiProtocol:
        return OpenApiProtocol(self)


class OpenApiProtocol(Protocol):
    def __init__(self, config: OpenApiConfig) -> None:
        self.config = config
        self.account = config.app_id
        self.app_id = config.app_id
        self.signer = RsaSigner(config._private, config.sign_type)
        self.verifier = RsaVerifier(config._public, config.sign_type)

    # -- callbacks ---------------------------------------------------------------------------------

    def verify_notify(self, fields: Mapping[str, str], charset: str) -> None:
        verify_signed_fields(fields, charset, self.verifier, (RULE_V1, RULE_V2))

    def verify_return(self, fields: Mapping[str, str], charset: str) -> None:
        verify_signed_fields(fields, charset, self.verifier, (RULE_V1,))

    def recipient_problem(self, fields: Mapping[str, str]) -> RejectionReason | None:
        if fields.get("app_id") != self.config.app_id:
            return "app_id_mismatch"
        seller = self.config.seller_id
        if seller is not None and fields.get("seller_id") != seller:
            return "seller_id_mismatch"
        return None

    def event(self, fields: Mapping[str, str]) -> PaymentEvent:
        status = fields.get("trade_status", "")
        out_trade_no = fields.get("out_trade_no", "")
        notify_id = fields.get("notify_id", "")
        refund_fee = amount_field(fields, "refund_fee")
        total = amount_field(fields, "total_amount")
        # A refund's own notification keeps TRADE_SUCCESS (partial) or goes TRADE_CLOSED (full). A FINISHED
        # trade is no longer refundable: refund fields on TRADE_FINISHED report the refunds so far, and the
        # message is the payment's (already paid: answered from the ledger), never a new refund.
        is_refund = status != "TRADE_FINISHED" and (
            bool(fields.get("gmt_refund")) or (refund_fee is not None and refund_fee > 0))
        trade = out_trade_no or f"notify:{notify_id}"
        kind: Kind
        if not out_trade_no:  # not a trade message (another notify_type): recorded, never hooked
            kind, key = OTHER, self.key(OTHER, "notify", notify_id or fields.get("sign", "")[:32])
        elif is_refund:
            # One refund per refund request number; gmt_refund stands in when out_biz_no is missing.
            refund_id = fields.get("out_biz_no") or fields.get("gmt_refund") or notify_id
            kind, key = REFUNDED, self.key(REFUNDED, out_trade_no, refund_id)
        elif status in PAID_STATUSES:
            kind, key = PAID, self.key(PAID, out_trade_no)  # SUCCESS and a later FINISHED: paid once
        elif status == "TRADE_CLOSED":
            kind, key = CLOSED, self.key(CLOSED, out_trade_no)
        else:
            kind, key = OTHER, self.key(OTHER, out_trade_no, status or "none")
        return PaymentEvent(
            kind=kind,
            key=key,
            trade_key=f"{self.account}:{trade}",
            out_trade_no=out_trade_no,
            trade_no=fields.get("trade_no", ""),
            trade_status=status,
            total_amount=total,
            refund_fee=refund_fee,
            out_biz_no=fields.get("out_biz_no", ""),
            notify_id=notify_id,
            gmt_payment=parse_cst(fields.get("gmt_payment")),
            gmt_refund=parse_cst(fields.get("gmt_refund")),
            app_id=fields.get("app_id", ""),
            seller_id=fields.get("seller_id", ""),
            raw=dict(fields),
            buyer_id=fields.get("buyer_id") or None,
            buyer_open_id=fields.get("buyer_open_id") or None,
        )

    def return_result(self, fields: Mapping[str, str]) -> ReturnResult:
        return ReturnResult(
            out_trade_no=fields.get("out_trade_no", ""),
            trade_no=fields.get("trade_no", ""),
            total_amount=amount_field(fields, "total_amount"),
            app_id=fields.get("app_id", ""),
            seller_id=fields.get("seller_id", ""),
            timestamp=parse_cst(fields.get("timestamp")),
            raw=dict(fields),
        )

    # -- requests ----------------------------------------------------------------------------------

    def signed_params(
        self,
        method: str,
        biz: Mapping[str, Any],
        *,
        notify_url: str | None = None,
        return_url: str | None = None,
        now: datetime | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Common parameters + ``biz_content`` + ``sign`` for one gateway call. ``extra``: more common
        parameters (``app_auth_token``, ...), checked by the caller (:data:`RESERVED_PARAMS` excluded)."""
        params = {
            "app_id": self.config.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": self.config.sign_type,
            "timestamp": cst_timestamp(now),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if notify_url:
            params["notify_url"] = notify_url
        if return_url:
            params["return_url"] = return_url
        if extra:
            params.update(extra)
        if self.config.app_cert_sn is not None and self.config.alipay_root_cert_sn is not None:
            params["app_cert_sn"] = self.config.app_cert_sn
            params["alipay_root_cert_sn"] = self.config.alipay_root_cert_sn
        signed = {k: params[k] for k in sorted(params)}  # sorted, sign last: URLs read like the sign string
        signed["sign"] = self.signer.sign(sign_string(params).encode("utf-8"))
        return signed

    def gateway_url(self, params: Mapping[str, str]) -> str:
        gateway = self.config.gateway
        return gateway + ("&" if urlsplit(gateway).query else "?") + urlencode(params, quote_via=quote_plus)

    def gateway_form(self, params: Mapping[str, str]) -> str:
        gateway = self.config.gateway
        # charset in the action URL too, so the gateway decodes the form body as UTF-8.
        action = gateway + ("&" if urlsplit(gateway).query else "?") + "charset=utf-8"
        return render_form(action, params)


def pay_biz(
    product_code: str, out_trade_no: str, total_amount: Decimal | str, subject: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.fullmatch(out_trade_no):
        raise ValueError("out_trade_no must be 1-64 printable ASCII characters without spaces")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > 256:
        raise ValueError("subject must be a non-empty str of at most 256 characters")
    biz: dict[str, Any] = {
        "out_trade_no": out_trade_no,
        "total_amount": format_amount(total_amount),
        "subject": subject,
        "product_code": product_code,
    }
    for name, value in extra.items():
        if isinstance(value, float):
            raise TypeError(f"{name} must not be a float; amounts are Decimal or str")
        if isinstance(value, Decimal):  # the only Decimal biz fields are amounts (e.g. discountable_amount)
            value = format_amount(value, name)
        if value is not None:
            biz[name] = value
    return biz


_PAY_METHODS = {
    "page": ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    "wap": ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),  # not QUICK_WAP_PAY, as one popular SDK sends
}


class OpenApiHelper(RequestHelper):
    """``environ["alipay"]`` for an Open Platform app: signed page/wap pay URLs and forms.

    Extra keyword arguments go into ``biz_content`` as given (``body``, ``timeout_express``,
    ``time_expire``, ``passback_params`` (URL-encode it yourself; it comes back verbatim), ``quit_url``,
    ``qr_pay_mode``, ``goods_detail``, ...). ``notify_url``/``return_url`` override the defaults for
    one call; ``now`` (an aware datetime) fixes the timestamp, for tests.
    """

    __slots__ = ()

    def _signed(self, flavour: str, out_trade_no: str, total_amount: Decimal | str, subject: str,
                extra: dict[str, Any]) -> tuple[OpenApiProtocol, dict[str, str]]:
        method, product_code = _PAY_METHODS[flavour]
        notify_url, return_url = self.callback_urls(extra.pop("notify_url", None), extra.pop("return_url", None))
        now = extra.pop("now", None)
        biz = pay_biz(product_code, out_trade_no, total_amount, subject, extra)
        protocol = cast(OpenApiProtocol, self._alipay.protocol)
        return protocol, protocol.signed_params(method, biz, notify_url=notify_url, return_url=return_url, now=now)

    def page_pay_url(self, *, out_trade_no: str, total_amount: Decimal | str, subject: str, **extra: Any) -> str:
        """A signed GET URL for ``alipay.trade.page.pay`` (desktop checkout)."""
        protocol, params = self._signed("page", out_trade_no, total_amount, subject, extra)
        return protocol.gateway_url(params)

    def wap_pay_url(self, *, out_trade_no: str, total_amount: Decimal | str, subject: str, **extra: Any) -> str:
        """A signed GET URL for ``alipay.trade.wap.pay`` (mobile browser checkout)."""
        protocol, params = self._signed("wap", out_trade_no, total_amount, subject, extra)
        return protocol.gateway_url(params)

    def page_pay_form(self, *, out_trade_no: str, total_amount: Decimal | str, subject: str, **extra: Any) -> str:
        """An auto-submitting POST form for page pay (use it when ``goods_detail`` makes URLs long)."""
        protocol, params = self._signed("page", out_trade_no, total_amount, subject, extra)
        return protocol.gateway_form(params)

    def wap_pay_form(self, *, out_trade_no: str, total_amount: Decimal | str, subject: str, **extra: Any) -> str:
        """An auto-submitting POST form for wap pay."""
        protocol, params = self._signed("wap", out_trade_no, total_amount, subject, extra)
        return protocol.gateway_form(params)


OpenApiProtocol.helper_class = OpenApiHelper
