"""Real framework apps wrapped by the middleware, used exactly the way their users would.

Every framework gets the same three views (a pay page, the return page, an unrelated page) plus a
decoy view at the notify path that must never be reached. ``SITES`` builds each of them, wrapped (or,
with ``alipay=None``, bare) and driven by that framework's own test client; the table-driven tests
below run over all of them:

    flask                     flask_app.wsgi_app = alipay.wsgi(flask_app.wsgi_app), Flask's test client
    django                    alipay.wsgi(get_wsgi_application()), werkzeug's test Client
    django-asgi               alipay.asgi(get_asgi_application()), the conftest ASGI client
    fastapi-add_middleware    fastapi_app.add_middleware(AlipayASGIMiddleware, alipay=alipay), TestClient
    fastapi-alipay.asgi       alipay.asgi(fastapi_app), TestClient
    starlette-middleware      Starlette(middleware=[Middleware(AlipayASGIMiddleware, alipay=alipay)])
    plain-wsgi / plain-asgi   hand-written callables, the conftest clients
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import django
import flask
import httpx
import pytest
from Crypto.Hash import SHA256
from Crypto.Signature import pkcs1_15
from django.conf import settings as django_settings
from django.http import HttpResponse
from django.test.utils import override_settings
from django.urls import path as django_path
from django.views.decorators.http import require_http_methods
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from fastapi.responses import Response as FastAPIResponse
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client as WerkzeugClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from alipay_middleware import PRODUCTION_GATEWAY, Alipay, AlipayASGIMiddleware, ReturnResult
from alipay_middleware.protocols.openapi import OpenApiHelper
from alipay_middleware.wire.signing import sign_string
from conftest import (
    APP_ID,
    FORM,
    SELLER_ID,
    ASGIClient,
    Keys,
    WSGIClient,
    encode_form,
    notify_fields,
    sign_fields,
    signed_body,
)

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package; httpx is what is installed, and works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOTIFY = "/alipay/notify"
RETURN = "/alipay/return"
BEIJING = timezone(timedelta(hours=8))
PAY = dict(out_trade_no="A1", total_amount=Decimal("9.90"), subject="Tea")
RETURN_TRADE_NO = "2024010122001400000000000042"


# -- what every site's views do, whatever the framework ------------------------------------------------

def render_return(result: ReturnResult | None) -> str:
    if result is None:
        return "unverified"
    return f"verified {result.out_trade_no} {result.trade_no} {result.total_amount}"


def echo_text(method: str, query: str, body: bytes) -> str:
    """The unrelated page: depends only on the request, never on the middleware."""
    return f"other {method} q={query} body={body.decode('latin-1')}"


OTHER_STATUS = 203
OTHER_HEADERS = {"X-Inner": "untouched"}


# -- one response shape over every test client ----------------------------------------------------------

@dataclass(frozen=True)
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def _resp(status: int, headers: Any, body: bytes) -> Resp:
    return Resp(status, {k.lower(): v for k, v in headers.items()}, body)


class Site:
    """A framework app, wrapped by ``alipay`` (or bare), behind that framework's test client."""

    origin: str  # scheme://host the test client sends, hence the default callback URLs

    def __init__(self, alipay: Alipay | None) -> None:
        self.alipay = alipay
        self.inner_saw_notify: list[str] = []  # the decoy view at the notify path appends here

    def get(self, path: str, query: str = "") -> Resp:
        raise NotImplementedError

    def post(self, path: str, body: bytes, content_type: str = FORM) -> Resp:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- Flask ----------------------------------------------------------------------------------------------

def build_flask(site: Site) -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/pay")
    def pay() -> str:
        helper = flask.request.environ["alipay"]
        assert isinstance(helper, OpenApiHelper)
        return helper.page_pay_url(**PAY)

    @app.get(RETURN)
    def back() -> str:
        return render_return(flask.request.environ["alipay.return"])

    @app.route("/other", methods=["GET", "POST"])
    def other() -> flask.Response:
        text = echo_text(flask.request.method, flask.request.query_string.decode(), flask.request.get_data())
        return flask.Response(text, status=OTHER_STATUS, headers=OTHER_HEADERS, content_type="text/plain")

    @app.post(NOTIFY)
    def decoy() -> str:
        site.inner_saw_notify.append("flask")
        return "inner app answered the notify"

    if site.alipay is not None:
        app.wsgi_app = site.alipay.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


