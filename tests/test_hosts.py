"""Callback URLs and the Host header: derived from a request only when its Host is a well-formed
``host[:port]`` naming loopback or a host in ``Alipay(allowed_hosts=...)``; otherwise the pay helper raises
``UntrustedHost``. Configured URLs, per-call URLs and ``alipay.helper(origin)`` never read the Host.

Pay URLs are built by small inner apps that call the pay helper the way a shop's view does and report
either the callback URLs the signed request carries or the exception the view got, through both fronts
(the conftest ``mount`` fixture) and once through a real werkzeug server with a Flask view.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder, run_wsgi_app

from alipay_middleware import Alipay, AlipayError, LegacyConfig, UntrustedHost
from alipay_middleware.protocols.helper import RequestHelper
from conftest import MD5_KEY, PARTNER, Keys, make_config

NOTIFY, RETURN = "/alipay/notify", "/alipay/return"


# -- inner apps: a pay view that reports what it got ---------------------------------------------------------

def attempt(helper: Any, query: str) -> dict[str, Any]:
    """Build a pay URL as a shop's view would (``query`` may carry per-call notify_url/return_url)."""
    overrides = dict(parse_qsl(query))
    try:
        if hasattr(helper, "page_pay_url"):
            url = helper.page_pay_url(out_trade_no="H1", total_amount="9.90", subject="Tea", **overrides)
        else:
            url = helper.direct_pay_url(out_trade_no="H1", total_fee="9.90", subject="Tea", **overrides)
    except Exception as exc:  # the test wants to see exactly which exception a view gets
        return {"error": type(exc).__name__, "reason": getattr(exc, "reason", None),
                "settings": list(getattr(exc, "settings", ())), "message": str(exc)}
    params = dict(parse_qsl(urlsplit(url).query))
    return {"notify_url": params["notify_url"], "return_url": params["return_url"]}


def pay_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(attempt(environ["alipay"], environ.get("QUERY_STRING", ""))).encode()]


async def pay_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = json.dumps(attempt(scope["alipay"], scope["query_string"].decode())).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def pay(client: Any, host: str, query: str = "") -> dict[str, Any]:
    response = client.request("GET", "/pay", query=query, headers={"Host": host})
    assert response.status == 200, response.body[:300]
    return dict(json.loads(response.body))


def urls(origin: str) -> dict[str, Any]:
    return {"notify_url": origin + NOTIFY, "return_url": origin + RETURN}


def untrusted(reason: str, settings: tuple[str, ...] = ("notify_url", "return_url")) -> dict[str, Any]:
    return {"error": "UntrustedHost", "reason": reason, "settings": list(settings)}


def without_message(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "message"}


@pytest.fixture
def open_shop(make_alipay: Any, mount: Any, front_kind: str) -> Any:
    def _open(alipay: Alipay | None = None, **kwargs: Any) -> Any:
        return mount(alipay or make_alipay(**kwargs), pay_wsgi if front_kind == "wsgi" else pay_asgi)
    return _open


@pytest.fixture
def open_legacy(make_legacy: Any, mount: Any, front_kind: str) -> Any:
    def _open(alipay_kwargs: dict[str, Any] | None = None, **config: Any) -> Any:
        alipay = make_legacy(alipay_kwargs=alipay_kwargs, **config)
        return mount(alipay, pay_wsgi if front_kind == "wsgi" else pay_asgi)
    return _open


# -- the rule, through both fronts ---------------------------------------------------------------------------

def test_untrusted_host_is_the_named_error_saying_what_to_set(open_shop: Any) -> None:
    result = pay(open_shop(), "evil.example")
    assert without_message(result) == untrusted("host_not_allowed")
    message = result["message"]
    assert "'evil.example'" in message and "allowed_hosts" in message
    assert "Set notify_url and return_url in the config" in message
    assert issubclass(UntrustedHost, ValueError) and issubclass(UntrustedHost, AlipayError)


