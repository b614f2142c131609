"""The legacy service's trade lookup: ``single_trade_query`` on the mapi gateway.

    trade = alipay.client.query(out_trade_no="L1")        # a LegacyClient for a LegacyConfig -> TradeQuery
    trade = await alipay.aclient.query(out_trade_no="L1")  # the same, in a thread

What the protocol is, and where that comes from. Alipay no longer publishes the domestic document, so this
rests on public implementations that agree with each other and on Alipay's cross-border page for the same
service (docs.antom.com/ac/global/single_trade_query and ``..._cn``). Sources, as repository and path:

- chloerei/alipay ``lib/alipay/service.rb`` (``Alipay::Service.single_trade_query``), ``doc/legacy_api.md``
  and an older ``README.md`` (a full answer sample);
- lokielse/omnipay-alipay ``src/Requests/LegacyQueryRequest.php``, ``src/Responses/LegacyQueryResponse.php``;
- Yurunsoft/PaySDK ``src/AlipayCrossBorder/Online/Query/Request.php`` and ``src/AlipayCrossBorder/SDK.php``
  (``verifySync``, ``parseSignData``);
- SAP Hybris: mashimbyek/bp-core-6.3 ``hybris/bin/ext-commerce/chinesepspalipayservices/src/de/hybris/
  platform/chinesepspalipayservices/alipay/AlipayUtil.java`` and ``.../strategies/impl/
  DefaultAlipayCreateRequestStrategy.java``; its mock gateway ``chinesepspalipaymockaddon/.../service/
  MockService.java`` (``getPaymentStatusRequest``; seen in a vendored copy whose repository the index does
  not name);
- answer samples: ifeilong/feilong ``com/feilong/context/converter/IfStringToBeanConverter.java``, a Groovy
  ``cn.wanglin.sgw.exchange.alipay.Single_Trade_QueryParser``, a Ruby cross-border client's test fixture
  (``Alipay::CrossBorder::ClientTest``, ``FINISHED_TX``), Payline's Alipay plugin tests; Alipay's 2012 ASP
  demo ``single_trade_query`` page (``BuildRequestHttpXml``).

What they say:

- **Request**: ``service=single_trade_query``, ``partner``, ``_input_charset``, ``out_trade_no`` and/or
  ``trade_no`` (``trade_no`` wins when both are given), then ``sign_type`` and ``sign``, signed like every
  legacy request (``sign``/``sign_type`` and empty values dropped, sorted, raw ``k=v`` joined with ``&``;
  MD5 with the merchant key, or SHA1withRSA). chloerei (``Net::HTTP.get`` of the signed URL), omnipay
  (``http_build_query``) and Yurun (``_method = 'GET'``) send it as a GET query string; the 2012 demos and
  Hybris (``postRequest``) POST the same fields with ``_input_charset`` in the URL. This client GETs, so
  every field, the charset included, is in the URL.
- **Answer**: XML in the request's charset (``<?xml ... encoding="GBK"?>`` for a GBK request):
  ``<alipay><is_success>T</is_success><request><param name="..">..</param></request><response><trade>``
  the trade's fields ``</trade></response><sign>..</sign><sign_type>MD5</sign_type></alipay>``; Alipay's
  page lists ``sign`` and ``sign_type`` as never empty. A failure is
  ``<alipay><is_success>F</is_success><error>CODE</error></alipay>``, with no signature anywhere. The code
  for an unknown trade is ``TRADE_NOT_EXIST`` on Alipay's page and ``TRADE_IS_NOT_EXIST`` in the Hybris
  mock, feilong and Groovy samples (feilong matches on the substring ``TRADE_NOT_EXIST``): both are read as
  "no such trade".
- **The answer's signature** covers the ``<trade>`` element's child fields only: sorted, ``sign``/
  ``sign_type`` and empty values dropped, raw ``k=v`` joined with ``&``, in the answer's charset, under the
  configured scheme (MD5: md5(string + merchant key); RSA: SHA1withRSA with Alipay's legacy key). That is
  what Yurun's ``verifySync`` checks (the first child of ``<response>``, nested values skipped) and what the
  Hybris mock gateway signs (the trade fields through ``paraFilter`` + ``buildMysign``). **No official text
  confirms this rule**, and chloerei, omnipay, Hybris's real client and the official demos do not check the
  answer's signature at all.

Decisions (the safe side wherever the sources are silent or disagree):

- An answer saying ``is_success=T`` must carry a ``sign`` that verifies under that rule, with the
  configured ``sign_type``; otherwise it raises :class:`~alipay_middleware.errors.ResponseError`
  (``missing_sign``, ``bad_signature``) and is never returned as data. (Yurun's ``verifySync`` accepts an
  answer without ``sign``; this client does not.) Should the rule be wrong for some account, every lookup
  fails closed: ``reconcile`` reports ``error`` and runs nothing, rather than trusting an unsigned status.
- The signed fields carry no nonce: a correctly signed answer about another trade than the one asked about
  (a replay) raises :class:`~alipay_middleware.errors.ResponseMismatch`; the trade must name the
  ``out_trade_no``/``trade_no`` asked for. The ``<request>`` echo is not signed and is ignored.
- Failure answers are unsigned by the protocol. ``TRADE_NOT_EXIST``/``TRADE_IS_NOT_EXIST`` gives
  ``TradeQuery(exists=False)``: nothing to act on, never evidence of anything (a forged one can only
  delay a confirmation, which the notify still delivers). Any other code raises
  :class:`~alipay_middleware.errors.AlipayApiError` with ``verified=False`` (``ILLEGAL_PARTNER_EXTERFACE``:
  the contract lacks this service, per blog.csdn.net/weixin_30312557/article/details/95164732;
  ``ILLEGAL_SIGN``: wrong key).
- XML: a DTD (``<!DOCTYPE``/``<!ENTITY``) is refused before parsing, the size is bounded by
  ``max_response``, repeated elements are refused (like duplicate JSON keys), elements nested inside a trade
  field are neither signed (as in Yurun's rule) nor returned.
- The :class:`~alipay_middleware.gateway.results.TradeQuery`: ``total_amount`` is ``total_fee``;
  ``buyer_pay_amount``/``receipt_amount`` are None (the service has no such fields); ``send_pay_date`` is
  ``gmt_payment`` (aware, UTC+8); ``raw`` holds the verified trade fields only. ``TRADE_PENDING`` (paid into
  a frozen account) is not ``paid``.
- Timeout and retries as :meth:`AlipayClient.query <alipay_middleware.gateway.client.AlipayClient.query>` (the
  shared transport): the lookup is idempotent, retried on network trouble only.
- ``refund``, ``close`` and ``refund_query`` raise :class:`~alipay_middleware.errors.UnsupportedCall`:
  the legacy service refunds through ``refund_fastpay_by_platform_pwd``, a page on which the merchant enters
  the account's payment password, which a server-side client cannot do.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote_plus, urlencode

from ..errors import AlipayApiError, Rejection, ResponseError, ResponseMismatch, UnsupportedCall
from ..protocols.legacy import RULE, LegacyConfig, LegacyProtocol
from ..wire.form import normalize_charset, parse_cst
from ..wire.signing import Verifier, sign_string
from .base import Call, GatewayClient, Host, config_and_protocol
from .fields import amount_field, trade_biz
from .results import CloseResult, RefundQuery, RefundResult, TradeQuery
from .transport import USER_AGENT

__all__ = ["SINGLE_TRADE_QUERY", "LegacyAnswer", "LegacyClient", "parse_single_trade_query"]

SINGLE_TRADE_QUERY = "single_trade_query"
#: The unknown-trade codes seen for this service (Alipay's page, and the samples of other integrations).
NOT_EXIST = frozenset({"TRADE_NOT_EXIST", "TRADE_IS_NOT_EXIST"})

_DTD = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_DECLARATION = re.compile(r"\A\s*<\?xml\b[^>]*?\?>")
_ENCODING = re.compile(rb"\A\s*<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._-]{1,40})[\"']")


@dataclass(frozen=True)
class LegacyAnswer:
    """A parsed ``single_trade_query`` answer. ``trade`` holds the ``<trade>`` fields, verified against
    ``sign`` when ``success``; a failure (``error``) is never signed."""

    success: bool
    error: str
    trade: dict[str, str]
    charset: str


def parse_single_trade_query(raw: bytes, charset: str, verifier: Verifier) -> LegacyAnswer:
    """Read and verify one answer (see the module docstring); raises :class:`ResponseError`."""
    if _DTD.search(raw):
        raise ResponseError("malformed_response", "the answer carries a DTD (DOCTYPE/ENTITY), refused")
    declared = _ENCODING.match(raw)
    if declared:
        try:
            charset = normalize_charset(declared.group(1).decode("ascii"))
        except Rejection:
            raise ResponseError("bad_encoding", "the answer declares a charset other than utf-8/gbk") from None
    try:
        text = raw.decode(charset)
    except UnicodeDecodeError:
        raise ResponseError("bad_encoding", f"the answer is not valid {charset}") from None
    text = _DECLARATION.sub("", text.removeprefix("\ufeff"), count=1)
    try:
        root = ET.fromstring(text)  # no DTD (refused above): no entities beyond the five built-in ones
    except ET.ParseError:
        raise ResponseError("malformed_response", "the answer is not XML") from None
    if root.tag != "alipay":
        raise ResponseError("malformed_response", f"the root element is <{root.tag[:20]}>, not <alipay>")
    top = _children(root, "alipay")
    is_success = _strip(top.get("is_success"))
    if is_success == "F":
        return LegacyAnswer(False, _strip(top.get("error")), {}, charset)
    if is_success != "T":
        raise ResponseError("malformed_response", "is_success is neither T nor F")
    response = top.get("response")
    trade_element = _children(response, "response").get("trade") if response is not None else None
    if trade_element is None:
        raise ResponseError("missing_response", "a successful answer without <response><trade>")
    # Nested elements (none documented) are skipped, as in the signature rule: neither signed nor returned.
    trade = {name: element.text or "" for name, element in _children(trade_element, "trade").items()
             if len(element) == 0}
    sign = _strip(top.get("sign"))
    if not sign:
        raise ResponseError("missing_sign", "a successful answer without <sign> proves nothing")
    sign_type = _strip(top.get("sign_type"))
    if sign_type and sign_type != verifier.sign_type:
        raise ResponseError("bad_signature", f"sign_type {sign_type[:10]!r} is not the configured "
                                             f"{verifier.sign_type}")
    try:
        message = sign_string(trade, RULE).encode(charset)
    except UnicodeEncodeError:  # pragma: no cover - the values were decoded from this charset
        raise ResponseError("bad_encoding", f"the trade fields do not encode in {charset}") from None
    if not verifier.verify(message, sign):
        raise ResponseError("bad_signature", "the <trade> fields do not match <sign>")
    return LegacyAnswer(True, "", trade, charset)


def _children(element: ET.Element, where: str) -> dict[str, ET.Element]:
    children: dict[str, ET.Element] = {}
    for child in element:
        if not isinstance(child.tag, str):  # pragma: no cover - the default parser drops comments and PIs
            continue
        if child.tag in children:
            raise ResponseError("duplicate_key", f"<{where}> repeats <{child.tag[:40]}>")
        children[child.tag] = child
    return children


def _strip(element: ET.Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


class LegacyClient(GatewayClient):
    """``single_trade_query`` for a legacy merchant, synchronous, on the standard library.

    ``alipay_or_config``: an :class:`~alipay_middleware.Alipay` on a ``LegacyConfig`` (its gateway, partner
    and keys are used) or a ``LegacyConfig``. ``timeout``, ``retries``, ``backoff``, ``max_response``: as
    for :class:`~alipay_middleware.gateway.client.AlipayClient`. Thread-safe: each call opens its own connection.
    """

    def __init__(
        self,
        alipay_or_config: Host | LegacyConfig,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response: int = 1024 * 1024,
    ) -> None:
        config, protocol = config_and_protocol(alipay_or_config)
        if not isinstance(config, LegacyConfig) or not isinstance(protocol, LegacyProtocol):
            raise TypeError(f"LegacyClient speaks the legacy mapi gateway (partner id + MD5/RSA); it does not "
                            f"support {type(config).__name__}. For an OpenApiConfig use AlipayClient")
        self._setup(config.gateway, timeout, retries, backoff, max_response, config.proxy)
        self.config = config
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"<LegacyClient {self.config.partner} {self.host}>"

    @property
    def account(self) -> str:
        return self.config.partner

    def query(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> TradeQuery:
        """``single_trade_query``: the trade's status and ``total_fee``; ``exists=False`` for
        ``TRADE_NOT_EXIST`` (also spelled ``TRADE_IS_NOT_EXIST``). Retried on network trouble. Raises
        :class:`AlipayApiError` for any other error code, :class:`GatewayUnavailable`,
        :class:`ResponseError` (an answer that fails verification, a replay: :class:`ResponseMismatch`)."""
        biz = {k: str(v) for k, v in trade_biz(out_trade_no, trade_no).items()}
        charset = self.config.input_charset
        with self._logged(SINGLE_TRADE_QUERY, out_trade_no, trade_no) as call:
            raw = self._attempts(SINGLE_TRADE_QUERY, lambda: self._get(biz, charset), idempotent=True, call=call)
            answer = parse_single_trade_query(raw, charset, self.protocol.verifier)
            if not answer.success:
                return self._failure(answer, out_trade_no, trade_no, call)
            trade = answer.trade
            for name, asked in (("out_trade_no", out_trade_no), ("trade_no", trade_no)):
                if asked is not None and trade.get(name) != asked:
                    raise ResponseMismatch("response_mismatch", f"{SINGLE_TRADE_QUERY} answered about another "
                                                                f"{name}")
            status = trade.get("trade_status") or None
            call.outcome = f"T/{status or 'no_status'}"
            return TradeQuery(
                exists=True,
                out_trade_no=trade.get("out_trade_no") or out_trade_no or "",
                trade_no=trade.get("trade_no") or trade_no or "",
                trade_status=status,
                total_amount=amount_field(SINGLE_TRADE_QUERY, trade, "total_fee"),
                buyer_pay_amount=None,
                receipt_amount=None,
                send_pay_date=parse_cst(trade.get("gmt_payment")),
                raw=dict(trade),
            )

    def _get(self, biz: Mapping[str, str], charset: str) -> bytes:
        params = self.protocol.signed_params(SINGLE_TRADE_QUERY, biz, charset)
        query = urlencode(params, quote_via=quote_plus, encoding=charset)
        target = self._transport.target(query)
        return self._send("GET", target, None, {"Accept": "text/xml", "User-Agent": USER_AGENT})

    @staticmethod
    def _failure(answer: LegacyAnswer, out_trade_no: str | None, trade_no: str | None, call: Call) -> TradeQuery:
        code = answer.error or "no_error_code"
        if code in NOT_EXIST:
            call.outcome = f"F/{code}"
            return TradeQuery(False, out_trade_no or "", trade_no or "", None, None, None, None, None,
                              {"is_success": "F", "error": code})
        raise AlipayApiError(SINGLE_TRADE_QUERY, code, verified=False)

    # -- what the legacy service cannot do from a server ------------------------------------------------

    def refund(
        self,
        *,
        out_trade_no: str | None = None,
        trade_no: str | None = None,
        refund_amount: Decimal | str,
        out_request_no: str,
        refund_reason: str | None = None,
    ) -> RefundResult:
        """Not available: raises :class:`UnsupportedCall` (nothing is sent)."""
        _unsupported("refund", "the legacy service refunds through refund_fastpay_by_platform_pwd, a page on "
                               "which the merchant enters the account's payment password; refund in the merchant "
                               "console, or move to the Open Platform (alipay.trade.refund)")

    def close(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> CloseResult:
        """Not available: raises :class:`UnsupportedCall` (nothing is sent)."""
        _unsupported("close", "closing a legacy trade (close_trade) is not implemented by this client; an "
                              "unpaid legacy order expires by itself (it_b_pay sets when)")

    def refund_query(
        self, *, out_trade_no: str | None = None, trade_no: str | None = None, out_request_no: str
    ) -> RefundQuery:
        """Not available: raises :class:`UnsupportedCall` (nothing is sent)."""
        _unsupported("refund_query", "legacy refunds have no out_request_no to ask about; they are reported by "
                                     "notifications carrying refund_status (see on_refunded)")

    def call(self, method: str, biz: Mapping[str, Any] | None = None, *, idempotent: bool = False,
             timeout: float | None = None, **common_params: str) -> dict[str, Any]:
        """Not available: raises :class:`UnsupportedCall` (nothing is sent)."""
        _unsupported("call", "it calls Open Platform APIs (app id, RSA2); the legacy service has other "
                             "services under a partner id. Move to the Open Platform (OpenApiConfig)")


def _unsupported(method: str, why: str) -> NoReturn:
    raise UnsupportedCall(f"{method} is not available for a legacy (LegacyConfig) merchant: {why}")