class FlaskSite(Site):
    origin = "http://localhost"  # Flask's test client

    def __init__(self, alipay: Alipay | None) -> None:
        super().__init__(alipay)
        self.app = build_flask(self)
        self.client = self.app.test_client()

    def get(self, path: str, query: str = "") -> Resp:
        r = self.client.get(path, query_string=query)
        return _resp(r.status_code, r.headers, r.data)

    def post(self, path: str, body: bytes, content_type: str = FORM) -> Resp:
        r = self.client.post(path, data=body, content_type=content_type)
        return _resp(r.status_code, r.headers, r.data)


# -- Django ----------------------------------------------------------------------------------------------

DJANGO_SETTINGS: dict[str, Any] = dict(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["shop.example"],
    SECRET_KEY="test-only-" + "x" * 40,
    DEBUG=False,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    USE_TZ=True,
)
if not django_settings.configured:  # settings can be configured once per process
    django_settings.configure(**DJANGO_SETTINGS)
    django.setup()

_django_site: list[Site] = []  # the site whose test is running (Django's URLconf is module-level)


def alipay_keys(request: Any) -> Any:
    """Where a Django view finds the middleware's keys: the WSGI environ (also ``request.META``) or,
    under ASGI, the scope."""
    if hasattr(request, "scope"):  # ASGIRequest
        return request.scope
    assert request.META["alipay"] is request.environ["alipay"]
    return request.META


def django_pay(request: Any) -> HttpResponse:
    helper = alipay_keys(request)["alipay"]
    assert isinstance(helper, OpenApiHelper)
    return HttpResponse(helper.page_pay_url(**PAY), content_type="text/plain")


def django_return(request: Any) -> HttpResponse:
    return HttpResponse(render_return(alipay_keys(request)["alipay.return"]), content_type="text/plain")


@require_http_methods(["GET", "POST"])
def django_other(request: Any) -> HttpResponse:
    text = echo_text(request.method, request.META.get("QUERY_STRING", ""), request.body)
    response = HttpResponse(text, status=OTHER_STATUS, content_type="text/plain")
    for name, value in OTHER_HEADERS.items():
        response[name] = value
    return response


def django_decoy(request: Any) -> HttpResponse:
    _django_site[-1].inner_saw_notify.append("django")
    return HttpResponse("inner app answered the notify")


urlpatterns = [
    django_path("pay", django_pay),
    django_path(RETURN.lstrip("/"), django_return),
    django_path("other", django_other),
    django_path(NOTIFY.lstrip("/"), django_decoy),
]


class DjangoSite(Site):
    origin = "http://shop.example"

    def __init__(self, alipay: Alipay | None) -> None:
        from django.core.wsgi import get_wsgi_application

        super().__init__(alipay)
        # Whoever configured Django first, this module's URLconf and host serve these requests.
        self._override = override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["shop.example"])
        self._override.enable()
        _django_site.append(self)
        application = get_wsgi_application()
        if alipay is not None:
            application = alipay.wsgi(application)
        self.application = application
        self.client = WerkzeugClient(application)

    def get(self, path: str, query: str = "") -> Resp:
        r = self.client.get(path, query_string=query, base_url=self.origin)
        return _resp(r.status_code, r.headers, r.data)

    def post(self, path: str, body: bytes, content_type: str = FORM) -> Resp:
        r = self.client.post(path, data=body, content_type=content_type, base_url=self.origin)
        return _resp(r.status_code, r.headers, r.data)

    def close(self) -> None:
        _django_site.remove(self)
        self._override.disable()


# -- FastAPI and Starlette ---------------------------------------------------------------------------------

def build_fastapi(site: Site, lifespan: Any = None) -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.get("/pay", response_class=PlainTextResponse)
    def pay(request: Request) -> str:
        helper = request.scope["alipay"]
        assert isinstance(helper, OpenApiHelper)
        return str(helper.page_pay_url(**PAY))

    @app.get(RETURN, response_class=PlainTextResponse)
    async def back(request: Request) -> str:
        return render_return(request.scope["alipay.return"])

    @app.api_route("/other", methods=["GET", "POST"])
    async def other(request: Request) -> FastAPIResponse:
        text = echo_text(request.method, request.url.query, await request.body())
        return PlainTextResponse(text, status_code=OTHER_STATUS, headers=OTHER_HEADERS)

    @app.post(NOTIFY, response_class=PlainTextResponse)
    def decoy() -> str:
        site.inner_saw_notify.append("fastapi")
        return "inner app answered the notify"

    return app