MALFORMED = {
    "query": "shop.example?x=1",
    "fragment": "shop.example#x",
    "quote": 'shop.example"x',
    "userinfo": "user@shop.example",
    "userinfo_port": "shop.example:80@evil.example",
    "space": "shop example",
    "trailing_space": "shop.example ",
    "empty": "",
    "port_only": ":8000",
    "port_0": "shop.example:0",
    "port_65536": "shop.example:65536",
    "port_empty": "shop.example:",
    "port_letters": "shop.example:80a",
    "port_sign": "shop.example:+80",
    "port_long": "shop.example:000080",
    "two_ports": "shop.example:80:80",
    "path": "shop.example/x",
    "backslash": "shop.example\\x",
    "unbracketed_ipv6": "::1",
    "open_bracket": "[::1",
    "ipv6_zone": "[fe80::1%eth0]",
    "ipv4_in_brackets": "[127.0.0.1]",
    "bad_ipv4": "127.0.0.256",
    "short_ipv4": "127.1",
    "hex_ipv4": "0x7f.0.0.1",
    "underscore": "shop_x.example",
    "hyphen_edge": "-shop.example",
    "empty_label": "shop..example",
    "long_label": "a" * 64 + ".example",
    "latin1": "shöp.example",
    "escape": "\x1b[31mshop.example",
    "huge": "shop.example" + "a" * 5000,
}


@pytest.mark.parametrize("host", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_host_is_the_named_error_never_another_exception(open_shop: Any, host: str) -> None:
    # shop.example is an allowed host here: what is refused is the form, not the name.
    result = pay(open_shop(), host)
    assert without_message(result) == untrusted("malformed_host")
    message = result["message"]
    assert len(message) < 400 and "\x1b" not in message and "a" * 40 not in message
    assert message.isascii() and message.isprintable()


@pytest.mark.parametrize(("host", "origin"), [
    ("localhost", "http://localhost"),
    ("LocalHost:8000", "http://localhost:8000"),
    ("localhost.", "http://localhost"),
    ("127.0.0.1", "http://127.0.0.1"),
    ("127.0.0.1:80", "http://127.0.0.1"),  # the scheme's default port is left out
    ("127.8.9.10:8443", "http://127.8.9.10:8443"),
    ("[::1]", "http://[::1]"),
    ("[0:0::1]:8000", "http://[::1]:8000"),
    ("localhost:65535", "http://localhost:65535"),
])
def test_loopback_hosts_work_with_no_allowed_hosts(open_shop: Any, host: str, origin: str) -> None:
    assert pay(open_shop(allowed_hosts=None), host) == urls(origin)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "[::]", "[2001:db8::1]", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "evil.localhost", "shop.example"])
def test_other_hosts_are_refused_with_no_allowed_hosts(open_shop: Any, host: str) -> None:
    assert without_message(pay(open_shop(allowed_hosts=None), host)) == untrusted("host_not_allowed")


ALLOWED = ["Shop.Example", ".Tea.example", "10.0.0.7", "2001:DB8::7", "[2001:db8::8]"]


@pytest.mark.parametrize(("host", "origin"), [
    ("shop.example", "http://shop.example"),
    ("SHOP.EXAMPLE:8443", "http://shop.example:8443"),
    ("shop.example.", "http://shop.example"),
    ("tea.example", "http://tea.example"),
    ("www.tea.example", "http://www.tea.example"),
    ("a.b.TEA.example:81", "http://a.b.tea.example:81"),
    ("10.0.0.7:8000", "http://10.0.0.7:8000"),
    ("[2001:db8:0::7]", "http://[2001:db8::7]"),
    ("[2001:db8::8]:9000", "http://[2001:db8::8]:9000"),
    ("localhost:8000", "http://localhost:8000"),  # loopback stays allowed
])
def test_allowed_hosts_exact_wildcard_ip_and_case_insensitive(open_shop: Any, host: str, origin: str) -> None:
    assert pay(open_shop(allowed_hosts=ALLOWED), host) == urls(origin)


@pytest.mark.parametrize("host", ["www.shop.example", "shop.example.evil", "evilshop.example", "eviltea.example",
                                  "tea.example.evil", "10.0.0.8", "[2001:db8::9]", "evil.example"])
def test_hosts_outside_allowed_hosts_are_refused(open_shop: Any, host: str) -> None:
    assert without_message(pay(open_shop(allowed_hosts=ALLOWED), host)) == untrusted("host_not_allowed")


