"""One policy for every call to Alipay (``alipay_middleware/outbound.py``), on real loopback servers.

- ``proxy=`` on both configs: the Open Platform client, the legacy client and the legacy ``notify_verify``
  origin check go through a real loopback HTTP ``CONNECT`` proxy (a small threaded server below that records
  the CONNECT line and ``Proxy-Authorization``, then pipes bytes) to a real loopback TLS server whose
  certificate comes from a test CA (``certfactory``), trusted through ``SSL_CERT_FILE``; the answers are
  verified, and the proxy's password is in no log record, exception text or repr;
- ``http_proxy``/``https_proxy`` in the environment are never used;
- a redirect from the gateway is an error, never followed: its target sees no request;
- a gateway (or proxy) that never answers is bounded by the timeout (outcome asserted, not time);
- the ``proxy`` setting is checked at construction, without ever echoing the password.
"""

from __future__ import annotations

import base64
import http.server
import logging
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import RSA

from alipay_middleware import AlipayClient, GatewayUnavailable, LegacyClient, LegacyConfig
from alipay_middleware.gateway.transport import Transport, notify_verify, parse_proxy
from certfactory import dn, issue
from conftest import APP_ID, MD5_KEY, PARTNER, GatewayStub, Keys, Recorder, legacy_body, legacy_fields, make_config
from legacy_gateway import LegacyGateway
from openapi_gateway import OpenApiGateway

NOTIFY = "/alipay/notify"
TIMEOUT = 1.0
USER = "shop"
PASSWORD = "s3cr:et@pw"  # a colon and an at sign: percent-encoded in the URL, decoded for the header
PASSWORD_IN_URL = "s3cr%3Aet%40pw"
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, PASSWORD_IN_URL, TOKEN)


# -- a test CA, a TLS server, a CONNECT proxy --------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate: what SSL_CERT_FILE points at
    cert: Path  # the server's certificate (127.0.0.1 and localhost)
    key: Path


def _write_pki(directory: Path, name: str) -> Pki:
    ca_key, server_key = RSA.generate(2048), RSA.generate(2048)
    ca = issue(dn(("C", "CN"), ("O", "Test"), ("CN", f"{name} CA")), 1, ca_key, ca=True)
    server = issue(dn(("CN", "127.0.0.1")), 2, server_key, issuer=ca, san=("127.0.0.1", "localhost"))
    pki = Pki(directory / f"{name}-ca.pem", directory / f"{name}-server.pem", directory / f"{name}-server.key")
    pki.ca.write_text(ca.pem)
    pki.cert.write_text(server.pem)
    pki.key.write_bytes(server_key.export_key())
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _write_pki(tmp_path_factory.mktemp("pki"), "test")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second CA, never trusted: a server whose certificate it issued must be refused."""
    return _write_pki(tmp_path_factory.mktemp("other-pki"), "other")


@pytest.fixture
def trusted(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Pki:
    """The test CA trusted the way the system's CAs are: OpenSSL reads SSL_CERT_FILE when a client's
    default TLS context is made (no TLS setting in the package)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    return pki


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes, then close both."""
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            events = selector.select(timeout=30)
            if not events:
                return
            for key, _ in events:
                source, target = key.fileobj, key.data
                assert isinstance(source, socket.socket)
                data = source.recv(65536)
                if not data:
                    return
                target.sendall(data)
                while isinstance(source, ssl.SSLSocket) and source.pending():
                    target.sendall(source.recv(65536))
    except OSError:
        return
    finally:
        selector.close()
        a.close()
        b.close()


class _Listener:
    """A loopback TCP listener that runs ``handle(connection)`` in a thread per connection."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing.set()
        self.sock.close()
        for conn in self.open:
            conn.close()


class TlsFront(_Listener):
    """A real TLS server on loopback, certificate from ``pki``, in front of a plain HTTP stub."""

    def __init__(self, backend_url: str, pki: Pki) -> None:
        super().__init__()
        self.backend = ("127.0.0.1", int(backend_url.split(":")[2].split("/")[0]))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.cert, pki.key)
        self.handshakes = 0
        self.url = f"https://127.0.0.1:{self.port}/gateway.do"

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused our certificate: expected in one test
            conn.close()
            return
        self.handshakes += 1
        tls.settimeout(None)
        self.open.append(tls)
        _pipe(tls, socket.create_connection(self.backend))


