"""The loopback server under the fake gateways of both protocols (see tests/README.md for which to use).

``openapi_gateway.OpenApiGateway`` (the Open Platform's server-side APIs) and ``legacy_gateway.LegacyGateway``
(the legacy mapi gateway) are subclasses: each names the HTTP method its protocol uses (``accepts``; the
other one lands in ``problems`` and is answered 405) and answers one request in ``_handle``. The base gives
them:

- a threaded HTTP server on 127.0.0.1 on a free port, and ``url`` (``http://127.0.0.1:<port>/gateway.do``);
- ``trades`` (by ``out_trade_no``, found by either id with ``_find``), ``problems`` (anything wrong with a
  request: the tests' fixtures assert it stays empty), ``lock`` (held around the stub's own state);
- a queue of faults per request kind (``_queue_fault``, ``_take_fault``): the next ``times`` requests of
  that kind take the fault, then it is gone;
- the transport faults both protocols share (``_transport_fault``): ``drop`` (the connection closed without
  an answer), ``hang`` (no answer until the stub closes), ``http_502``, ``http_404``;
- ``refused_url()``: a loopback URL whose port refuses connections (bound, never listening);
- ``close()``: ends hangs, stops the server and frees the refusing ports.
"""

from __future__ import annotations

import http.server
import itertools
import socket
import threading
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar


class HasTradeNo(Protocol):
    trade_no: str


TradeT = TypeVar("TradeT", bound=HasTradeNo)


class FakeGateway(Generic[TradeT]):
    #: The HTTP method this protocol's gateway takes.
    accepts = "POST"

    def __init__(self) -> None:
        self.trades: dict[str, TradeT] = {}
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._faults: dict[str, list[list[Any]]] = {}
        self._numbers = itertools.count(1)
        self._refusing: list[socket.socket] = []
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                gateway._dispatch(self)

            def do_POST(self) -> None:  # noqa: N802
                gateway._dispatch(self)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # a storm of calls must not wait on SYN retries

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gateway.do"

    # -- test controls ---------------------------------------------------------------------------------

    def refused_url(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused
        self._refusing.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/gateway.do"

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        for sock in self._refusing:
            sock.close()

    # -- for the subclasses ------------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _dispatch(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.command != self.accepts:
            self.problems.append(f"{handler.command} {handler.path[:80]}")
            handler.send_error(405)
            return
        self._handle(handler)

    def _next_trade_no(self, prefix: str) -> str:
        return f"{prefix}{next(self._numbers):012d}"

    def _queue_fault(self, key: str, kind: str, times: int, options: dict[str, Any]) -> None:
        with self.lock:
            self._faults.setdefault(key, []).append([kind, times, options])

    def _take_fault(self, key: str) -> tuple[str, dict[str, Any]]:
        """The fault the next request of ``key`` takes (``""`` for none); called with ``lock`` held."""
        queue = self._faults.get(key)
        if not queue:
            return "", {}
        kind, options = queue[0][0], queue[0][2]
        queue[0][1] -= 1
        if queue[0][1] <= 0:
            queue.pop(0)
        return kind, options

    def _transport_fault(self, handler: http.server.BaseHTTPRequestHandler, kind: str) -> bool:
        """Play ``drop``, ``hang``, ``http_502`` or ``http_404``; False for any other kind (the request goes on)."""
        if kind == "hang":
            self.closing.wait(30)
            return True
        if kind == "drop":
            return True
        if kind == "http_502":
            handler.send_error(502, "Bad Gateway")
            return True
        if kind == "http_404":
            handler.send_error(404, "Not Found")
            return True
        return False

    def _find(self, ids: Mapping[str, Any]) -> TradeT | None:
        """The trade ``ids`` names: by ``trade_no`` when it has one, else by ``out_trade_no``."""
        if ids.get("trade_no"):
            return next((t for t in self.trades.values() if t.trade_no == ids["trade_no"]), None)
        return self.trades.get(ids.get("out_trade_no", ""))

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