def test_https_scheme_and_default_port(make_alipay: Any, front_kind: str) -> None:
    """The scheme is the server's (wsgi.url_scheme / scope["scheme"]); its default port is left out."""
    alipay = make_alipay(allowed_hosts=["shop.example"])
    for host, origin in [("shop.example:443", "https://shop.example"), ("shop.example:80", "https://shop.example:80")]:
        if front_kind == "wsgi":
            environ = EnvironBuilder(path="/pay", base_url="https://x/", headers={"Host": host}).get_environ()
            body = b"".join(run_wsgi_app(alipay.wsgi(pay_wsgi), environ, buffered=True)[0])
        else:
            body = asyncio.run(call_asgi(alipay, headers=[(b"host", host.encode())], scheme="https"))
        assert json.loads(body) == urls(origin)


# -- what never reads the Host -------------------------------------------------------------------------------

CONFIGURED = {"notify_url": "https://pay.shop.example/n", "return_url": "https://pay.shop.example/r"}


@pytest.mark.parametrize("host", ["evil.example", "evil?x", ""])
def test_configured_urls_never_read_the_host(open_shop: Any, host: str) -> None:
    assert pay(open_shop(allowed_hosts=None, config=CONFIGURED), host) == CONFIGURED


@pytest.mark.parametrize("host", ["evil.example", "evil?x"])
def test_per_call_urls_never_read_the_host(open_shop: Any, host: str) -> None:
    query = "notify_url=https://a.example/n&return_url=https://a.example/r"
    assert pay(open_shop(allowed_hosts=None), host, query) == {"notify_url": "https://a.example/n",
                                                               "return_url": "https://a.example/r"}


def test_given_urls_do_not_even_ask_for_the_origin(make_alipay: Any) -> None:
    def no_origin(request: object) -> str:
        raise AssertionError("the origin was consulted")

    alipay = make_alipay(allowed_hosts=None, config=CONFIGURED)
    helper = RequestHelper(alipay, object(), no_origin)
    assert helper.callback_urls() == (CONFIGURED["notify_url"], CONFIGURED["return_url"])
    bare = RequestHelper(make_alipay(allowed_hosts=None), object(), no_origin)
    assert bare.callback_urls("https://a.example/n", "https://a.example/r") == ("https://a.example/n",
                                                                                 "https://a.example/r")


def test_explicit_origin_is_not_subject_to_allowed_hosts(make_alipay: Any, make_legacy: Any) -> None:
    for alipay in (make_alipay(allowed_hosts=["shop.example"]), make_alipay(allowed_hosts=None),
                   make_legacy(alipay_kwargs={"allowed_hosts": None})):
        helper = alipay.helper("https://elsewhere.example/shop/")
        assert attempt(helper, "") == urls("https://elsewhere.example/shop")


@pytest.mark.parametrize("base_url", ["elsewhere.example", "//elsewhere.example", "ftp://elsewhere.example",
                                      "https://", "https://elsewhere.example/?a=1", "https://elsewhere.example/#f",
                                      "https://elsewhere.example/?", "https://elsewhere.example#",
                                      "https://else where.example", "https://elsewhere.example/\n", ""])
def test_explicit_origin_must_be_an_absolute_http_url(make_alipay: Any, base_url: str) -> None:
    with pytest.raises(ValueError, match=r"absolute http\(s\) URL"):
        make_alipay().helper(base_url)


# -- one URL configured, the other derived: the rule applies per URL -----------------------------------------

@pytest.mark.parametrize(("configured", "derived"), [("notify_url", "return_url"), ("return_url", "notify_url")])
def test_one_url_configured_the_other_follows_the_rule(open_shop: Any, configured: str, derived: str) -> None:
    client = open_shop(allowed_hosts=["shop.example"], config={configured: CONFIGURED[configured]})
    ok = pay(client, "shop.example:8000")
    path = NOTIFY if derived == "notify_url" else RETURN
    assert ok == {configured: CONFIGURED[configured], derived: "http://shop.example:8000" + path}
    refused = pay(client, "evil.example")
    assert without_message(refused) == untrusted("host_not_allowed", (derived,))
    assert f"Set {derived} in the config" in refused["message"] and configured not in refused["message"]
    assert without_message(pay(client, "shop.example@evil")) == untrusted("malformed_host", (derived,))
    # Given for this call as well: nothing is derived, so nothing is refused.
    assert pay(client, "evil.example", f"{derived}=https://a.example/x") == {
        configured: CONFIGURED[configured], derived: "https://a.example/x"}