class ConnectProxy(_Listener):
    """An HTTP proxy that only tunnels: records each request line and its headers, answers 407 when the
    credentials are not ``expected`` (when set), else connects to the target and pipes bytes.
    ``hang=True``: reads the CONNECT, then never answers."""

    def __init__(self, expected: str | None = None, hang: bool = False) -> None:
        super().__init__()
        self.expected = expected
        self.hang = hang
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.url = f"http://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as reader:
            line = reader.readline(8192).decode("latin-1").rstrip("\r\n")
            headers: dict[str, str] = {}
            while True:
                header = reader.readline(8192).decode("latin-1").rstrip("\r\n")
                if not header:
                    break
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
        self.seen.append((line, headers))
        if self.hang:
            self.closing.wait(30)
            conn.close()
            return
        method, target, _ = (line.split(" ") + ["", "", ""])[:3]
        if method != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        if self.expected is not None and headers.get("proxy-authorization") != self.expected:
            conn.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n'
                         b"Content-Length: 0\r\n\r\n")
            conn.close()
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        upstream.settimeout(None)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _pipe(conn, upstream)


class RecordingServer:
    """A plain HTTP server that answers ``body`` to everything and remembers each request target."""

    def __init__(self, host: str = "127.0.0.1", body: bytes = b"true", status: int = 200,
                 location: str | None = None) -> None:
        recorder = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                recorder.requests.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # unread bytes would reset it
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location + self.path)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.origin = f"http://{host}:{self.server.server_address[1]}"
        self.url = self.origin + "/gateway.do"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Any], Any]]:
    """``servers(x)`` registers a server to close at the end of the test and returns it."""
    made: list[Any] = []

    def _add(server: Any) -> Any:
        made.append(server)
        return server

    yield _add
    for server in reversed(made):
        server.close()