def build_starlette(site: Site, middleware: list[Middleware]) -> Starlette:
    async def pay(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.scope["alipay"].page_pay_url(**PAY))

    def back(request: Any) -> PlainTextResponse:  # a sync endpoint: Starlette runs it in a thread
        return PlainTextResponse(render_return(request.scope["alipay.return"]))

    async def other(request: Any) -> PlainTextResponse:
        text = echo_text(request.method, request.url.query, await request.body())
        return PlainTextResponse(text, status_code=OTHER_STATUS, headers=OTHER_HEADERS)

    async def decoy(request: Any) -> PlainTextResponse:
        site.inner_saw_notify.append("starlette")
        return PlainTextResponse("inner app answered the notify")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"echo {text} alipay-in-scope={'alipay' in websocket.scope}")
        await websocket.close()

    return Starlette(
        routes=[Route("/pay", pay), Route(RETURN, back), Route("/other", other, methods=["GET", "POST"]),
                Route(NOTIFY, decoy, methods=["POST"]), WebSocketRoute("/ws", ws)],
        middleware=middleware,
    )


class ASGITestClientSite(Site):
    origin = "http://testserver"  # Starlette's TestClient

    def __init__(self, alipay: Alipay | None) -> None:
        super().__init__(alipay)
        self.client = TestClient(self.build())
        self.client.__enter__()  # runs the lifespan, as a server would

    def build(self) -> Any:
        raise NotImplementedError

    def get(self, path: str, query: str = "") -> Resp:
        r = self.client.get(f"{path}?{query}" if query else path)
        return _resp(r.status_code, r.headers, r.content)

    def post(self, path: str, body: bytes, content_type: str = FORM) -> Resp:
        r = self.client.post(path, content=body, headers={"content-type": content_type})
        return _resp(r.status_code, r.headers, r.content)

    def close(self) -> None:
        self.client.__exit__(None, None, None)


class FastAPIAddMiddlewareSite(ASGITestClientSite):
    def build(self) -> Any:
        app = build_fastapi(self)
        if self.alipay is not None:
            app.add_middleware(AlipayASGIMiddleware, alipay=self.alipay)
        return app


class FastAPIWrappedSite(ASGITestClientSite):
    def build(self) -> Any:
        app = build_fastapi(self)
        return self.alipay.asgi(app) if self.alipay is not None else app


class StarletteSite(ASGITestClientSite):
    def build(self) -> Any:
        middleware = [Middleware(AlipayASGIMiddleware, alipay=self.alipay)] if self.alipay is not None else []
        return build_starlette(self, middleware)


# -- plain WSGI and ASGI callables ---------------------------------------------------------------------------

def plain_wsgi_app(site: Site) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        status, headers = "200 OK", [("Content-Type", "text/plain")]
        if path == "/pay":
            text = environ["alipay"].page_pay_url(**PAY)
        elif path == RETURN:
            text = render_return(environ["alipay.return"])
        elif path == "/other":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = echo_text(method, environ.get("QUERY_STRING", ""), environ["wsgi.input"].read(length))
            status, headers = "203 Non-Authoritative Information", headers + list(OTHER_HEADERS.items())
        elif path == NOTIFY:
            site.inner_saw_notify.append("plain-wsgi")
            text = "inner app answered the notify"
        else:
            status, text = "404 Not Found", "not found"
        start_response(status, headers)
        return [text.encode()]

    return app


def plain_asgi_app(site: Site) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, status, headers = scope["path"], 200, [(b"content-type", b"text/plain")]
        if path == "/pay":
            text = scope["alipay"].page_pay_url(**PAY)
        elif path == RETURN:
            text = render_return(scope["alipay.return"])
        elif path == "/other":
            text = echo_text(scope["method"], scope["query_string"].decode(), body)
            status = OTHER_STATUS
            headers += [(k.lower().encode(), v.encode()) for k, v in OTHER_HEADERS.items()]
        elif path == NOTIFY:
            site.inner_saw_notify.append("plain-asgi")
            text = "inner app answered the notify"
        else:
            status, text = 404, "not found"
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": text.encode()})

    return app


