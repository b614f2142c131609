"""The fronts depend on what they use of ``Alipay`` (``fronts/port.py``), not on the class: a wrong ``alipay=``
is a clear TypeError at construction, and anything with the port's members can be mounted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.test import Client

from alipay_middleware import Alipay, AlipayASGIMiddleware, AlipayWSGIMiddleware
from conftest import Keys, make_config

FRONTS = [AlipayWSGIMiddleware, AlipayASGIMiddleware]


def inner_app(*args: Any) -> Any:  # never called by these tests' constructors
    raise AssertionError


@pytest.mark.parametrize("front", FRONTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("wrong", [None, "alipay", {"notify_path": "/alipay/notify"}], ids=["None", "str", "dict"])
def test_a_wrong_alipay_argument_is_a_type_error(front, wrong):
    expected = rf"^{front.__name__} needs alipay=Alipay\(\.\.\.\), not {type(wrong).__name__}$"
    with pytest.raises(TypeError, match=expected):
        front(inner_app, alipay=wrong)


def test_the_config_in_place_of_alipay_is_a_type_error(keys: Keys):
    with pytest.raises(TypeError, match=r"AlipayASGIMiddleware needs alipay=Alipay\(\.\.\.\), not OpenApiConfig"):
        AlipayASGIMiddleware(inner_app, alipay=make_config(keys))


def test_mounting_checks_the_alipay_without_starting_its_thread_pool(keys: Keys):
    alipay = Alipay(make_config(keys), ledger=":memory:")
    AlipayASGIMiddleware(inner_app, alipay=alipay)  # the Starlette way: add_middleware(cls, alipay=alipay)
    alipay.asgi(inner_app)
    alipay.wsgi(inner_app)
    assert alipay._executor is None
    alipay.close()


class Delegate:
    """Not an ``Alipay``: an object with exactly the port's members, forwarded to one."""

    def __init__(self, alipay: Alipay) -> None:
        self._alipay = alipay
        self.starts = 0

    config = property(lambda self: self._alipay.config)
    protocol = property(lambda self: self._alipay.protocol)
    notify_path = property(lambda self: self._alipay.notify_path)
    return_path = property(lambda self: self._alipay.return_path)
    allowed_hosts = property(lambda self: self._alipay.allowed_hosts)
    trusted_proxies = property(lambda self: self._alipay.trusted_proxies)
    max_body = property(lambda self: self._alipay.max_body)
    executor = property(lambda self: self._alipay.executor)

    def start(self) -> None:
        self.starts += 1
        self._alipay.start()

    def notify_flow(self, raw: bytes, content_type: str | None) -> Any:
        return self._alipay.notify_flow(raw, content_type)

    def return_flow(self, method: str, query: bytes) -> Any:
        return self._alipay.return_flow(method, query)


def test_anything_with_the_port_can_be_mounted_on_both_fronts(keys: Keys):
    alipay = Alipay(make_config(keys), ledger=":memory:")
    seen: list[Any] = []

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["alipay"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"shop"]

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["alipay"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"shop"})

    delegate = Delegate(alipay)
    wsgi = AlipayWSGIMiddleware(wsgi_app, alipay=delegate)
    for _ in range(2):
        assert Client(wsgi).get("/", headers={"Host": "localhost"}).get_data() == b"shop"
    answer = Client(wsgi).post("/alipay/notify", data=b"x=1", content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400  # the notify flow ran: an unsigned body is refused

    asgi = AlipayASGIMiddleware(asgi_app, alipay=delegate)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"localhost")], "scheme": "http"}
    asyncio.run(asgi(scope, receive, send))
    assert sent[-1]["body"] == b"shop"
    assert len(seen) == 3
    assert all(helper.callback_urls()[0] == "http://localhost/alipay/notify" for helper in seen)
    assert delegate.starts == 2  # once per front, at its first request
    alipay.close()