def proxy_url(proxy: ConnectProxy, password: str = PASSWORD_IN_URL) -> str:
    return f"http://{USER}:{password}@127.0.0.1:{proxy.port}"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"the proxy credentials leaked: {text[:200]!r}"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records say: messages with their arguments, and tracebacks."""
    formatter = logging.Formatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def assert_tunnelled(proxy: ConnectProxy, front: TlsFront, count: int = 1) -> None:
    assert len(proxy.seen) == count
    for line, headers in proxy.seen:
        assert line.split(" ")[:2] == ["CONNECT", f"127.0.0.1:{front.port}"]
        assert headers["proxy-authorization"] == f"Basic {TOKEN}"
    assert front.handshakes == count


# -- the Open Platform client through the proxy --------------------------------------------------------------


@pytest.fixture
def openapi_stub(keys: Keys) -> Iterator[OpenApiGateway]:
    gateway = OpenApiGateway(keys.app.public_key(), keys.alipay, APP_ID)
    yield gateway
    gateway.close()
    assert gateway.problems == []


def test_the_open_platform_client_goes_through_the_proxy_to_a_verified_tls_gateway(
        keys, openapi_stub, trusted, servers, caplog):
    caplog.set_level(logging.DEBUG)
    front = servers(TlsFront(openapi_stub.url, trusted))
    proxy = servers(ConnectProxy(expected=f"Basic {TOKEN}"))
    config = make_config(keys, gateway=front.url, proxy=proxy_url(proxy))
    openapi_stub.add_trade("P1", "TRADE_SUCCESS", "9.90")
    client = AlipayClient(config, timeout=TIMEOUT, retries=0)
    trade = client.query(out_trade_no="P1")
    assert trade.paid and trade.total_amount == Decimal("9.90")  # verified against Alipay's key
    assert_tunnelled(proxy, front)
    assert openapi_stub.count("alipay.trade.query") == 1
    assert "alipay call method=alipay.trade.query out_trade_no=P1 outcome=10000" in caplog.text
    assert_no_secret(log_text(caplog), repr(config), repr(client), repr(client._transport))


def test_the_legacy_client_goes_through_the_proxy(trusted, servers, caplog):
    caplog.set_level(logging.DEBUG)
    stub = servers(LegacyGateway())
    front = servers(TlsFront(stub.url, trusted))
    proxy = servers(ConnectProxy(expected=f"Basic {TOKEN}"))
    config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=front.url, proxy=proxy_url(proxy))
    stub.add_trade("L7", "TRADE_SUCCESS", "20.00")
    trade = LegacyClient(config, timeout=TIMEOUT, retries=0).query(out_trade_no="L7")
    assert trade.paid and trade.total_amount == Decimal("20.00")
    assert_tunnelled(proxy, front)
    assert stub.problems == []
    assert_no_secret(log_text(caplog), repr(config))


# -- the legacy origin check through the proxy, both fronts --------------------------------------------------


@pytest.fixture
def tunnel(trusted: Pki, gateway_stub: GatewayStub, servers: Callable[[Any], Any]) -> tuple[TlsFront, ConnectProxy]:
    """The notify_verify stub behind TLS, behind an authenticating proxy."""
    return servers(TlsFront(gateway_stub.url, trusted)), servers(ConnectProxy(expected=f"Basic {TOKEN}"))


def test_notify_verify_goes_through_the_proxy(make_legacy, mount, gateway_stub, tunnel, caplog):
    caplog.set_level(logging.DEBUG)
    front, proxy = tunnel
    alipay = make_legacy(orders={"L1": "9.90"}, gateway=front.url, proxy=proxy_url(proxy))
    paid = Recorder()
    alipay.on_paid(paid)
    fields = legacy_fields("L1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (200, b"success")
    assert len(paid.calls) == 1
    assert_tunnelled(proxy, front)
    assert gateway_stub.requests == [
        f"/gateway.do?service=notify_verify&partner={PARTNER}&notify_id={fields['notify_id']}"]
    assert "alipay call method=notify_verify outcome=answered attempts=1" in caplog.text
    assert_no_secret(log_text(caplog), repr(alipay.config), repr(alipay))


def test_a_refused_password_is_unavailable_and_never_echoed(make_legacy, mount, keys, gateway_stub, tunnel, caplog):
    caplog.set_level(logging.DEBUG)
    front, proxy = tunnel
    wrong = PASSWORD_IN_URL + "x"  # still contains every secret, so any echo of it is caught
    alipay = make_legacy(orders={"L1": "9.90"}, gateway=front.url, proxy=proxy_url(proxy, wrong))
    fields = legacy_fields("L1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (503, b"fail")
    assert "reason=origin_unreachable" in caplog.text and "407" in caplog.text
    assert gateway_stub.requests == [] and front.handshakes == 0
    config = make_config(keys, gateway=front.url, proxy=proxy_url(proxy, wrong))
    with pytest.raises(GatewayUnavailable) as caught:
        AlipayClient(config, timeout=TIMEOUT, retries=1).query(out_trade_no="P1")
    assert "(nothing was sent)" in str(caught.value) and f"via proxy 127.0.0.1:{proxy.port}" in str(caught.value)
    assert_no_secret(log_text(caplog), str(caught.value), repr(caught.value))


def test_an_untrusted_certificate_inside_the_tunnel_is_refused(keys, openapi_stub, other_pki, trusted, servers,
                                                               caplog):
    """TLS is checked end to end with the gateway, through the tunnel: a certificate from a CA the system
    does not trust is refused, and nothing is sent."""
    caplog.set_level(logging.DEBUG)
    front = servers(TlsFront(openapi_stub.url, other_pki))
    proxy = servers(ConnectProxy(expected=f"Basic {TOKEN}"))
    client = AlipayClient(make_config(keys, gateway=front.url, proxy=proxy_url(proxy)), timeout=TIMEOUT, retries=0)
    with pytest.raises(GatewayUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client.query(out_trade_no="P1")
    assert len(proxy.seen) == 1 and openapi_stub.count() == 0
    assert_no_secret(log_text(caplog))


def test_a_proxy_that_never_answers_connect_is_bounded_by_the_timeout(make_legacy, mount, gateway_stub, servers):
    proxy = servers(ConnectProxy(hang=True))
    alipay = make_legacy(orders={"L1": "9.90"}, proxy=proxy.url, verify_timeout=0.3)
    fields = legacy_fields("L1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (503, b"fail")
    assert len(proxy.seen) == 1 and gateway_stub.requests == []


def test_a_hanging_notify_verify_through_the_proxy_is_bounded_by_the_timeout(make_legacy, mount, gateway_stub,
                                                                              tunnel, caplog):
    front, proxy = tunnel
    alipay = make_legacy(orders={"L1": "9.90"}, gateway=front.url, proxy=proxy_url(proxy), verify_timeout=0.3)
    paid = Recorder()
    alipay.on_paid(paid)
    fields = legacy_fields("L1", "9.90")
    gateway_stub.set(fields["notify_id"], "hang")  # reads the request, never answers
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (503, b"fail")
    assert "reason=origin_unreachable" in caplog.text
    assert len(gateway_stub.requests) == 1 and paid.calls == []
    assert alipay.ledger.get(f"paid:{PARTNER}:L1") is None


# -- environment proxies are never used ----------------------------------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def environment_proxy(monkeypatch: pytest.MonkeyPatch, servers: Callable[[Any], Any]) -> ConnectProxy:
    """Every proxy variable names a recording proxy that tunnels nothing (405 to a plain request, 407 to a
    CONNECT): any use of it fails the call, and shows in ``seen``."""
    proxy = servers(ConnectProxy(expected="never"))
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return proxy


def test_environment_proxies_are_not_used_by_the_origin_check(make_legacy, mount, gateway_stub, environment_proxy):
    alipay = make_legacy(orders={"L1": "9.90"})
    fields = legacy_fields("L1", "9.90")
    gateway_stub.issue(fields["notify_id"])
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (200, b"success")
    assert len(gateway_stub.requests) == 1 and environment_proxy.seen == []


def test_environment_proxies_are_not_used_by_the_clients(keys, openapi_stub, environment_proxy, servers):
    openapi_stub.add_trade("P1")
    assert AlipayClient(make_config(keys, gateway=openapi_stub.url), timeout=TIMEOUT).query(out_trade_no="P1").paid
    legacy = servers(LegacyGateway())
    legacy.add_trade("L1")
    config = LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=legacy.url)
    assert LegacyClient(config, timeout=TIMEOUT).query(out_trade_no="L1").paid
    assert environment_proxy.seen == []


# -- redirects are errors, never followed ----------------------------------------------------------------------


@pytest.fixture
def redirect(servers: Callable[[Any], Any]) -> tuple[RecordingServer, RecordingServer]:
    """(gateway, target): the gateway answers every request with a 302 to the same path and query on another
    host (127.0.0.2), which would answer ``true`` to anything."""
    target = servers(RecordingServer(host="127.0.0.2", body=b"true"))
    gateway = servers(RecordingServer(status=302, body=b"", location=target.origin))
    return gateway, target


def test_a_redirect_from_notify_verify_is_not_followed(make_legacy, mount, redirect, caplog):
    gateway, target = redirect
    alipay = make_legacy(orders={"L1": "9.90"}, gateway=gateway.url)
    paid = Recorder()
    alipay.on_paid(paid)
    response = mount(alipay).request("POST", NOTIFY, legacy_body(legacy_fields("L1", "9.90")))
    assert (response.status, response.body) == (503, b"fail")
    assert "reason=origin_unreachable" in caplog.text and "HTTP 302 (a redirect: not followed)" in caplog.text
    assert len(gateway.requests) == 1 and target.requests == [] and paid.calls == []


@pytest.mark.parametrize("kind", ["open_platform", "legacy"])
def test_a_redirect_is_not_followed_by_the_clients(keys, redirect, kind):
    gateway, target = redirect
    client: AlipayClient | LegacyClient
    if kind == "open_platform":
        client = AlipayClient(make_config(keys, gateway=gateway.url), timeout=TIMEOUT, retries=2, backoff=0)
    else:
        client = LegacyClient(LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=gateway.url), timeout=TIMEOUT,
                              retries=2, backoff=0)
    with pytest.raises(GatewayUnavailable, match="HTTP 302"):
        client.query(out_trade_no="R1")
    assert len(gateway.requests) == 1  # a redirect is not network trouble: not retried either
    assert target.requests == []


# -- notify_verify's own answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body"), [(500, b"true"), (404, b"true"), (200, b"x" * 5000)],
                         ids=["http500", "http404", "too_long"])
def test_notify_verify_takes_only_a_complete_short_200_answer(servers, status, body):
    gateway = servers(RecordingServer(status=status, body=body))
    with pytest.raises(GatewayUnavailable, match="notify_verify"):
        notify_verify(gateway.url + "?service=notify_verify&partner=2088&notify_id=1", TIMEOUT)


# -- the proxy setting ---------------------------------------------------------------------------------------

BAD_PROXIES = [
    ("https://shop:s3cr%3Aet%40pw@proxy.internal:3128", "https:// proxies"),
    ("socks5://shop:s3cr%3Aet%40pw@proxy.internal:1080", "SOCKS"),
    ("shop:s3cr%3Aet%40pw@proxy.internal:3128", "must be an HTTP proxy URL"),
    ("proxy.internal:3128", "must be an HTTP proxy URL"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal", "must name the proxy's port"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:99999", "between 1 and 65535"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:0", "between 1 and 65535"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:port", "between 1 and 65535"),
    ("http://shop:s3cr%3Aet%40pw@:3128", "no valid host"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:3128/squid", "without a path, query or fragment"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:3128?pw=s3cr%3Aet%40pw", "without a path, query or fragment"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:3128#x", "without a path, query or fragment"),
    ("http://shop:s3cr:et@pw @proxy.internal:3128", "printable ASCII without spaces"),
    ("http://shop:s3cr%3Aet%40pw@proxy.internal:3128\r\nX: y", "printable ASCII without spaces"),
    ("", "is empty"),
]


@pytest.mark.parametrize("config_kind", ["open_platform", "legacy"])
@pytest.mark.parametrize(("value", "says"), BAD_PROXIES, ids=[says for _, says in BAD_PROXIES])
def test_a_bad_proxy_fails_at_construction_without_echoing_the_password(keys, config_kind, value, says):
    with pytest.raises(ValueError, match="proxy") as caught:
        if config_kind == "open_platform":
            make_config(keys, proxy=value)
        else:
            LegacyConfig(partner=PARTNER, key=MD5_KEY, proxy=value)
    assert says in str(caught.value)
    assert_no_secret(str(caught.value))
    assert "s3cr" not in str(caught.value)


def test_a_proxy_that_is_not_a_string_is_a_type_error(keys):
    with pytest.raises(TypeError, match="proxy must be a URL string"):
        make_config(keys, proxy=3128)
    with pytest.raises(TypeError, match="proxy must be a URL string"):
        LegacyConfig(partner=PARTNER, key=MD5_KEY, proxy=("proxy.internal", 3128))


@pytest.mark.parametrize(("value", "host", "port", "authorization"), [
    ("http://proxy.internal:3128", "proxy.internal", 3128, None),
    ("HTTP://Proxy.Internal:3128/", "proxy.internal", 3128, None),
    (f"http://{USER}:{PASSWORD_IN_URL}@10.0.0.1:8080", "10.0.0.1", 8080, f"Basic {TOKEN}"),
    ("http://[fd00::1]:3128", "fd00::1", 3128, None),
    ("http://shop@proxy.internal:3128", "proxy.internal", 3128, "Basic " + base64.b64encode(b"shop:").decode()),
])
def test_good_proxies(value, host, port, authorization):
    proxy = parse_proxy(value)
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.authorization) == (host, port, authorization)
    assert_no_secret(repr(proxy), str(proxy))


def test_the_config_repr_never_shows_the_proxy_credentials(keys):
    value = f"http://{USER}:{PASSWORD_IN_URL}@proxy.internal:3128"
    assert_no_secret(repr(make_config(keys, proxy=value)), repr(LegacyConfig(partner=PARTNER, key=MD5_KEY,
                                                                             proxy=value)))
    transport = Transport("https://openapi.alipay.com/gateway.do", timeout=1, max_response=1024, proxy=value)
    assert repr(transport) == "<Transport https://openapi.alipay.com:443 via http://***@proxy.internal:3128>"