class ConftestClientSite(Site):
    origin = "http://shop.example"  # the conftest clients send Host: shop.example

    def get(self, path: str, query: str = "") -> Resp:
        r = self.client.request("GET", path, query=query)
        return _resp(r.status, r.headers, r.body)

    def post(self, path: str, body: bytes, content_type: str = FORM) -> Resp:
        r = self.client.request("POST", path, body, content_type=content_type)
        return _resp(r.status, r.headers, r.body)

    def close(self) -> None:
        self.client.close()


class PlainWSGISite(ConftestClientSite):
    def __init__(self, alipay: Alipay | None) -> None:
        super().__init__(alipay)
        app = plain_wsgi_app(self)
        self.client: Any = WSGIClient(alipay.wsgi(app) if alipay is not None else app)


class PlainASGISite(ConftestClientSite):
    def __init__(self, alipay: Alipay | None) -> None:
        super().__init__(alipay)
        app = plain_asgi_app(self)
        self.client = ASGIClient(alipay.asgi(app) if alipay is not None else app)


class DjangoASGISite(ConftestClientSite):
    """``alipay.asgi(get_asgi_application())``: Django's ASGI handler has no lifespan, so the
    conftest ASGI client (plain http scopes) drives it."""

    def __init__(self, alipay: Alipay | None) -> None:
        from django.core.asgi import get_asgi_application

        super().__init__(alipay)
        self._override = override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["shop.example"])
        self._override.enable()
        _django_site.append(self)
        application = get_asgi_application()
        self.client: Any = ASGIClient(alipay.asgi(application) if alipay is not None else application)

    def close(self) -> None:
        self.client.close()
        _django_site.remove(self)
        self._override.disable()


SITES: dict[str, type[Site]] = {
    "flask": FlaskSite,
    "django": DjangoSite,
    "django-asgi": DjangoASGISite,
    "fastapi-add_middleware": FastAPIAddMiddlewareSite,
    "fastapi-alipay.asgi": FastAPIWrappedSite,
    "starlette-middleware": StarletteSite,
    "plain-wsgi": PlainWSGISite,
    "plain-asgi": PlainASGISite,
}


@pytest.fixture
def open_site() -> Iterator[Callable[[str, Alipay | None], Site]]:
    opened: list[Site] = []

    def _open(kind: str, alipay: Alipay | None) -> Site:
        site = SITES[kind](alipay)
        opened.append(site)
        return site

    yield _open
    for site in reversed(opened):
        site.close()


@pytest.fixture(params=sorted(SITES))
def site_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shop(site_kind: str, open_site: Any, make_alipay: Any) -> Site:
    return open_site(site_kind, make_alipay(orders={"A1": "9.90"}))


# -- hooks: the same counting hook, sync or async ---------------------------------------------------------------

def counting_hook(style: str, calls: list[Any]) -> Callable[[Any], Any]:
    if style == "sync":
        def paid(event: Any) -> None:
            calls.append(event)
        return paid

    async def paid_async(event: Any) -> None:
        await asyncio.sleep(0)  # really suspends: proves the hook is awaited, not just called
        calls.append(event)
    return paid_async


# -- checks on a pay URL -------------------------------------------------------------------------------------------

def pay_params(url: str) -> dict[str, str]:
    assert url.startswith(PRODUCTION_GATEWAY + "?"), url[:80]
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    assert len(params) == len(pairs), "a parameter appears twice"
    return params


def assert_signed_by_app(params: dict[str, str], keys: Keys) -> None:
    """Request rule: every parameter but ``sign`` (``sign_type`` included), RSA2 with the app's key."""
    digest = SHA256.new(sign_string(params).encode("utf-8"))
    pkcs1_15.new(keys.app.public_key()).verify(digest, base64.b64decode(params["sign"]))  # raises if bad
    tampered = SHA256.new(sign_string(dict(params, total_amount="0.01")).encode("utf-8"))
    with pytest.raises(ValueError):
        pkcs1_15.new(keys.app.public_key()).verify(tampered, base64.b64decode(params["sign"]))


