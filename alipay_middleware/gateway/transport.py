"""Every call from the shop to Alipay's gateway, on one transport and one policy.

:class:`Transport` carries the server-side API calls (:class:`~alipay_middleware.gateway.client.AlipayClient`,
:class:`~alipay_middleware.gateway.legacy_client.LegacyClient`) and the legacy service's ``notify_verify`` origin
check (:func:`notify_verify`). The policy, the same for all of them:

- Standard library only (``http.client``). Environment proxy settings (``http_proxy``, ``https_proxy``,
  ``ALL_PROXY``, ``no_proxy``) are never read: a proxy is used only when configured (``proxy=`` on
  ``OpenApiConfig``/``LegacyConfig``).
- Only the configured gateway's host and port are ever asked. A redirect (any 3xx) is an error, never
  followed: it could carry a signed request, or the origin check, to another host.
- ``timeout`` bounds each attempt: each step of connecting (TCP, the proxy's ``CONNECT``, the TLS
  handshake) waits at most ``timeout``, and the attempt ends ``timeout`` after it began, checked before
  sending and before every read of the answer.
- Answers longer than ``max_response`` are refused; only a complete 200 answer is returned.
- Each public call logs one INFO line (method, trade number, outcome), never keys, bodies or credentials.

**Proxy.** ``proxy="http://user:password@proxy.internal:3128"`` sends every call through an HTTP proxy,
for shops whose outbound traffic must leave through an address Alipay has on its IP allow-list. Each
request opens an HTTP ``CONNECT`` tunnel to the gateway's host and port (with ``Proxy-Authorization:
Basic`` when the URL carries a user), then speaks TLS end to end with the gateway inside it: the proxy
sees the host and port, never the request. An ``http://`` gateway (a local simulator) is tunnelled the same
way, so the proxy must allow ``CONNECT`` to that port (many allow 443 only); the request is never handed
to the proxy in plain text. Only ``http://`` proxy URLs are accepted, with an explicit port and nothing
after it; user name and password are percent-decoded. The credentials never appear in a log line, an
exception message or a repr.

The callback flow never calls :func:`notify_verify` itself: it yields the call to its driver (see
``callbacks/``), which runs it in the request's thread (WSGI) or in the ``Alipay`` instance's thread pool
(ASGI), never on the event loop.
"""

from __future__ import annotations

import functools
import http.client
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..errors import GatewayUnavailable, ResponseError
from ..protocols.proxy import Proxy, parse_proxy

__all__ = ["USER_AGENT", "Proxy", "Transport", "TransportError", "notify_verify", "parse_proxy"]

USER_AGENT = "alipay-middleware"
#: The longest ``notify_verify`` answer read: the verdict is one word.
ORIGIN_ANSWER_LIMIT = 4096

log = logging.getLogger("alipay_middleware.outbound")

_CHUNK = 64 * 1024


# -- one request -----------------------------------------------------------------------------------------


