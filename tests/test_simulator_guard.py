"""What the served simulator refuses (``alipay_middleware/simulator/guard.py``), through a real loopback server:
a Host that is not this machine (DNS rebinding), a malformed Host (400, never 500), and a POST to its own
pages (fault switches, checkout Pay/Cancel/Let it time out) from another origin; while the shop's
cross-origin pay form and server-to-server calls to gateway.do keep working.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from werkzeug.serving import make_server

from alipay_middleware import AlipayClient, OpenApiConfig
from alipay_middleware.protocols.openapi import pay_biz
from alipay_middleware.simulator import SimServer, Simulator, guard
from conftest import APP_ID, SELLER_ID, Keys, make_sim

EVIL = "http://evil.example"


class Shop:
    """A shop's stand-in on its own loopback port: records notifications and answers ``success``."""

    def __init__(self) -> None:
        self.notified: list[bytes] = []
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/notify":
            self.notified.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"success"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"shop page"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def served(keys: Keys) -> Iterator[tuple[Simulator, SimServer]]:
    sim = make_sim(keys)
    server = sim.serve()
    yield sim, server
    server.close()


@pytest.fixture
def shop() -> Iterator[Shop]:
    stand_in = Shop()
    yield stand_in
    stand_in.close()


def address(server: SimServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def call(server: SimServer, method: str, path: str, *, host: str | None = None, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One request to the served simulator, with exactly the Host (and other headers) given."""
    connection = http.client.HTTPConnection(*address(server), timeout=10)
    try:
        connection.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Type", "application/x-www-form-urlencoded")
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def raw_status(server: SimServer, request: bytes) -> bytes:
    """The status line the server answers a hand-written request with."""
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def pay_body(keys: Keys, shop: Shop, out_trade_no: str) -> bytes:
    """The signed page-pay form the shop's page auto-submits to gateway.do."""
    config = OpenApiConfig(app_id=APP_ID, app_private_key=keys.app_private_pem,
                           alipay_public_key=keys.alipay_public_pem, seller_id=SELLER_ID,
                           gateway="http://127.0.0.1:9/gateway.do")
    params = config.protocol().signed_params(
        "alipay.trade.page.pay", pay_biz("FAST_INSTANT_TRADE_PAY", out_trade_no, "9.90", "Tea", {}),
        notify_url=shop.url + "/notify", return_url=shop.url + "/return")
    return urlencode(params).encode("ascii")


def open_checkout(server: SimServer, keys: Keys, shop: Shop, out_trade_no: str) -> str:
    """The shop's page posts the pay form from the shop's origin: the checkout path it is sent to."""
    status, headers, _ = call(server, "POST", "/gateway.do?charset=utf-8", body=pay_body(keys, shop, out_trade_no),
                              headers={"Origin": shop.url, "Referer": shop.url + "/orders/1"})
    assert status == 303, "the shop's cross-origin pay form must still open a checkout"
    location = headers["Location"]
    assert location.startswith("/checkout/")
    return location


# -- Host ------------------------------------------------------------------------------------------------------------

FOREIGN_HOSTS = ["evil.example", "attacker.test:8001", "localhost.evil.example", "127.0.0.1.nip.io:8001",
                 "10.0.0.1", "[::2]:8001", "0.0.0.0:8001"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("method, path", [("GET", "/"), ("POST", "/faults"), ("GET", "/gateway.do"),
                                          ("POST", "/gateway.do")])
def test_a_foreign_host_is_refused(served: tuple[Simulator, SimServer], host: str, method: str, path: str) -> None:
    sim, server = served
    body = b"duplicate_notify=on" if method == "POST" else None
    status, headers, text = call(server, method, path, host=host, body=body)
    assert status == 421
    assert headers["Content-Type"].startswith("text/plain")
    assert "DNS rebinding" in text and "localhost, 127.0.0.1, [::1]" in text
    assert not sim.faults.duplicate_notify


def test_a_foreign_host_cannot_pay(served: tuple[Simulator, SimServer], keys: Keys, shop: Shop) -> None:
    sim, server = served
    location = open_checkout(server, keys, shop, "H1")
    status, _, _ = call(server, "POST", location, host="evil.example:8001", body=b"action=pay",
                        headers={"Origin": "http://evil.example:8001"})
    assert status == 421
    assert sim.trade("H1").status == "WAIT_BUYER_PAY"  # type: ignore[union-attr]


MALFORMED_HOSTS = [b"", b"a b", b"localhost:", b"localhost:abc", b"localhost:99999", b"localhost:0",
                   b"127.0.0.1:\xc2\xb2", b"127.0.0.1:" + b"1" * 4301, b"[::1", b"[zz]:1", b"[::1%lo]", b"a?b",
                   b"a#b", b'a"b', b"user@localhost", b"localhost/x", b"\xff\xfe", b"localhost,evil.example"]


@pytest.mark.parametrize("host", MALFORMED_HOSTS, ids=repr)
def test_a_malformed_host_is_a_400(served: tuple[Simulator, SimServer], host: bytes) -> None:
    _, server = served
    for request in (b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n",
                    b"POST /faults HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"):
        assert raw_status(server, request).startswith(b"HTTP/1.1 400 ")


def test_two_host_headers_are_a_400(served: tuple[Simulator, SimServer]) -> None:
    _, server = served
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert raw_status(server, request).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "localhost:{port}", "127.0.0.1", "127.0.0.1:{port}",
                                  "127.9.8.7:{port}", "[::1]", "[::1]:{port}", "[0:0:0:0:0:0:0:1]:{port}", "{bound}"])
def test_loopback_names_and_the_bound_address_are_served(served: tuple[Simulator, SimServer], host: str) -> None:
    _, server = served
    value = host.format(port=address(server)[1], bound=urlsplit(server.url).netloc)
    status, _, text = call(server, "GET", "/", host=value)
    assert status == 200 and 'id="faults"' in text


def test_a_request_without_host_is_served(served: tuple[Simulator, SimServer]) -> None:
    """HTTP/1.0 without Host: a program (browsers always send Host), answered as the bound address."""
    _, server = served
    assert raw_status(server, b"GET / HTTP/1.0\r\n\r\n").endswith(b" 200 OK")


# -- Origin/Referer on the simulator's own forms ---------------------------------------------------------------------

CROSS_ORIGIN = [
    {"Origin": EVIL},
    {"Origin": EVIL, "Referer": "{own}/"},
    {"Origin": "null"},
    {"Origin": ""},
    {"Origin": "http://localhost:{port}"},           # another origin than the Host the request was sent to
    {"Origin": "https://127.0.0.1:{port}"},          # another scheme
    {"Origin": "http://127.0.0.1:1"},                # another port on this machine (the shop, say)
    {"Origin": "{own}.evil.example"},
    {"Referer": EVIL + "/attack.html"},
    {"Referer": "http://127.0.0.1:1/page"},
    {"Referer": "not a url"},
]


def cross_origin_headers(server: SimServer, headers: dict[str, str]) -> dict[str, str]:
    return {name: value.format(own=server.url, port=address(server)[1]) for name, value in headers.items()}


@pytest.mark.parametrize("headers", CROSS_ORIGIN, ids=str)
def test_a_cross_origin_fault_switch_post_is_refused(served: tuple[Simulator, SimServer],
                                                     headers: dict[str, str]) -> None:
    sim, server = served
    status, headers_out, text = call(server, "POST", "/faults", body=b"duplicate_notify=on&tamper_amount=on",
                                     headers=cross_origin_headers(server, headers))
    assert status == 403 and headers_out["Content-Type"].startswith("text/plain")
    assert "another" in text and "simulator's own pages" in text
    assert not any(getattr(sim.faults, name) for name in sim.faults.names())


@pytest.mark.parametrize("headers", [{"Origin": "{own}"}, {"Origin": "{own}", "Referer": EVIL + "/"},
                                     {"Referer": "{own}/?saved=1"}, {}],
                         ids=["own origin", "own origin wins over referer", "own referer", "neither (a program)"])
def test_a_same_origin_fault_switch_post_is_saved(served: tuple[Simulator, SimServer],
                                                  headers: dict[str, str]) -> None:
    sim, server = served
    status, headers_out, _ = call(server, "POST", "/faults", body=b"duplicate_notify=on",
                                  headers=cross_origin_headers(server, headers))
    assert status == 303 and sim.faults.duplicate_notify and not sim.faults.tamper_amount
    status, _, page = call(server, "GET", headers_out["Location"])
    assert status == 200 and 'id="faults-saved"' in page
    assert 'id="faults-saved"' not in call(server, "GET", "/")[2]


@pytest.mark.parametrize("action", ["pay", "timeout", "cancel"])
@pytest.mark.parametrize("headers", CROSS_ORIGIN, ids=str)
def test_a_cross_origin_checkout_action_is_refused(served: tuple[Simulator, SimServer], keys: Keys, shop: Shop,
                                                   headers: dict[str, str], action: str) -> None:
    sim, server = served
    location = open_checkout(server, keys, shop, "X1")
    before = sim.trade("X1")
    status, _, text = call(server, "POST", location, body=f"action={action}".encode(),
                           headers=cross_origin_headers(server, headers))
    assert status == 403 and "simulator's own pages" in text
    assert sim.wait_idle(10)
    assert sim.trade("X1") == before and before is not None and before.status == "WAIT_BUYER_PAY"
    assert not before.buyer_acted
    assert sim.deliveries() == [] and shop.notified == []


def test_a_same_origin_pay_goes_through(served: tuple[Simulator, SimServer], keys: Keys, shop: Shop) -> None:
    sim, server = served
    location = open_checkout(server, keys, shop, "P1")
    status, headers, _ = call(server, "GET", location)
    assert status == 200
    assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, headers, _ = call(server, "POST", location, body=b"action=pay",
                              headers={"Origin": server.url, "Referer": server.url + location})
    assert status == 303 and headers["Location"].startswith(shop.url + "/return?")
    assert sim.wait_idle(10)
    assert sim.trade("P1").status == "TRADE_SUCCESS"  # type: ignore[union-attr]
    assert len(shop.notified) == 1 and b"out_trade_no=P1" in shop.notified[0]


def test_the_same_origin_is_the_host_the_request_was_sent_to(served: tuple[Simulator, SimServer]) -> None:
    """Reached as localhost:PORT, the page's own origin is http://localhost:PORT."""
    sim, server = served
    own = f"localhost:{address(server)[1]}"
    status, _, _ = call(server, "POST", "/faults", host=own, body=b"out_of_order=on",
                        headers={"Origin": f"http://{own}"})
    assert status == 303 and sim.faults.out_of_order


def test_server_to_server_calls_to_the_gateway_carry_no_origin_and_still_work(
        served: tuple[Simulator, SimServer], keys: Keys, shop: Shop) -> None:
    sim, server = served
    location = open_checkout(server, keys, shop, "S1")
    assert call(server, "POST", location, body=b"action=pay")[0] == 303  # a program: neither Origin nor Referer
    config = OpenApiConfig(app_id=APP_ID, app_private_key=keys.app_private_pem,
                           alipay_public_key=sim.alipay_public_key_pem, seller_id=SELLER_ID,
                           gateway=server.gateway_url)
    assert AlipayClient(config).query(out_trade_no="S1").trade_status == "TRADE_SUCCESS"


def test_the_bound_address_is_accepted_even_if_it_were_not_loopback() -> None:
    """serve() binds loopback only, so today the loopback rule covers the bound address; the rule for the
    bound (host, port) itself is pinned here, on the pure function."""
    bound = {("sim.internal", 8001)}
    assert guard.host_refusal({"HTTP_HOST": "SIM.internal:8001"}, bound) is None
    assert guard.host_refusal({"HTTP_HOST": "sim.internal:8002"}, bound) is not None
    assert guard.host_refusal({"HTTP_HOST": "sim.internal"}, bound) is not None