def assert_beijing_time(text: str) -> None:
    """``timestamp`` is Beijing wall-clock time: near now in UTC+8, and not the UTC (or local) clock."""
    stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    beijing_now = datetime.now(BEIJING).replace(tzinfo=None)
    utc_now = datetime.now(timezone.utc).replace(tzinfo=None)
    local_now = datetime.now()
    assert abs(stamp - beijing_now) < timedelta(minutes=2), (text, beijing_now)
    assert abs(stamp - utc_now) > timedelta(hours=7), f"{text} is the UTC wall clock, not Beijing time"
    if abs(local_now - beijing_now) > timedelta(minutes=10):
        assert abs(stamp - local_now) > timedelta(minutes=5), f"{text} is the server's local clock"


# -- return queries ---------------------------------------------------------------------------------------------------

def return_fields(**overrides: str | None) -> dict[str, str]:
    fields = {
        "charset": "utf-8",
        "out_trade_no": "A1",
        "method": "alipay.trade.page.pay.return",
        "total_amount": "9.90",
        "trade_no": RETURN_TRADE_NO,
        "auth_app_id": APP_ID,
        "version": "1.0",
        "app_id": APP_ID,
        "sign_type": "RSA2",
        "seller_id": SELLER_ID,
        "timestamp": "2024-01-01 12:00:09",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def return_query(keys: Keys, case: str) -> str:
    """A browser return query as Alipay redirects with it, correct or spoiled in one way (``case``)."""
    if case == "no_query":
        return ""
    fields = return_fields(app_id="2021999999999999", auth_app_id="2021999999999999") if case == "other_app" \
        else return_fields()
    signer = keys.app if case == "signed_by_app_key" else keys.alipay
    signed = dict(fields, sign=sign_fields(fields, signer, rule="V2" if case == "v2_rule" else "V1"))
    if case == "tampered_amount":
        signed["total_amount"] = "0.01"
    elif case == "tampered_trade_no":
        signed["trade_no"] = RETURN_TRADE_NO[:-1] + "3"
    elif case == "unsigned":
        del signed["sign"]
    elif case == "extra_field":
        signed["passback_params"] = "added-after-signing"
    return encode_form(signed).decode("ascii")


RETURN_CASES = {
    "verified": f"verified A1 {RETURN_TRADE_NO} 9.90",
    "tampered_amount": "unverified",
    "tampered_trade_no": "unverified",
    "unsigned": "unverified",
    "extra_field": "unverified",
    "signed_by_app_key": "unverified",
    "v2_rule": "unverified",  # the browser return is signed under V1 only
    "other_app": "unverified",  # verifies, but is addressed to another app
    "no_query": "unverified",
}


# == the table-driven tests, over every framework ======================================================================

def test_pay_url_is_signed_and_points_back_at_the_request_host(shop: Site, keys: Keys) -> None:
    response = shop.get("/pay")
    assert response.status == 200, response.body[:500]
    params = pay_params(response.text)
    assert_signed_by_app(params, keys)
    assert params["notify_url"] == f"{shop.origin}{NOTIFY}"
    assert params["return_url"] == f"{shop.origin}{RETURN}"
    assert_beijing_time(params["timestamp"])
    assert {k: params[k] for k in ("app_id", "method", "format", "charset", "sign_type", "version")} == {
        "app_id": APP_ID, "method": "alipay.trade.page.pay", "format": "JSON", "charset": "utf-8",
        "sign_type": "RSA2", "version": "1.0",
    }
    assert json.loads(params["biz_content"]) == {
        "out_trade_no": "A1", "total_amount": "9.90", "subject": "Tea", "product_code": "FAST_INSTANT_TRADE_PAY",
    }


@pytest.mark.parametrize("hook_style", ["sync", "async"])
def test_signed_notify_answers_success_and_calls_the_hook_once(shop: Site, keys: Keys, hook_style: str) -> None:
    calls: list[Any] = []
    shop.alipay.on_paid(counting_hook(hook_style, calls))  # type: ignore[union-attr]
    body = signed_body(notify_fields("A1", "9.90"), keys.alipay)
    first = shop.post(NOTIFY, body)
    assert (first.status, first.body) == (200, b"success")
    assert first.headers["content-length"] == "7"
    assert [(e.kind, e.out_trade_no, e.total_amount) for e in calls] == [("paid", "A1", Decimal("9.90"))]
    again = shop.post(NOTIFY, body)  # Alipay resends until it reads "success"
    assert (again.status, again.body) == (200, b"success")
    assert len(calls) == 1
    assert shop.inner_saw_notify == []  # the notify path is answered by the middleware, never the app


@pytest.mark.parametrize("hook_style", ["sync", "async"])
def test_unsigned_or_unknown_order_notify_is_fail_without_the_hook(shop: Site, keys: Keys, hook_style: str) -> None:
    calls: list[Any] = []
    shop.alipay.on_paid(counting_hook(hook_style, calls))  # type: ignore[union-attr]
    unsigned = shop.post(NOTIFY, encode_form(notify_fields("A1", "9.90")))
    unknown = shop.post(NOTIFY, signed_body(notify_fields("NOPE", "9.90"), keys.alipay))
    assert [(unsigned.status, unsigned.body), (unknown.status, unknown.body)] == [(400, b"fail"), (409, b"fail")]
    assert calls == [] and shop.inner_saw_notify == []


@pytest.mark.parametrize("case", list(RETURN_CASES))
def test_return_page_gets_a_verified_result_or_none(shop: Site, keys: Keys, case: str) -> None:
    response = shop.get(RETURN, return_query(keys, case))
    assert response.status == 200, response.body[:500]
    assert response.text == RETURN_CASES[case]


def test_unrelated_path_returns_the_inner_apps_response_unchanged(site_kind: str, open_site: Any,
                                                                   make_alipay: Any) -> None:
    wrapped = open_site(site_kind, make_alipay())
    bare = open_site(site_kind, None)
    for method, query, body in [("GET", "a=1&b=%E4%B8%AD", b""), ("POST", "", b"x=1&sign=not-for-us")]:
        if method == "GET":
            got, want = wrapped.get("/other", query), bare.get("/other", query)
        else:
            got, want = wrapped.post("/other", body), bare.post("/other", body)
        assert got == want
        assert got.status == OTHER_STATUS and got.headers["x-inner"] == "untouched"
        assert got.text == echo_text(method, query, body)


# == framework-specific checks =====================================================================================

@pytest.mark.parametrize("zone", ["UTC0", "XST+5", "CST-8", "XST-13"], ids=["utc", "utc-5", "beijing", "utc+13"])
def test_timestamp_is_beijing_time_whatever_the_server_zone(zone: str, make_alipay: Any, open_site: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", zone)  # POSIX TZ strings: no zoneinfo database needed
    time.tzset()
    try:
        site = open_site("flask", make_alipay())
        assert_beijing_time(pay_params(site.get("/pay").text)["timestamp"])
    finally:
        monkeypatch.undo()
        time.tzset()


def test_flask_mounted_under_a_prefix(make_alipay: Any, keys: Keys) -> None:
    """A Flask app mounted at /shop (SCRIPT_NAME) gets callback URLs and a notify path under /shop."""
    alipay = make_alipay(orders={"A1": "9.90"})
    calls: list[Any] = []
    alipay.on_paid(calls.append)
    site = Site(alipay)
    app = build_flask(site)
    client = WerkzeugClient(DispatcherMiddleware(lambda e, s: [], {"/shop": app}))
    params = pay_params(client.get("/shop/pay").get_data(as_text=True))
    assert (params["notify_url"], params["return_url"]) == (
        "http://localhost/shop/alipay/notify", "http://localhost/shop/alipay/return")
    response = client.post("/shop/alipay/notify", data=signed_body(notify_fields("A1"), keys.alipay),
                           content_type=FORM)
    assert (response.status_code, response.data) == (200, b"success")
    assert len(calls) == 1 and site.inner_saw_notify == []
    back = client.get("/shop/alipay/return", query_string=return_query(keys, "verified"))
    assert back.get_data(as_text=True) == RETURN_CASES["verified"]


@pytest.mark.parametrize("mounting", ["add_middleware", "alipay.asgi"])
def test_fastapi_mounted_under_a_prefix(make_alipay: Any, keys: Keys, mounting: str) -> None:
    """A FastAPI app inside Starlette's Mount("/shop") (root_path) works under /shop."""
    alipay = make_alipay(orders={"A1": "9.90"})
    calls: list[Any] = []
    alipay.on_paid(calls.append)
    site = Site(alipay)
    app = build_fastapi(site)
    if mounting == "add_middleware":
        app.add_middleware(AlipayASGIMiddleware, alipay=alipay)
        inner: Any = app
    else:
        inner = alipay.asgi(app)
    with TestClient(Starlette(routes=[Mount("/shop", app=inner)])) as client:
        params = pay_params(client.get("/shop/pay").text)
        assert (params["notify_url"], params["return_url"]) == (
            "http://testserver/shop/alipay/notify", "http://testserver/shop/alipay/return")
        response = client.post("/shop/alipay/notify", content=signed_body(notify_fields("A1"), keys.alipay),
                               headers={"content-type": FORM})
        assert (response.status_code, response.content) == (200, b"success")
        assert client.get("/shop/alipay/return?" + return_query(keys, "verified")).text == RETURN_CASES["verified"]
    assert len(calls) == 1 and site.inner_saw_notify == []


@pytest.mark.parametrize("hook_style", ["sync", "async"])
def test_fastapi_through_httpx_async_client(make_alipay: Any, keys: Keys, hook_style: str) -> None:
    """The same app driven by httpx.AsyncClient + ASGITransport, several copies in flight at once."""
    alipay = make_alipay(orders={"A1": "9.90"})
    calls: list[Any] = []
    alipay.on_paid(counting_hook(hook_style, calls))
    site = Site(alipay)
    app = alipay.asgi(build_fastapi(site))
    body = signed_body(notify_fields("A1"), keys.alipay)

    async def scenario() -> tuple[list[httpx.Response], str, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.example") as client:
            copies = await asyncio.gather(*[
                client.post(NOTIFY, content=body, headers={"content-type": FORM}) for _ in range(8)])
            pay = await client.get("/pay")
            back = await client.get(RETURN + "?" + return_query(keys, "verified"))
        return list(copies), pay.text, back.text

    copies, pay_url, back = asyncio.run(scenario())
    answers = {(r.status_code, r.content) for r in copies}
    assert (200, b"success") in answers and answers <= {(200, b"success"), (503, b"fail")}
    assert len(calls) == 1 and site.inner_saw_notify == []
    assert pay_params(pay_url)["notify_url"] == "https://shop.example/alipay/notify"
    assert back == RETURN_CASES["verified"]


@pytest.mark.parametrize("mounting", ["add_middleware", "alipay.asgi"])
def test_fastapi_lifespan_passes_through(make_alipay: Any, mounting: str) -> None:
    alipay = make_alipay()
    lifecycle: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        lifecycle.append("startup")
        yield {"greeting": "set at startup"}
        lifecycle.append("shutdown")

    app = build_fastapi(Site(alipay), lifespan=lifespan)

    @app.get("/greeting", response_class=PlainTextResponse)
    def greeting(request: Request) -> str:
        return str(request.state.greeting)

    if mounting == "add_middleware":
        app.add_middleware(AlipayASGIMiddleware, alipay=alipay)
        served: Any = app
    else:
        served = alipay.asgi(app)
    with TestClient(served) as client:
        assert lifecycle == ["startup"]
        assert client.get("/greeting").text == "set at startup"  # lifespan state reaches requests
    assert lifecycle == ["startup", "shutdown"]


def test_starlette_websocket_passes_through(make_alipay: Any) -> None:
    alipay = make_alipay()
    app = build_starlette(Site(alipay), [Middleware(AlipayASGIMiddleware, alipay=alipay)])
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "echo hello alipay-in-scope=False"


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_plain_asgi_non_http_scopes_reach_the_inner_app_untouched(make_alipay: Any, scope_type: str) -> None:
    """The very scope, receive and send objects go through: nothing is copied, added or consumed."""
    seen: list[tuple[Any, Any, Any, dict[str, Any]]] = []
    exchanged: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, dict(scope)))
        while True:
            message = await receive()
            exchanged.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
            elif message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"].upper()})
            elif message["type"] == "websocket.disconnect":
                return

    wrapped = make_alipay().asgi(inner)
    if scope_type == "lifespan":
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        expected_out = [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    else:
        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": NOTIFY,
                 "raw_path": NOTIFY.encode(), "root_path": "", "query_string": b"", "headers": [],
                 "client": ("127.0.0.1", 50000), "server": ("shop.example", 80), "subprotocols": []}
        incoming = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"},
                    {"type": "websocket.disconnect", "code": 1000}]
        expected_out = [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "HI"}]
    before = dict(scope)
    incoming_types = [m["type"] for m in incoming]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(wrapped(scope, receive, send))
    [(got_scope, got_receive, got_send, snapshot)] = seen
    assert got_scope is scope and got_receive is receive and got_send is send
    assert snapshot == before and scope == before  # no "alipay" key, nothing changed
    assert exchanged == incoming_types and sent == expected_out