# -- the legacy helper follows the same rule -----------------------------------------------------------------

def test_legacy_helper_follows_the_same_rule(open_legacy: Any) -> None:
    client = open_legacy(alipay_kwargs={"allowed_hosts": [".shop.example"]})
    assert pay(client, "www.shop.example") == urls("http://www.shop.example")
    assert pay(client, "127.0.0.1:5000") == urls("http://127.0.0.1:5000")
    assert without_message(pay(client, "evil.example")) == untrusted("host_not_allowed")
    assert without_message(pay(client, "shop.example#x")) == untrusted("malformed_host")
    configured = open_legacy(alipay_kwargs={"allowed_hosts": None}, **CONFIGURED)
    assert pay(configured, "evil.example") == CONFIGURED


# -- no Host header: the server's own name or address, checked the same way ----------------------------------

async def call_asgi(alipay: Alipay, *, headers: list[tuple[bytes, bytes]], server: Any = ("x", 80),
                    scheme: str = "http") -> bytes:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": scheme,
             "path": "/pay", "raw_path": b"/pay", "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": server}
    await alipay.asgi(pay_asgi)(scope, receive, send)
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize(("server", "expected"), [
    (("127.0.0.1", 8000), urls("http://127.0.0.1:8000")),
    (("::1", 8000), urls("http://[::1]:8000")),
    (("localhost", None), urls("http://localhost")),
    (("203.0.113.9", 80), untrusted("host_not_allowed")),
    (None, untrusted("missing_host")),
])
def test_asgi_without_host_header_checks_the_server_address(make_alipay: Any, server: Any,
                                                            expected: dict[str, Any]) -> None:
    alipay = make_alipay(allowed_hosts=None)
    assert without_message(json.loads(asyncio.run(call_asgi(alipay, headers=[], server=server)))) == expected


@pytest.mark.parametrize(("server_name", "expected"), [
    ("127.0.0.1", urls("http://127.0.0.1:8000")),
    ("evil.example", untrusted("host_not_allowed")),
    ("", untrusted("missing_host")),
])
def test_wsgi_without_host_header_checks_the_server_name(make_alipay: Any, server_name: str,
                                                         expected: dict[str, Any]) -> None:
    alipay = make_alipay(allowed_hosts=None)
    environ = EnvironBuilder(path="/pay").get_environ()
    del environ["HTTP_HOST"]
    environ.update(SERVER_NAME=server_name, SERVER_PORT="8000")
    body = b"".join(run_wsgi_app(alipay.wsgi(pay_wsgi), environ, buffered=True)[0])
    result = json.loads(body)
    assert without_message(result) == expected
    if expected.get("reason") == "missing_host":
        assert "no Host header" in result["message"]


# -- configuration: the warning and allowed_hosts' validation ------------------------------------------------

@pytest.mark.parametrize(("config", "kwargs", "warned"), [
    ({}, {}, "notify_url and return_url"),
    ({"notify_url": CONFIGURED["notify_url"]}, {}, "return_url"),
    ({"return_url": CONFIGURED["return_url"]}, {}, "notify_url"),
    (CONFIGURED, {}, None),
    ({}, {"allowed_hosts": ["shop.example"]}, None),
    ({}, {"allowed_hosts": []}, None),  # loopback only, said explicitly
    ({"notify_url": CONFIGURED["notify_url"]}, {"allowed_hosts": ("shop.example",)}, None),
], ids=["nothing", "notify_only", "return_only", "both_urls", "allowed_hosts", "empty_allowed_hosts",
        "notify_and_allowed_hosts"])
def test_construction_warns_only_without_urls_or_allowed_hosts(keys: Keys, caplog: pytest.LogCaptureFixture,
                                                               config: dict[str, str], kwargs: dict[str, Any],
                                                               warned: str | None) -> None:
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        alipay = Alipay(make_config(keys, **config), ledger=":memory:", **kwargs)
    alipay.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "alipay_middleware"]
    if warned is None:
        assert messages == []
        return
    assert len(messages) == 1 and caplog.records[0].levelno == logging.WARNING
    assert f"no {warned} configured and no allowed_hosts" in messages[0]
    assert "loopback" in messages[0] and "UntrustedHost" in messages[0] and "allowed_hosts=[...]" in messages[0]
    if warned == "return_url":
        assert "notify_url" not in messages[0]


