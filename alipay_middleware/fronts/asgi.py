"""The ASGI front: a pure ASGI middleware that moves bytes between the server and the core.

    app = alipay.asgi(app)                                   # any ASGI app
    fastapi_app.add_middleware(AlipayASGIMiddleware, alipay=alipay)   # the Starlette way

``lifespan`` and ``websocket`` scopes pass straight through. HTTP requests get a copy of the scope with
``scope["alipay"]`` (the pay helper); the return path also gets ``scope["alipay.return"]``, worked
out like a notification (the legacy return makes a network call and may run ``on_paid``).

Nothing here blocks the event loop: a notification's parsing, verification, ledger calls and sync hooks
run in the ``Alipay`` instance's own thread pool (``hook_threads`` workers, asgiref
``thread_sensitive=False``); async hooks and an async ``order_amount`` are awaited on the event loop,
holding no pool thread while they wait (see ``drive.py``).
Deliberately not asgiref's default single thread-sensitive thread: one slow hook would stall every
other sync call of the app (Django runs its sync views there) and hooks for different trades could not
progress in parallel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..callbacks.answers import INTERNAL_ERROR, TOO_LARGE, precheck
from ..protocols.helper import RequestOrigin
from .drive import run_flow_async
from .port import FrontPort, check_port, warn_about_mount

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Disconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def asgi_client(scope: Scope) -> tuple[str | None, str | None]:
    client = scope.get("client")
    forwarded = [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"x-forwarded-for"]
    return (client[0] if client else None), (", ".join(forwarded) if forwarded else None)


def asgi_origin(scope: Scope) -> RequestOrigin:
    # The Host header (HTTP/2's :authority arrives as one), else the server's own address. Either is
    # checked by the core before it goes into a callback URL (helper.request_base).
    host = _header(scope, b"host")
    server = scope.get("server")
    if host is None and server:
        name = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
        host = name if server[1] is None else f"{name}:{server[1]}"
    return RequestOrigin(scope.get("scheme", "http"), host, scope.get("root_path", ""))


class AlipayASGIMiddleware:
    def __init__(self, app: ASGIApp, alipay: FrontPort) -> None:
        if not callable(app):
            raise TypeError("the wrapped app must be an ASGI callable")
        self.app = app
        self.alipay = check_port(alipay, "AlipayASGIMiddleware")
        self._started = False
        self._notify_path = alipay.notify_path
        self._return_path = alipay.return_path
        self._helper = alipay.protocol.helper_class

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        alipay = self.alipay
        if not self._started:
            alipay.start()
            warn_about_mount(alipay, scope.get("root_path", ""))
            self._started = True
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root):]
        if path == self._notify_path:
            return await self._notify(scope, receive, send)
        scope = dict(scope)
        scope["alipay"] = self._helper(alipay, scope, asgi_origin, asgi_client)
        if path == self._return_path:
            flow = alipay.return_flow(scope["method"], scope.get("query_string", b""))
            scope["alipay.return"] = await run_flow_async(flow, None, self._pool)
        return await self.app(scope, receive, send)

    def _pool(self) -> ThreadPoolExecutor:
        return self.alipay.executor

    async def _notify(self, scope: Scope, receive: Receive, send: Send) -> None:
        max_body = self.alipay.max_body
        answer = precheck(scope["method"], _header(scope, b"content-length"), max_body)
        if answer is None:
            try:
                body = await _read_body(receive, max_body)
            except _Disconnected:
                return  # nobody is listening for an answer; nothing was recorded
            if body is None:
                answer = TOO_LARGE
            else:
                flow = self.alipay.notify_flow(body, _header(scope, b"content-type"))
                answer = await run_flow_async(flow, INTERNAL_ERROR, self._pool)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        headers.append((b"content-length", str(len(answer.body)).encode("ascii")))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it grows past ``limit`` (a missing or lying Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