def test_plain_wsgi_unrelated_path_returns_the_very_same_iterable(make_alipay: Any) -> None:
    """The inner app's iterable is returned as is, so the server still calls its close()."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"streamed "
            yield b"body"

        def close(self) -> None:
            closed.append(True)

    returned: list[Any] = []

    def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        returned.append(Body())
        return returned[-1]

    wrapped = make_alipay().wsgi(inner)
    client = WerkzeugClient(wrapped)
    response = client.get("/elsewhere")
    assert response.data == b"streamed body"
    response.close()  # what a server does when it is done with the body
    assert closed == [True]

    environ = EnvironBuilder(path="/elsewhere").get_environ()
    result = wrapped(environ, lambda status, headers, exc_info=None: None)
    assert result is returned[-1]
    assert isinstance(environ["alipay"], OpenApiHelper)  # the helper is all the middleware added


def test_django_helper_is_the_same_object_in_meta_and_environ(make_alipay: Any, open_site: Any) -> None:
    site = open_site("django", make_alipay())
    response = site.get("/pay")  # django_pay asserts META["alipay"] is environ["alipay"]
    assert response.status == 200 and response.text.startswith(PRODUCTION_GATEWAY)


# == bodies without Content-Length, the way servers hand over chunked requests ========================================

def post_chunked(alipay: Alipay, front: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` to the notify path with no Content-Length, as a server passes a chunked request on.

    WSGI: what gunicorn (and werkzeug's dev server) build for ``Transfer-Encoding: chunked``: no
    CONTENT_LENGTH, and ``wsgi.input_terminated`` set because the server ends the stream itself.
    ASGI: the body arrives in several ``http.request`` messages, without a content-length header.
    """
    if front == "asgi":
        client = ASGIClient(alipay.asgi(plain_asgi_app(Site(alipay))))
        try:
            response = client.request("POST", NOTIFY, chunks=[body[:1000], body[1000:]])
        finally:
            client.close()
        return response.status, response.body
    builder = EnvironBuilder(path=NOTIFY, method="POST", headers={"Host": "shop.example",
                                                                  "Transfer-Encoding": "chunked"},
                             content_type=FORM)
    environ = builder.get_environ()
    builder.close()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    iterable, status, _ = run_wsgi_app(alipay.wsgi(plain_wsgi_app(Site(alipay))), environ, buffered=True)
    return int(status.split()[0]), b"".join(iterable)