def test_construction_warns_for_a_legacy_config_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY), ledger=":memory:").close()
        Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY, **CONFIGURED), ledger=":memory:").close()
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [
        " no notify_url and return_url configured and no allowed_hosts"]


def test_allowed_hosts_are_kept_in_canonical_form(make_alipay: Any) -> None:
    alipay = make_alipay(allowed_hosts=["Shop.Example.", ".Tea.Example", "2001:DB8::7", "[::1]", "shop.example"])
    assert alipay.allowed_hosts == ("shop.example", ".tea.example", "[2001:db8::7]", "[::1]")
    assert make_alipay(allowed_hosts=None).allowed_hosts is None


@pytest.mark.parametrize("value", ["shop.example", b"shop.example", {"shop.example"}, [b"shop.example"], [None], 7],
                         ids=["str", "bytes", "set", "bytes_entry", "none_entry", "int"])
def test_allowed_hosts_of_the_wrong_type_fail_at_construction(make_alipay: Any, value: Any) -> None:
    with pytest.raises(TypeError, match="allowed_hosts"):
        make_alipay(allowed_hosts=value)


@pytest.mark.parametrize("entry", ["https://shop.example", "http://shop.example/", "shop.example:8000",
                                   "[::1]:8000", "shop.example/pay", "", ".", " shop.example", "shop..example",
                                   ".10.0.0.1", "shöp.example", "shop_x.example", "user@shop.example",
                                   "*.shop.example", "..shop.example", "fe80::1%eth0"])
def test_allowed_hosts_entries_with_scheme_port_or_path_are_refused_naming_the_form(make_alipay: Any,
                                                                                   entry: str) -> None:
    with pytest.raises(ValueError, match="without scheme, port or path") as info:
        make_alipay(allowed_hosts=["shop.example", entry])
    assert repr(entry[:80]) in str(info.value)


def test_a_star_in_allowed_hosts_is_refused(make_alipay: Any) -> None:
    with pytest.raises(ValueError, match=r"would trust any Host.*notify_url and return_url"):
        make_alipay(allowed_hosts=["*"])


# -- a real server with a Flask pay view ---------------------------------------------------------------------

@pytest.fixture
def flask_server(make_alipay: Any) -> Iterator[tuple[int, list[BaseException]]]:
    from flask import Flask, redirect

    alipay = make_alipay(allowed_hosts=None)
    app = Flask(__name__)
    errors: list[BaseException] = []

    @app.get("/pay")
    def pay_view() -> Any:
        from flask import request

        return redirect(request.environ["alipay"].page_pay_url(out_trade_no="H1", total_amount="9.90",
                                                               subject="Tea"))

    @app.errorhandler(Exception)
    def shop_error(exc: Exception) -> tuple[str, int]:
        errors.append(exc)
        return f"shop error: {type(exc).__name__}", 500

    app.wsgi_app = alipay.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, errors
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def raw_get(port: int, host: str | None) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", "/pay", skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Location") or "", response.read().decode("latin-1")
    finally:
        connection.close()


def test_flask_view_on_a_real_server_gets_untrusted_host_never_a_wrong_url(
        flask_server: tuple[int, list[BaseException]]) -> None:
    port, errors = flask_server
    status, location, _ = raw_get(port, f"127.0.0.1:{port}")
    params = dict(parse_qsl(urlsplit(location).query))
    assert status == 302 and params["notify_url"] == f"http://127.0.0.1:{port}{NOTIFY}" and errors == []
    for host in ["evil.example", f"evil.example:{port}", "shop.example?x", "shop.example#x", 'a"b', "u@evil.example",
                 "a b", "", f"127.0.0.1:{port}@evil.example", "127.0.0.1:99999"]:
        errors.clear()
        status, location, body = raw_get(port, host)
        assert (status, location, body) == (500, "", "shop error: UntrustedHost"), host
        assert len(errors) == 1 and type(errors[0]) is UntrustedHost, host
        assert errors[0].reason in ("host_not_allowed", "malformed_host")
