"""Shared fixtures: fresh keys, signed notifications, and one client shape over both fronts.

``front`` is parametrised over ``wsgi`` and ``asgi``: a test written against it runs through the real
WSGI callable (a werkzeug-built environ, the way a server calls it) and through the real ASGI callable
(scope/receive/send on an event loop in a background thread, so several threads can hit it at once).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import http.server
import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
from Crypto.Hash import SHA1, SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from werkzeug.test import EnvironBuilder, run_wsgi_app

from alipay_middleware import Alipay, OpenApiConfig
from alipay_middleware.simulator import LegacyMerchant, Merchant, Simulator
from fake_gateway import FakeGateway

VECTORS = Path(__file__).parent / "vectors"
APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"


@dataclass(frozen=True)
class Keys:
    app: RSA.RsaKey  # the shop's key pair (signs requests)
    alipay: RSA.RsaKey  # stands in for Alipay's key pair (signs callbacks)

    @property
    def app_private_pem(self) -> str:
        return self.app.export_key().decode()

    @property
    def alipay_public_pem(self) -> str:
        return self.alipay.public_key().export_key().decode()


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(app=RSA.generate(2048), alipay=RSA.generate(2048))


def make_config(keys: Keys, **overrides: Any) -> OpenApiConfig:
    settings: dict[str, Any] = dict(
        app_id=APP_ID,
        app_private_key=keys.app_private_pem,
        alipay_public_key=keys.alipay_public_pem,
        seller_id=SELLER_ID,
    )
    settings.update(overrides)
    return OpenApiConfig(**settings)


def reference_sign_string(fields: Mapping[str, str | None], exclude: tuple[str, ...] = ("sign",)) -> str:
    """The sign string as ``shared/reference/alipay-protocol.md`` states it, written apart from the library's
    ``sign_string`` so that the messages the tests sign do not mirror a bug there: every parameter not in
    ``exclude``, empty values dropped, sorted by key in ASCII (byte) order, raw ``k=v`` joined with ``&``
    (never URL-encoded). ``test_vectors.py`` checks that the two agree on the known vectors."""
    kept = []
    for name, value in fields.items():
        if name in exclude or value is None or value == "":
            continue
        kept.append((name.encode("utf-8"), name + "=" + value))
    kept.sort()
    return "&".join(pair for _, pair in kept)


def sign_fields(fields: Mapping[str, str], key: RSA.RsaKey, *, sign_type: str = "RSA2",
                rule: str = "V1", charset: str = "utf-8") -> str:
    exclude = ("sign", "sign_type") if rule == "V1" else ("sign",)
    digest = (SHA256 if sign_type == "RSA2" else SHA1).new(reference_sign_string(fields, exclude).encode(charset))
    return base64.b64encode(pkcs1_15.new(key).sign(digest)).decode()


def encode_form(fields: Mapping[str, str], charset: str = "utf-8") -> bytes:
    return "&".join(f"{quote_plus(k)}={quote_plus(v, encoding=charset)}" for k, v in fields.items()).encode("ascii")


_trade_numbers = itertools.count(1)


def notify_fields(out_trade_no: str = "T1", total_amount: str = "9.90", trade_status: str = "TRADE_SUCCESS",
                  **overrides: str) -> dict[str, str]:
    n = next(_trade_numbers)
    fields = {
        "notify_time": "2024-01-01 12:00:07",
        "notify_type": "trade_status_sync",
        "notify_id": f"2024010100222120006{n:015d}",
        "app_id": APP_ID,
        "auth_app_id": APP_ID,
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "trade_no": f"2024010122001400{n:012d}",
        "out_trade_no": out_trade_no,
        "buyer_id": "2088102000000009",
        "seller_id": SELLER_ID,
        "trade_status": trade_status,
        "total_amount": total_amount,
        "receipt_amount": total_amount,
        "gmt_create": "2024-01-01 12:00:05",
        "gmt_payment": "2024-01-01 12:00:06",
        "subject": "Tea",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def signed_body(fields: Mapping[str, str], key: RSA.RsaKey, *, sign_type: str = "RSA2", rule: str = "V1",
                charset: str = "utf-8") -> bytes:
    signed = dict(fields)
    signed["sign"] = sign_fields(fields, key, sign_type=sign_type, rule=rule, charset=charset)
    return encode_form(signed, charset)


# -- one client over both fronts ------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


FORM = "application/x-www-form-urlencoded; charset=utf-8"


class WSGIClient:
    kind = "wsgi"

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, body: bytes = b"", *, query: str = "",
                headers: Mapping[str, str] | None = None, content_type: str | None = FORM) -> Response:
        all_headers = {"Host": "shop.example"}
        all_headers.update(headers or {})
        builder = EnvironBuilder(path=path, method=method, query_string=query or None, data=body,
                                 headers=all_headers, content_type=content_type if body else None)
        environ = builder.get_environ()
        builder.close()
        iterable, status, response_headers = run_wsgi_app(self.app, environ, buffered=True)
        data = b"".join(iterable)
        return Response(int(status.split()[0]), {k.lower(): v for k, v in response_headers.items()}, data)

    def close(self) -> None:
        pass


class ASGIClient:
    kind = "asgi"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _call(self, scope: dict[str, Any], chunks: list[bytes]) -> Response:
        pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                   for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
        return Response(start["status"], headers, body)

    def request(self, method: str, path: str, body: bytes = b"", *, query: str = "",
                headers: Mapping[str, str] | None = None, content_type: str | None = FORM,
                chunks: list[bytes] | None = None, root_path: str = "") -> Response:
        return self.submit(method, path, body, query=query, headers=headers, content_type=content_type,
                           chunks=chunks, root_path=root_path).result(timeout=60)

    def submit(self, method: str, path: str, body: bytes = b"", *, query: str = "",
               headers: Mapping[str, str] | None = None, content_type: str | None = FORM,
               chunks: list[bytes] | None = None, root_path: str = "") -> concurrent.futures.Future[Response]:
        """The request sent, not waited for: its answer's future (``cancel()`` it to cancel the request's task)."""
        all_headers = {"host": "shop.example"}
        if body or chunks:
            if content_type:
                all_headers["content-type"] = content_type
            if chunks is None:
                all_headers["content-length"] = str(len(body))
        all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": root_path + path, "raw_path": (root_path + path).encode(),
            "root_path": root_path,
            "query_string": query.encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("shop.example", 80),
        }
        return asyncio.run_coroutine_threadsafe(self._call(scope, chunks if chunks is not None else [body]),
                                                self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


# -- minimal inner apps that show what the middleware handed them -----------------------------------------

def inner_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    result = environ.get("alipay.return", "absent")
    body = f"inner path={environ['PATH_INFO']} return={result!r} helper={type(environ.get('alipay')).__name__}"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


async def inner_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    result = scope.get("alipay.return", "absent")
    body = f"inner path={scope['path']} return={result!r} helper={type(scope.get('alipay')).__name__}"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.fixture(params=["wsgi", "asgi"])
def front_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mount(front_kind: str) -> Iterator[Callable[[Alipay], WSGIClient | ASGIClient]]:
    """``mount(alipay)`` -> a client for ``alipay`` wrapped around a minimal app on this front."""
    clients: list[Any] = []

    def _mount(alipay: Alipay, inner: Any = None) -> WSGIClient | ASGIClient:
        client: WSGIClient | ASGIClient
        if front_kind == "wsgi":
            client = WSGIClient(alipay.wsgi(inner or inner_wsgi))
        else:
            client = ASGIClient(alipay.asgi(inner or inner_asgi))
        clients.append(client)
        return client

    yield _mount
    for client in clients:
        client.close()


class Recorder:
    """Hooks that remember their calls; optionally failing first or blocking until released."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()
        self.fail_next = 0

    def __call__(self, event: Any) -> None:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("hook failed on purpose")
            self.calls.append(event)