@pytest.mark.parametrize("front", ["wsgi", "asgi"])
def test_chunked_notify_within_max_body_is_processed(front: str, make_alipay: Any, keys: Keys) -> None:
    alipay = make_alipay(orders={"A1": "9.90"})
    calls: list[Any] = []
    alipay.on_paid(calls.append)
    assert post_chunked(alipay, front, signed_body(notify_fields("A1"), keys.alipay)) == (200, b"success")
    assert len(calls) == 1


# Regression: the WSGI front used to read get_input_stream(environ, max_content_length=max_body), which for
# a server-terminated stream (wsgi.input_terminated: gunicorn, chunked requests) hands out at most max_body
# bytes, so an over-long body was cut at max_body and the prefix processed as the whole notification (400,
# or even 200 success and the hook when the prefix was a complete signed message) instead of 413.
OVERSIZED = {
    # name: body larger than max_body (64 KiB)
    "junk": lambda keys: b"a=" + b"x" * (64 * 1024),
    # a complete signed notification followed by empty fields: its first 64 KiB alone would verify
    "signed_then_padding": lambda keys: signed_body(notify_fields("A1"), keys.alipay) + b"&" * (64 * 1024),
}


@pytest.mark.parametrize("kind", list(OVERSIZED))
@pytest.mark.parametrize("front", ["wsgi", "asgi"])
def test_chunked_notify_over_max_body_is_413_on_both_fronts(front: str, kind: str, make_alipay: Any,
                                                            keys: Keys) -> None:
    alipay = make_alipay(orders={"A1": "9.90"})
    calls: list[Any] = []
    alipay.on_paid(calls.append)
    assert post_chunked(alipay, front, OVERSIZED[kind](keys)) == (413, b"fail")
    assert calls == [] and alipay.ledger.events() == []
