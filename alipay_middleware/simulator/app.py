"""The Simulator: a WSGI app that plays Alipay's gateway, cashier and notifier on one loopback port."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from Crypto.PublicKey import RSA
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..errors import Rejection
from ..wire.form import CST, normalize_charset, parse_form, sniff_charset
from ..wire.keys import load_private_key
from ..wire.signing import RsaSigner
from . import guard, legacy, openapi, pages
from .callbacks import Callbacks
from .model import (
    OPENAPI,
    Delivery,
    Faults,
    GatewayError,
    LegacyMerchant,
    Merchant,
    PayRequest,
    SimTrade,
    TradeEvent,
)
from .notifier import KEEP_DELIVERIES, Notification, Notifier, is_loopback_url
from .server import SimServer
from .state import KEEP_NOTIFY_IDS, Store

MAX_BODY = 1024 * 1024
#: "Redirect first, notify right after": the first delivery waits this long (real seconds).
NOTIFY_AFTER_REDIRECT = 0.1

_SERVICE = re.compile(rb"(?:^|&)service=")
_PAGE_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_INPUT_CHARSET = re.compile(rb"(?:^|&)_input_charset=([A-Za-z0-9_.%-]*)")
#: Endpoints whose POSTs come from the simulator's own pages only (see guard.py); gateway.do is cross-origin.
_OWN_FORMS = frozenset({"faults", "checkout"})


class _Request(Request):
    max_content_length = MAX_BODY


class Simulator:
    """Alipay, simulated (see the package docstring). A WSGI application.

    ``state_path``: an SQLite file (``.sqlite3``/``.db``) keeping trades, live notify ids and the resends
    still pending across restarts (in memory without it). ``keep_deliveries``: how many notification
    attempts :meth:`deliveries` and the admin page keep; ``keep_notify_ids``: how many notify ids not yet
    acknowledged ``notify_verify`` keeps answering for (the oldest beyond are dropped).
    """

    def __init__(
        self,
        merchants: Iterable[Merchant] = (),
        legacy_merchants: Iterable[LegacyMerchant] = (),
        *,
        alipay_private_key: str | None = None,
        legacy_private_key: str | None = None,
        time_scale: float = 1.0,
        state_path: str | os.PathLike[str] | None = None,
        allow_remote_callbacks: bool = False,
        clock: Callable[[], datetime] | None = None,
        keep_deliveries: int = KEEP_DELIVERIES,
        keep_notify_ids: int = KEEP_NOTIFY_IDS,
    ) -> None:
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not 0 < time_scale <= 1000:
            raise ValueError(f"time_scale must be a number in (0, 1000] (1.0 = Alipay's real schedule), "
                             f"got {time_scale!r}")
        if not isinstance(allow_remote_callbacks, bool):
            raise TypeError("allow_remote_callbacks must be True or False")
        self._merchants: dict[str, Merchant] = {}
        for merchant in merchants:
            if not isinstance(merchant, Merchant):
                raise TypeError(f"merchants must be Merchant objects, not {type(merchant).__name__}")
            if merchant.app_id in self._merchants:
                raise ValueError(f"app_id {merchant.app_id} is registered twice")
            self._merchants[merchant.app_id] = merchant
        self._legacy: dict[str, LegacyMerchant] = {}
        for partner in legacy_merchants:
            if not isinstance(partner, LegacyMerchant):
                raise TypeError(f"legacy_merchants must be LegacyMerchant objects, not {type(partner).__name__}")
            if partner.partner in self._legacy:
                raise ValueError(f"partner {partner.partner} is registered twice")
            self._legacy[partner.partner] = partner
        alipay_key = (load_private_key(alipay_private_key, "alipay_private_key") if alipay_private_key is not None
                      else RSA.generate(2048))
        legacy_key = (load_private_key(legacy_private_key, "legacy_private_key") if legacy_private_key is not None
                      else RSA.generate(1024))
        self._alipay_key = alipay_key
        self._legacy_signer = RsaSigner(legacy_key, "RSA")
        self.alipay_public_key_pem: str = alipay_key.public_key().export_key().decode("ascii")
        self.legacy_public_key_pem: str = legacy_key.public_key().export_key().decode("ascii")
        self.time_scale = float(time_scale)
        self.allow_remote_callbacks = allow_remote_callbacks
        self.faults = Faults()
        self._clock = clock or (lambda: datetime.now(CST))
        self._store = Store(state_path, keep_notify_ids=keep_notify_ids)
        self._callbacks = Callbacks(alipay_key, self._legacy_signer, self._legacy, self._store)
        try:
            self._notifier = Notifier(self.faults, time_scale=self.time_scale, allow_remote=allow_remote_callbacks,
                                      on_acknowledged=lambda note: self._store.retire_notify_id(note.notify_id),
                                      journal=self._store if state_path is not None else None,
                                      keep_deliveries=keep_deliveries)
        except ValueError:
            self._store.close()
            raise
        self._notifier.resume()  # the resends an earlier run left pending in the state file
        self._routes = Map([
            Rule("/", endpoint="admin", methods=["GET"]),
            Rule("/faults", endpoint="faults", methods=["POST"]),
            Rule("/gateway.do", endpoint="gateway", methods=["GET", "POST"]),
            Rule("/checkout/<trade_no>", endpoint="checkout", methods=["GET", "POST"]),
        ])
        #: (host, port) of every address serve() bound: accepted as Host besides the loopback names.
        self._bound: frozenset[tuple[str, int]] = frozenset()

    def __repr__(self) -> str:
        return f"<Simulator apps={sorted(self._merchants)} partners={sorted(self._legacy)}>"

    # -- the public surface ------------------------------------------------------------------------

    def trades(self) -> list[SimTrade]:
        with self._store.lock:
            return [copy.deepcopy(t) for t in self._store.trades()]

    def trade(self, out_trade_no: str, merchant_id: str | None = None) -> SimTrade | None:
        with self._store.lock:
            found = [t for t in self._store.by_out_trade_no(out_trade_no) if merchant_id in (None, t.merchant_id)]
            return copy.deepcopy(found[-1]) if found else None

    def deliveries(self) -> list[Delivery]:
        """The last ``keep_deliveries`` notification attempts (default 1,000), oldest first."""
        return self._notifier.deliveries()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self._notifier.wait_idle(timeout)

    def refund(self, out_trade_no: str, amount: Decimal | str, *, merchant_id: str | None = None,
               out_request_no: str | None = None) -> SimTrade:
        """Refund a paid trade as if from the merchant console (the legacy service has no refund API a
        server can call): sends the refund notification. Raises GatewayError (``ACQ.*``) when refused."""
        with self._store.lock:
            trade = self._find_own(out_trade_no, merchant_id)
            value = openapi.strict_amount(amount if isinstance(amount, str) else f"{amount:.2f}")
            if value is None:
                raise ValueError(f"amount must have two decimals within [0.01, 100000000], got {amount!r}")
            request_no = out_request_no or f"{trade.trade_no}-{len(trade.refunds) + 1}"
            refund, moved = openapi.apply_refund(trade, value, request_no, self._clock())
            self._store.save(trade)
            snapshot = copy.deepcopy(trade)
        if moved:
            self._dispatch(TradeEvent(snapshot, "refunded", refund))
        return copy.deepcopy(snapshot)

    def close(self) -> None:
        """Stop the notifier (waits for the attempts in flight) and close the state file."""
        self._notifier.close()
        self._store.close()

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> SimServer[Simulator]:
        """Run on a threaded werkzeug server in a daemon thread. Loopback addresses only."""
        if not is_loopback_url(f"http://{host}/") and host != "localhost":
            raise ValueError(f"the simulator binds to loopback only (127.0.0.1, ::1), not {host!r}: it is a "
                             "test double that accepts any registered key and must not face a network")
        server = SimServer(self, host, port)
        bound = guard.split_host(urlsplit(server.url).netloc)
        if bound is not None and bound[1] is not None:
            self._bound |= {(bound[0], bound[1])}
        return server

    # -- WSGI --------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refused = guard.host_refusal(environ, self._bound)
        if refused is not None:
            return self._refuse(*refused)(environ, start_response)
        request = _Request(environ)
        adapter = self._routes.bind_to_environ(environ)
        try:
            endpoint, args = adapter.match()
            reason = guard.cross_origin_refusal(environ) \
                if endpoint in _OWN_FORMS and request.method not in ("GET", "HEAD") else None
            response = (self._refuse(403, reason) if reason is not None
                        else getattr(self, f"_on_{endpoint}")(request, **args))
        except HTTPException as exc:
            response = Response(pages.result(f"{exc.code} {exc.name}", exc.description or ""),
                                status=exc.code or 500, content_type="text/html; charset=utf-8")
        return response(environ, start_response)

    @staticmethod
    def _refuse(status: int, reason: str) -> Response:
        return Response(f"{status} {reason}\n", status=status, content_type="text/plain; charset=utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})

    def _html(self, text: str, status: int = 200) -> Response:
        # No framing: another origin's page must not overlay the Pay button or the fault switches.
        return Response(text, status=status, content_type="text/html; charset=utf-8",
                        headers={"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"})

    def _on_admin(self, request: Request) -> Response:
        merchants = [(m.app_id, m.name) for m in self._merchants.values()] + \
            [(m.partner, f"{m.name} (legacy)") for m in self._legacy.values()]
        numbers = {}
        for name in ("page", "sent"):
            text = request.args.get(name, "1")
            if not _PAGE_NUMBER.fullmatch(text):
                return self._html(pages.result("Bad page number", f"{name} must be a page number (1, 2, ...), "
                                                                  f"not {text[:20]!r}"), 400)
            numbers[name] = int(text)
        skip = (numbers["page"] - 1) * pages.PAGE_SIZE
        with self._store.lock:
            trades = pages.Paged(self._store.newest(skip, pages.PAGE_SIZE), numbers["page"], self._store.count())
        sent, kept = self._notifier.newest_deliveries((numbers["sent"] - 1) * pages.PAGE_SIZE, pages.PAGE_SIZE)
        return self._html(pages.admin(request.url_root + "gateway.do", trades, pages.Paged(sent, numbers["sent"], kept),
                                      self._notifier.delivered(), self.faults, self.alipay_public_key_pem, merchants,
                                      saved=request.args.get("saved") == "1"))

    def _on_faults(self, request: Request) -> Response:
        for name in Faults.names():
            setattr(self.faults, name, request.form.get(name) in ("on", "1", "true"))
        return Response(status=303, headers={"Location": request.script_root + "/?saved=1"})

    # -- gateway.do ----------------------------------------------------------------------------------

    def _on_gateway(self, request: Request) -> Response:
        query = request.query_string
        body = request.get_data(cache=False) if request.method == "POST" else b""
        if _SERVICE.search(query) or _SERVICE.search(body):
            return self._legacy_gateway(request, query, body)
        return self._openapi_gateway(request, query, body)

    @staticmethod
    def _fields(query: bytes, body: bytes, charset: str) -> dict[str, str]:
        fields = parse_form(query, charset) if query else {}
        if body:
            for name, value in parse_form(body, charset).items():
                if fields.setdefault(name, value) != value:
                    raise Rejection("conflict", 400, f"{name} differs between the URL and the form")  # type: ignore[arg-type]
        return fields

    def _openapi_gateway(self, request: Request, query: bytes, body: bytes) -> Response:
        now = self._clock()
        pay = re.search(rb"(?:^|&)method=alipay\.trade\.(?:page|wap)\.pay(?:&|$)", query + b"&" + body) is not None
        params: dict[str, str] = {}
        merchant: Merchant | None = None
        try:
            try:
                charset = sniff_charset(query + b"&" + body if query else body, None)
                params = self._fields(query, body, charset)
            except Rejection as exc:
                if exc.reason == "unknown_charset":
                    raise openapi.invalid("isv.invalid-charset", "charset 只支持 utf-8 / gbk") from None
                raise openapi.invalid("isv.invalid-parameter", f"请求无法解析: {exc.reason}") from None
            pay = params.get("method") in openapi.PAY_METHODS
            merchant = openapi.authenticate(params, self._merchants, charset, now)
            if pay:
                return self._open_checkout(request, openapi.read_pay(params, merchant, charset,
                                                                     self.allow_remote_callbacks), now)
            method = params["method"]
            payload, events = openapi.call_api(method, params, merchant, self._store, now)
        except GatewayError as exc:
            if pay:
                return self._html(pages.error(exc))
            sign_type = params.get("sign_type") if params.get("sign_type") in ("RSA2", "RSA") else "RSA2"
            signer = None if exc.sub_code == "isv.invalid-app-id" else RsaSigner(self._alipay_key, str(sign_type))
            return self._json(openapi.api_response(params.get("method", ""), exc, None, signer))
        for event in events:
            self._dispatch(event)
        return self._json(openapi.api_response(method, None, payload,
                                               RsaSigner(self._alipay_key, params["sign_type"])))

    @staticmethod
    def _json(body: bytes) -> Response:
        return Response(body, content_type="text/html;charset=utf-8")  # what Alipay's gateway declares

    def _legacy_gateway(self, request: Request, query: bytes, body: bytes) -> Response:
        match = _INPUT_CHARSET.search(query)

        def service_is(name: str) -> bool:
            pattern = rb"(?:^|&)service=" + re.escape(name.encode()) + rb"(?:&|$)"
            return re.search(pattern, query + b"&" + body) is not None

        if service_is(legacy.NOTIFY_VERIFY):
            try:
                params = self._fields(query, body, "utf-8")
            except Rejection:
                return Response(b"invalid", content_type="text/plain")
            return Response(legacy.notify_verify(params, self._store), content_type="text/plain")
        xml = service_is(legacy.SINGLE_TRADE_QUERY)
        charset = "gbk"  # what Alipay assumes when the URL does not say
        try:
            try:
                if match and match.group(1):
                    charset = normalize_charset(match.group(1).decode("ascii"))
                params = self._fields(query, body, charset)
            except Rejection as exc:
                code = "ILLEGAL_CHARSET" if exc.reason == "unknown_charset" else "ILLEGAL_ARGUMENT"
                raise legacy.refused(code, exc.reason) from None
            merchant = legacy.authenticate(params, self._legacy, charset)
            if xml:
                signer = legacy.signer_for(params["sign_type"], merchant, self._legacy_signer)
                answer = legacy.single_trade_query(params, merchant, self._store, charset, signer)
                return Response(answer, content_type=f"text/xml; charset={charset.upper()}")
            return self._open_checkout(request, legacy.read_pay(params, merchant, charset,
                                                                self.allow_remote_callbacks), self._clock())
        except GatewayError as exc:
            if xml:
                return Response(legacy.failure(exc.sub_code, charset),
                                content_type=f"text/xml; charset={charset.upper()}")
            return self._html(pages.error(exc))

    def _open_checkout(self, request: Request, pay: PayRequest, now: datetime) -> Response:
        with self._store.lock:
            trade = self._store.find(pay.merchant_id, pay.out_trade_no)
            if trade is not None:
                protocol = openapi if pay.kind == OPENAPI else legacy
                problem = protocol.existing_trade_problem(trade, pay)
                if problem is not None:
                    return self._html(pages.error(problem))
                trade.notify_url, trade.return_url = pay.notify_url, pay.return_url
                self._store.save(trade)
            else:
                trade = SimTrade(
                    kind=pay.kind, merchant_id=pay.merchant_id, out_trade_no=pay.out_trade_no,
                    trade_no=self._store.next_trade_no(now), subject=pay.subject, total_amount=pay.total_amount,
                    status="WAIT_BUYER_PAY", charset=pay.charset, notify_url=pay.notify_url,
                    return_url=pay.return_url, created_at=now, method=pay.method, sign_type=pay.sign_type,
                    seller_id=pay.seller_id, body=pay.body, passback=pay.passback, quit_url=pay.quit_url,
                )
                self._store.add(trade)
        return Response(status=303, headers={"Location": f"{request.script_root}/checkout/{trade.trade_no}"})

    # -- the cashier ---------------------------------------------------------------------------------

    def _merchant_name(self, trade: SimTrade) -> str:
        merchant: Merchant | LegacyMerchant | None = (self._merchants.get(trade.merchant_id) if trade.kind == OPENAPI
                                                      else self._legacy.get(trade.merchant_id))
        return merchant.name if merchant is not None else trade.merchant_id

    def _on_checkout(self, request: Request, trade_no: str) -> Response:
        trade = self._store.by_trade_no(trade_no)
        if trade is None:
            return self._html(pages.result("No such trade", f"The simulator knows no trade {trade_no}."), 404)
        if request.method == "GET":
            with self._store.lock:
                return self._html(pages.checkout(trade, self._merchant_name(trade)))
        action = request.form.get("action", "")
        now = self._clock()
        with self._store.lock:
            before = trade.status
            if action not in ("pay", "cancel", "timeout"):
                return self._html(pages.result("Unknown action", "action must be pay, cancel or timeout"), 400)
            if before != "WAIT_BUYER_PAY":  # paid or closed: no action changes it, nothing is paid twice
                problem = (openapi.business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭") if before == "TRADE_CLOSED"
                           else openapi.business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"))
                return self._html(pages.settled(trade, self._merchant_name(trade), problem))
            trade.buyer_acted = True
            if before == "WAIT_BUYER_PAY" and action == "pay":
                trade.status, trade.paid_at = "TRADE_SUCCESS", now
            elif before == "WAIT_BUYER_PAY" and action == "timeout":
                trade.status, trade.closed_at = "TRADE_CLOSED", now
            self._store.save(trade)
            changed = trade.status != before
            trade = copy.deepcopy(trade)
        if action == "cancel":
            if trade.quit_url:
                return Response(status=303, headers={"Location": trade.quit_url})
            return self._html(pages.result("Payment cancelled", "You left the checkout; the order stays unpaid "
                                           "(WAIT_BUYER_PAY) and can still be paid.", trade,
                                           f"{request.script_root}/checkout/{trade.trade_no}"))
        if action == "timeout":
            if changed:
                self._dispatch(TradeEvent(trade, "closed"))
            return self._html(pages.result("Payment timed out", "The trade was closed unpaid.", trade))
        notes = self._notifications(TradeEvent(trade, "paid")) if changed else []
        if notes and self.faults.notify_before_return:
            for note in notes:
                self._notifier.deliver_now(note)
        else:
            for note in notes:
                self._notifier.submit(note, delay=NOTIFY_AFTER_REDIRECT)
        if trade.status not in ("TRADE_SUCCESS", "TRADE_FINISHED") or not trade.return_url:
            return self._html(pages.result("Paid", "The (simulated) payment went through.", trade))
        return Response(status=303, headers={"Location": self._return_url(trade, now)})

    def _return_url(self, trade: SimTrade, now: datetime) -> str:
        return self._callbacks.return_url(trade, now)

    def _dispatch(self, event: TradeEvent) -> None:
        for note in self._notifications(event):
            self._notifier.submit(note)

    def _notifications(self, event: TradeEvent) -> list[Notification]:
        return self._callbacks.notifications(event, self.faults, self._clock())

    def _find_own(self, out_trade_no: str, merchant_id: str | None) -> SimTrade:
        found = [t for t in self._store.by_out_trade_no(out_trade_no) if merchant_id in (None, t.merchant_id)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} trades match out_trade_no={out_trade_no!r}; pass merchant_id=..."
                              if found else f"no trade with out_trade_no={out_trade_no!r}")
        return found[0]
