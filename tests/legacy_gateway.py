"""A loopback stand-in for the legacy mapi gateway: ``single_trade_query`` and ``notify_verify``.

It reads a request the way Alipay does: a GET whose query carries ``_input_charset`` (Alipay assumes GBK
without it), decoded in that charset; the signature over every parameter but ``sign`` and ``sign_type``,
empty values dropped, sorted, raw ``k=v`` joined with ``&`` (MD5 with the merchant key, or SHA1withRSA
with the merchant's public key). It answers ``single_trade_query`` the way the public samples show:

    <?xml version="1.0" encoding="GBK"?><alipay><is_success>T</is_success><request>...</request>
    <response><trade>...</trade></response><sign>...</sign><sign_type>MD5</sign_type></alipay>

in the request's charset, the sign made over the ``<trade>`` fields only (sorted, empty dropped); a failure
is ``<is_success>F</is_success><error>CODE</error>``, unsigned. ``notify_verify`` answers ``true`` for the
ids handed to ``issue`` and ``false`` otherwise. Anything wrong with a request lands in ``problems``.

``fault(kind, times=1)`` makes the next ``times`` lookups misbehave:

- answers: ``not_exist`` (``TRADE_NOT_EXIST``), ``is_not_exist`` (``TRADE_IS_NOT_EXIST``), ``error``
  (``ILLEGAL_PARTNER_EXTERFACE``), ``tampered`` (``total_fee`` changed after signing), ``unsigned`` (no
  ``sign``/``sign_type``), ``wrong_sign_type`` (an MD5 sign labelled otherwise), ``mismatch`` (a correctly
  signed answer about another trade), ``duplicate`` (``trade_status`` twice), ``nested`` (an unsigned nested
  element inside the trade), ``pretty`` (indented, with an ``encoding`` declaration in lowercase),
  ``no_declaration`` (no ``<?xml ...?>``), ``malformed`` (cut in the middle), ``doctype_bomb`` (billion
  laughs), ``xxe`` (an external entity), ``huge`` (a subject of ``size`` characters);
- transport: ``http_502``, ``hang`` (no answer until the stub closes), ``drop`` (connection closed).

The server, the fault queue and the transport faults are shared with the Open Platform stub
(``fake_gateway.py``).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from conftest import MD5_KEY, PARTNER, reference_sign_string
from fake_gateway import FakeGateway

LOOKUP = "single_trade_query"
FAULTS = ("not_exist", "is_not_exist", "error", "tampered", "unsigned", "wrong_sign_type", "mismatch", "duplicate",
          "nested", "pretty", "no_declaration", "malformed", "doctype_bomb", "xxe", "huge", "http_502", "hang",
          "drop")

BOMB = ('<!DOCTYPE alipay [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>')
XXE = '<!DOCTYPE alipay [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@dataclass
class LegacyTrade:
    out_trade_no: str
    trade_no: str
    status: str
    total_fee: Decimal
    paid: bool
    subject: str = "茶叶 & <礼盒>"
    extra: dict[str, str] = field(default_factory=dict)

    def fields(self, partner: str) -> dict[str, str]:
        fee = f"{self.total_fee:.2f}"
        fields = {
            "body": "",  # empty: left out of the sign string
            "buyer_email": "buyer@example.com",
            "buyer_id": "2088102000000009",
            "discount": "0.00",
            "flag_trade_locked": "0",
            "gmt_create": "2024-01-01 12:00:05",
            "gmt_last_modified_time": "2024-01-01 12:00:06",
            "is_total_fee_adjust": "F",
            "operator_role": "B",
            "out_trade_no": self.out_trade_no,
            "payment_type": "1",
            "price": fee,
            "quantity": "1",
            "seller_email": "shop@example.com",
            "seller_id": partner,
            "subject": self.subject,
            "to_buyer_fee": "0.00",
            "to_seller_fee": fee if self.paid else "0.00",
            "total_fee": fee,
            "trade_no": self.trade_no,
            "trade_status": self.status,
            "use_coupon": "F",
        }
        if self.paid:
            fields["gmt_payment"] = "2024-01-01 12:00:06"
        if self.status == "TRADE_CLOSED":
            fields["gmt_close"] = "2024-01-01 14:00:00"
        fields.update(self.extra)
        return fields


@dataclass
class Received:
    service: str
    params: dict[str, str]
    charset: str
    method: str


class LegacyGateway(FakeGateway[LegacyTrade]):
    accepts = "GET"

    def __init__(self, partner: str = PARTNER, md5_key: str | None = MD5_KEY,
                 merchant_public_key: RSA.RsaKey | None = None, alipay_key: RSA.RsaKey | None = None) -> None:
        self.partner = partner
        self.md5_key = md5_key
        self.merchant_public_key = merchant_public_key
        self.alipay_key = alipay_key
        self.sign_type = "MD5" if merchant_public_key is None else "RSA"
        self.issued: set[str] = set()
        self.received: list[Received] = []
        super().__init__()

    # -- test controls ---------------------------------------------------------------------------------

    def add_trade(self, out_trade_no: str, status: str = "TRADE_SUCCESS", total_fee: str = "9.90",
                  paid: bool | None = None, **extra: str) -> LegacyTrade:
        if paid is None:
            paid = status in ("TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_PENDING")
        trade = LegacyTrade(out_trade_no, self._next_trade_no("2024010121001004"), status, Decimal(total_fee),
                            paid, extra=dict(extra))
        with self.lock:
            self.trades[out_trade_no] = trade
        return trade

    def fault(self, kind: str, times: int = 1, **options: Any) -> None:
        assert kind in FAULTS, kind
        self._queue_fault(LOOKUP, kind, times, options)

    def issue(self, notify_id: str) -> str:
        self.issued.add(notify_id)
        return notify_id

    def count(self, service: str = LOOKUP) -> int:
        with self.lock:
            return sum(1 for r in self.received if r.service == service)

    # -- one request -------------------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = urlsplit(handler.path).query
        peek = dict(parse_qsl(query, keep_blank_values=True, encoding="latin-1"))  # ASCII names, any bytes
        service = peek.get("service", "")
        if service == "notify_verify":
            params = dict(parse_qsl(query))
            with self.lock:
                self.received.append(Received(service, params, "", handler.command))
            ok = params.get("partner") == self.partner and params.get("notify_id") in self.issued
            self._send(handler, b"true" if ok else b"false", "text/plain")
            return
        charset = peek.get("_input_charset", "")
        if not charset:
            self.problems.append("_input_charset missing from the query (Alipay would read GBK)")
            charset = "gbk"
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, encoding=charset, errors="strict")
        except (UnicodeDecodeError, ValueError, LookupError):
            self.problems.append("query does not parse")
            self._send(handler, self._error("ILLEGAL_ARGUMENT", "utf-8"), "text/xml; charset=utf-8")
            return
        params = dict(pairs)
        if len(params) != len(pairs):
            self.problems.append("duplicate parameters")
        with self.lock:
            self.received.append(Received(service, params, charset, handler.command))
        if service != LOOKUP:
            self.problems.append(f"service {service!r}")
            self._send(handler, self._error("ILLEGAL_SERVICE", charset), f"text/xml; charset={charset}")
            return
        problem = self._check_request(params, charset)
        if problem:
            self.problems.append(problem)
            self._send(handler, self._error(problem.split()[0], charset), f"text/xml; charset={charset}")
            return
        with self.lock:
            kind, options = self._take_fault(LOOKUP)
        if self._transport_fault(handler, kind):
            return
        with self.lock:
            body = self._answer(params, charset, kind, options)
        self._send(handler, body, f"text/xml; charset={charset.upper()}")

    def _check_request(self, params: dict[str, str], charset: str) -> str:
        if params.get("partner") != self.partner:
            return "ILLEGAL_PARTNER partner"
        if params.get("sign_type") != self.sign_type:
            return f"ILLEGAL_SIGN_TYPE {params.get('sign_type')!r}"
        if not (params.get("out_trade_no") or params.get("trade_no")):
            return "ILLEGAL_ARGUMENT names no trade"
        allowed = {"service", "partner", "_input_charset", "sign", "sign_type", "out_trade_no", "trade_no"}
        if set(params) - allowed:
            return f"ILLEGAL_ARGUMENT unexpected {sorted(set(params) - allowed)}"
        message = reference_sign_string(params, ("sign", "sign_type")).encode(charset)
        if not self._verify(message, params.get("sign", "")):
            return "ILLEGAL_SIGN bad request signature"
        return ""

    def _verify(self, message: bytes, sign: str) -> bool:
        if self.merchant_public_key is None:
            return hashlib.md5(message + (self.md5_key or "").encode()).hexdigest() == sign
        try:
            pkcs1_15.new(self.merchant_public_key).verify(SHA1.new(message), base64.b64decode(sign))
        except (ValueError, TypeError):
            return False
        return True

    def sign(self, fields: dict[str, str], charset: str) -> str:
        message = reference_sign_string(fields, ("sign", "sign_type")).encode(charset)
        if self.alipay_key is None:
            return hashlib.md5(message + (self.md5_key or "").encode()).hexdigest()
        return base64.b64encode(pkcs1_15.new(self.alipay_key).sign(SHA1.new(message))).decode("ascii")

    # -- what Alipay would answer ------------------------------------------------------------------------

    @staticmethod
    def _declaration(charset: str) -> str:
        return f'<?xml version="1.0" encoding="{charset.upper()}"?>'

    def _error(self, code: str, charset: str) -> bytes:
        return (self._declaration(charset) + f"<alipay><is_success>F</is_success><error>{escape(code)}</error>"
                "</alipay>").encode(charset)

    def _answer(self, params: dict[str, str], charset: str, kind: str, options: dict[str, Any]) -> bytes:
        if kind in ("not_exist", "is_not_exist", "error"):
            code = {"not_exist": "TRADE_NOT_EXIST", "is_not_exist": "TRADE_IS_NOT_EXIST",
                    "error": "ILLEGAL_PARTNER_EXTERFACE"}[kind]
            return self._error(code, charset)
        trade = self._find(params)
        if trade is None:
            return self._error("TRADE_NOT_EXIST", charset)
        fields = trade.fields(self.partner)
        if kind == "mismatch":
            fields["out_trade_no"], fields["trade_no"] = "SOMEONE-ELSE", "2024010121001004999999999999"
        if kind == "huge":
            fields["subject"] = "茶" * int(options.get("size", 4096))
        sign = self.sign(fields, charset)
        shown = dict(fields)
        if kind == "tampered":
            shown["total_fee"] = options.get("total_fee", "0.01")
        nl = "\n  " if kind == "pretty" else ""
        items = [f"<{k}>{escape(v)}</{k}>" for k, v in sorted(shown.items())]
        if kind == "duplicate":
            items.append("<trade_status>TRADE_SUCCESS</trade_status>")
        if kind == "nested":
            items.append("<fund_bill_list><fund_bill><amount>9999.00</amount></fund_bill></fund_bill_list>")
        request = "".join(f'<param name="{escape(k)}">{escape(v)}</param>' for k, v in params.items()
                          if k not in ("sign", "sign_type"))
        sign_type = "RSA2" if kind == "wrong_sign_type" else self.sign_type
        signature = "" if kind == "unsigned" else f"<sign>{sign}</sign>{nl}<sign_type>{sign_type}</sign_type>"
        body = (f"<alipay>{nl}<is_success>T</is_success>{nl}<request>{request}</request>{nl}"
                f"<response>{nl}<trade>{nl}{nl.join(items)}{nl}</trade>{nl}</response>{nl}{signature}\n</alipay>\n")
        declaration = self._declaration(charset)
        if kind == "pretty":
            declaration = declaration.lower() + "\n"
        elif kind == "no_declaration":
            declaration = ""
        elif kind == "doctype_bomb":
            declaration += BOMB
            body = body.replace(f"<trade_status>{trade.status}</trade_status>", "<trade_status>&f;</trade_status>")
        elif kind == "xxe":
            declaration += XXE
            body = body.replace("<subject>", "<subject>&xxe;")
        data = (declaration + body).encode(charset)
        if kind == "malformed":
            data = data[: len(data) // 2]
        return data