class TransportError(Exception):
    """One attempt failed below the Alipay protocol. ``sent`` says the request may have reached Alipay;
    ``retryable`` whether trying again can help (network trouble, an HTTP 5xx)."""

    def __init__(self, reason: str, detail: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sent = sent
        self.retryable = retryable


class Transport:
    """HTTP exchanges with one gateway (its scheme, host and port), under the policy above.

    Thread-safe: each request opens its own connection. The TLS context (the system's trusted CAs,
    hostname checked) is made once per transport.
    """

    def __init__(self, gateway: str, *, timeout: float, max_response: int, proxy: str | None = None) -> None:
        parts = urlsplit(gateway)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("gateway must be an absolute http(s) URL with a host")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path or "/"
        self.query = parts.query
        self.timeout = float(timeout)
        self.max_response = max_response
        self.proxy = parse_proxy(proxy)
        self._ssl = ssl.create_default_context() if self.https else None

    def __repr__(self) -> str:
        via = f" via {self.proxy}" if self.proxy is not None else ""
        return f"<Transport {'https' if self.https else 'http'}://{self.host}:{self.port}{via}>"

    def target(self, query: str) -> str:
        """The gateway's path with its own query (if any) and then ``query``."""
        return self.path + "?" + (f"{self.query}&" if self.query else "") + query

    def _connection(self) -> http.client.HTTPConnection:
        host, port = (self.host, self.port) if self.proxy is None else (self.proxy.host, self.proxy.port)
        connection: http.client.HTTPConnection
        if self._ssl is not None:
            connection = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        if self.proxy is not None:
            # CONNECT to the gateway, then TLS with it (server name and certificate: the gateway's host).
            headers = {"Proxy-Authorization": self.proxy.authorization} if self.proxy.authorization else None
            connection.set_tunnel(self.host, self.port, headers=headers)
        return connection

    def _error(self, reason: str, exc: BaseException | str, *, sent: bool, retryable: bool = True) -> TransportError:
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if self.proxy is not None:
            detail = self.proxy.scrub(detail)
            if not sent:
                detail += f" (via proxy {self.proxy.host}:{self.proxy.port})"
        return TransportError(reason, detail[:300], sent=sent, retryable=retryable)

    def request(self, verb: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """One request within ``timeout``: the 200 answer's body, or a :class:`TransportError`
        (:class:`~alipay_middleware.errors.ResponseError` for an answer over ``max_response``)."""
        deadline = time.monotonic() + self.timeout
        connection = self._connection()
        response: http.client.HTTPResponse | None = None
        try:
            try:
                connection.connect()
                sock = connection.sock
                if not isinstance(sock, socket.socket):  # pragma: no cover - connect() sets it or raises
                    raise self._error("connect_failed", "no socket", sent=False)
                _remaining(sock, deadline)  # connecting took the whole deadline: nothing is sent
            except OSError as exc:  # refused, unreachable, DNS, proxy refusal, TLS handshake, connect timeout
                reason = "timeout" if isinstance(exc, TimeoutError) else "connect_failed"
                raise self._error(reason, exc, sent=False) from None
            # From here on Alipay may have the request: any failure leaves the outcome unknown.
            try:
                connection.request(verb, target, body, dict(headers))
                _remaining(sock, deadline)
                response = connection.getresponse()
                status = response.status
                if status != 200:
                    why = " (a redirect: not followed)" if 300 <= status <= 399 else ""
                    raise self._error("http_error", f"gateway answered HTTP {status}{why}", sent=True,
                                      retryable=500 <= status <= 599)
                data = bytearray()
                while not response.isclosed():  # read() closes it (and the socket) at the body's end
                    _remaining(sock, deadline)
                    chunk = response.read(min(_CHUNK, self.max_response + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > self.max_response:
                        limit = self.max_response
                        raise ResponseError("malformed_response", f"the answer is longer than {limit} bytes")
                if response.length:  # read(amt) returns b"" at an early end instead of raising IncompleteRead
                    raise self._error("connection_lost", f"the body ended {response.length} bytes early",
                                      sent=True)
                return bytes(data)
            except TimeoutError as exc:
                raise self._error("timeout", exc, sent=True) from None
            except (OSError, http.client.HTTPException) as exc:  # reset, closed early, truncated body
                raise self._error("connection_lost", exc, sent=True) from None
        finally:
            if response is not None:
                response.close()
            connection.close()


def _remaining(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)


# -- the legacy origin check -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _origin_transport(origin: str, timeout: float, proxy: str | None) -> Transport:
    # One per gateway, timeout and proxy, so the TLS context (the CA bundle) is not loaded per notification.
    return Transport(origin, timeout=timeout, max_response=ORIGIN_ANSWER_LIMIT, proxy=proxy)


def notify_verify(url: str, timeout: float, proxy: str | None = None) -> bytes:
    """GET the legacy gateway's ``notify_verify`` URL (``LegacyProtocol.origin_url``): the 200 answer's
    body, at most :data:`ORIGIN_ANSWER_LIMIT` bytes, for ``LegacyProtocol.check_origin`` to judge.

    Never retried here: Alipay resends the notification. Raises
    :class:`~alipay_middleware.errors.GatewayUnavailable` for anything that is not a complete 200 answer
    (refused, reset, timed out, a redirect, an HTTP error, too long).
    """
    parts = urlsplit(url)
    transport = _origin_transport(f"{parts.scheme}://{parts.netloc}/", timeout, proxy)
    outcome = "error"
    try:
        answer = transport.request("GET", (parts.path or "/") + "?" + parts.query, None,
                                   {"Accept": "text/plain, */*", "User-Agent": USER_AGENT})
        outcome = "answered"
        return answer
    except TransportError as exc:
        outcome = f"unavailable/{exc.reason}"
        raise GatewayUnavailable(f"notify_verify: {exc.reason}: {exc.detail}") from None
    except ResponseError:
        outcome = "unavailable/too_long"
        raise GatewayUnavailable(f"notify_verify: answer longer than {ORIGIN_ANSWER_LIMIT} bytes") from None
    finally:
        log.info("alipay call method=notify_verify outcome=%s attempts=1", outcome)