# -- ledgers: SQLite by default; a module overrides ``ledger_backend`` to run against both -----------------

#: The Hosts test clients send: the clients above, and Starlette's (and Django's) TestClient. The factories
#: below allow them, so that pay URLs built in requests get callback URLs derived from them.
TEST_HOSTS = ["shop.example", "testserver"]

POSTGRES = os.environ.get("ALIPAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def on_a_terminal(start: Callable[[int], Any]) -> tuple[Any, bytes]:
    """Run ``start(fd)`` (a process started with ``stderr=fd``) with stderr on a pseudo-terminal: the
    process, and every byte it wrote to that terminal until it closed its end."""
    import pty

    primary, secondary = pty.openpty()
    try:
        child = start(secondary)
        os.close(secondary)
        terminal = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(primary)
    return child, terminal


def postgres_unavailable(reason: str) -> None:
    """Skip with the reason, or fail when CI is set (CI has a PostgreSQL: its tests must run there)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the PostgreSQL tests must run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``ALIPAY_TEST_POSTGRES`` (default the machine's local server), checked once per session."""
    try:
        import psycopg
    except ImportError:
        postgres_unavailable('psycopg 3 is not installed: pip install -e ".[test]" (or "psycopg[binary]")')
    try:
        with psycopg.connect(POSTGRES, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        host = POSTGRES.rsplit("@", 1)[-1]  # never the password
        postgres_unavailable(f"no PostgreSQL at {host} (set ALIPAY_TEST_POSTGRES): {' '.join(str(exc).split())}")
    return POSTGRES


@pytest.fixture
def ledger_backend() -> str:
    return "sqlite"


@pytest.fixture
def new_ledger(ledger_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """``new_ledger()`` -> a fresh, empty ledger of this test's backend (its table dropped afterwards)."""
    tables: list[str] = []
    counter = itertools.count()

    def _new() -> Any:
        if ledger_backend == "sqlite":
            return f"sqlite:///{tmp_path / f'ledger{next(counter)}.sqlite3'}"
        from alipay_middleware.ledger.postgres import PostgresLedger

        url = request.getfixturevalue("postgres_url")
        tables.append(f"alipay_test_{uuid.uuid4().hex[:12]}")
        return PostgresLedger(url, table=tables[-1])

    yield _new
    for table in tables:
        drop_postgres_table(table)


def drop_postgres_table(table: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture
def make_alipay(keys: Keys, new_ledger: Callable[[], Any]) -> Iterator[Callable[..., Alipay]]:
    made: list[Alipay] = []

    def _make(ledger: str | None = None, orders: Mapping[str, str] | None = None, **kwargs: Any) -> Alipay:
        config_overrides = kwargs.pop("config", {})
        kwargs.setdefault("allowed_hosts", TEST_HOSTS)
        alipay = Alipay(make_config(keys, **config_overrides), ledger=ledger or new_ledger(), **kwargs)
        if orders is not None:
            table = {k: Decimal(v) for k, v in orders.items()}
            alipay.order_amount(table.get)
        made.append(alipay)
        return alipay

    yield _make
    for alipay in made:
        alipay.close()


# -- the legacy service ----------------------------------------------------------------------------------

PARTNER = "2088000000000002"
MD5_KEY = "k3xq9z0m1n2b3v4c5x6z7l8k9j0h1g2f"


def md5_sign(fields: Mapping[str, str], key: str = MD5_KEY, charset: str = "utf-8") -> str:
    return hashlib.md5(reference_sign_string(fields, ("sign", "sign_type")).encode(charset) + key.encode()).hexdigest()


def legacy_rsa_sign(fields: Mapping[str, str], key: RSA.RsaKey, charset: str = "utf-8") -> str:
    digest = SHA1.new(reference_sign_string(fields, ("sign", "sign_type")).encode(charset))
    return base64.b64encode(pkcs1_15.new(key).sign(digest)).decode()


def legacy_fields(out_trade_no: str = "L1", total_fee: str = "9.90", trade_status: str = "TRADE_SUCCESS",
                  **overrides: str | None) -> dict[str, str]:
    """A create_direct_pay_by_user notification's fields (unsigned), with a fresh hex notify_id."""
    n = next(_trade_numbers)
    fields: dict[str, str | None] = {
        "notify_time": "2024-01-01 12:00:07",
        "notify_type": "trade_status_sync",
        "notify_id": f"6a40ac71fcf17d99b5274b0c6c{n:010x}",
        "sign_type": "MD5",
        "out_trade_no": out_trade_no,
        "subject": "Tea",
        "payment_type": "1",
        "trade_no": f"2024010121001004{n:012d}",
        "trade_status": trade_status,
        "gmt_create": "2024-01-01 12:00:05",
        "gmt_payment": "2024-01-01 12:00:06",
        "seller_email": "shop@example.com",
        "seller_id": PARTNER,
        "buyer_email": "buyer@example.com",
        "buyer_id": "2088102000000009",
        "price": total_fee,
        "total_fee": total_fee,
        "quantity": "1",
        "discount": "0.00",
        "is_total_fee_adjust": "N",
        "use_coupon": "N",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def legacy_body(fields: Mapping[str, str], *, key: str | RSA.RsaKey = MD5_KEY, charset: str = "utf-8") -> bytes:
    """Sign (MD5 with a str key, RSA with an RSA key) and form-encode in ``charset``."""
    signed = dict(fields)
    if isinstance(key, str):
        signed["sign"] = md5_sign(fields, key, charset)
    else:
        signed["sign_type"] = "RSA"
        signed["sign"] = legacy_rsa_sign(signed, key, charset)
    return encode_form(signed, charset)


class GatewayStub(FakeGateway[Any]):
    """A loopback stand-in for the legacy gateway's ``notify_verify``.

    Like Alipay, it answers ``true`` only for ids it issued (``issue``), ``false`` otherwise; ``set``
    makes one id answer something else: ``"invalid"``, ``"garbage"``, ``"http500"``, ``"hang"``
    (no answer until the test ends) or ``"hold"`` (the usual answer, once the test calls ``release()``;
    ``wait_held(n)`` waits until ``n`` requests have been held). ``requests`` holds every raw request
    target, as sent; ``count(notify_id)`` counts the requests for one id. The server is the fake gateways'
    loopback base (``fake_gateway.py``).
    """

    accepts = "GET"

    def __init__(self, partner: str = PARTNER) -> None:
        self.partner = partner
        self.issued: set[str] = set()
        self.modes: dict[str, str] = {}
        self.requests: list[str] = []
        self.released = threading.Event()
        self.held = 0
        self._held_changed = threading.Condition()
        super().__init__()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.requests.append(handler.path)
        query = parse_qs(urlsplit(handler.path).query, keep_blank_values=True)
        notify_id = query.get("notify_id", [""])[0]
        ok = query.get("service") == ["notify_verify"] and query.get("partner") == [self.partner]
        mode = self.modes.get(notify_id, "true" if ok and notify_id in self.issued else "false")
        if mode == "hold":
            with self._held_changed:
                self.held += 1
                self._held_changed.notify_all()
            self.released.wait(30)
            mode = "true" if ok and notify_id in self.issued else "false"
        if mode == "hang":
            self.released.wait(30)
            return
        if mode == "http500":
            handler.send_error(500)
            return
        self._send(handler, b"<html>busy</html>" if mode == "garbage" else mode.encode(), "text/plain")

    def issue(self, notify_id: str) -> str:
        self.issued.add(notify_id)
        return notify_id

    def set(self, notify_id: str, mode: str) -> None:
        self.modes[notify_id] = mode

    def count(self, notify_id: str) -> int:
        return sum(1 for target in list(self.requests)
                   if parse_qs(urlsplit(target).query).get("notify_id") == [notify_id])

    def wait_held(self, n: int, timeout: float = 20.0) -> bool:
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self.held >= n, timeout)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        super().close()


@pytest.fixture
def gateway_stub() -> Iterator[GatewayStub]:
    stub = GatewayStub()
    yield stub
    stub.close()


@pytest.fixture
def make_legacy(gateway_stub: GatewayStub, new_ledger: Callable[[], Any]) -> Iterator[Callable[..., Alipay]]:
    """``make_legacy(orders={...}, **config)``: an Alipay on a LegacyConfig whose gateway is the stub."""
    from alipay_middleware import LegacyConfig

    made: list[Alipay] = []

    def _make(orders: Mapping[str, str] | None = None, alipay_kwargs: Mapping[str, Any] | None = None,
              **config: Any) -> Alipay:
        settings: dict[str, Any] = {"partner": PARTNER, "key": MD5_KEY, "gateway": gateway_stub.url,
                                    "verify_timeout": 1.0}
        settings.update(config)
        alipay = Alipay(LegacyConfig(**settings), ledger=new_ledger(),
                        **{"allowed_hosts": TEST_HOSTS, **(alipay_kwargs or {})})
        if orders is not None:
            table = {k: Decimal(v) for k, v in orders.items()}
            alipay.order_amount(table.get)
        made.append(alipay)
        return alipay

    yield _make
    for alipay in made:
        alipay.close()


# -- the simulator ---------------------------------------------------------------------------------------------------

_RSA_VECTORS = {v["id"]: v for v in json.loads((VECTORS / "legacy-rsa-vectors.json").read_text())["vectors"]}
#: Two 1024-bit keys from the legacy vectors: the RSA merchant's, and the simulator's stand-in legacy key.
LEGACY_MERCHANT_KEY = RSA.import_key(_RSA_VECTORS["chloerei-rsa-sha1"]["private_key_pem"])
LEGACY_ALIPAY_KEY = _RSA_VECTORS["omnipay-rsa-sha1"]["private_key_pem"]
RSA_PARTNER = "2088000000000003"


def make_sim(keys: Keys, **kwargs: Any) -> Simulator:
    """A simulator that knows the test app (``keys``), the MD5 partner and the RSA partner."""
    settings: dict[str, Any] = dict(
        merchants=[Merchant(app_id=APP_ID, public_key=keys.app.public_key().export_key().decode(),
                            seller_id=SELLER_ID, name="Tea Shop")],
        legacy_merchants=[LegacyMerchant(partner=PARTNER, md5_key=MD5_KEY, name="Old Shop"),
                          LegacyMerchant(partner=RSA_PARTNER, rsa_public_key=LEGACY_MERCHANT_KEY.public_key()
                                         .export_key().decode())],
        alipay_private_key=keys.alipay.export_key().decode(),
        legacy_private_key=LEGACY_ALIPAY_KEY,
        time_scale=0.0001,
    )
    settings.update(kwargs)
    return Simulator(**settings)


@pytest.fixture
def state_dir(keys: Keys, tmp_path: Path) -> Path:
    """A fresh state directory for ``examples/demo.py`` holding the session's keys (the demo would
    otherwise generate two RSA keys, which takes a moment)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "demo-app-private.pem").write_text(keys.app_private_pem)
    (state / "demo-alipay-private.pem").write_text(keys.alipay.export_key().decode())
    return state
