"""The WSGI front: moves bytes between the server and the core, nothing more.

    flask_app.wsgi_app = alipay.wsgi(flask_app.wsgi_app)

Requests for other paths get ``environ["alipay"]`` (the pay helper) and go straight to the wrapped app,
whose iterable is returned untouched. The notify path is answered here. The return path is verified
(for the legacy service also origin-checked, and a paid return handed to ``on_paid``) and then passed
on, with the result (or None) in ``environ["alipay.return"]``.

Async hooks also work here: they run to completion on a private event loop via asgiref (``drive.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_input_stream

from ..callbacks.answers import INTERNAL_ERROR, TOO_LARGE, Answer, precheck
from ..protocols.helper import RequestOrigin
from .drive import run_flow
from .port import FrontPort, check_port, warn_about_mount

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def wsgi_origin(environ: dict[str, Any]) -> RequestOrigin:
    # PEP 3333's order: the Host header, else the server's own name and port. Either is checked by the
    # core before it goes into a callback URL (helper.request_base).
    host = environ.get("HTTP_HOST")
    if host is None and environ.get("SERVER_NAME"):
        host = f"{environ['SERVER_NAME']}:{environ.get('SERVER_PORT') or 80}"
    return RequestOrigin(environ.get("wsgi.url_scheme", "http"), host, quote(environ.get("SCRIPT_NAME", "")))


def wsgi_client(environ: dict[str, Any]) -> tuple[str | None, str | None]:
    return environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR")


class AlipayWSGIMiddleware:
    def __init__(self, app: WSGIApp, alipay: FrontPort) -> None:
        if not callable(app):
            raise TypeError("the wrapped app must be a WSGI callable")
        self.app = app
        self.alipay = check_port(alipay, "AlipayWSGIMiddleware")
        self._started = False
        self._notify_path = alipay.notify_path
        self._return_path = alipay.return_path
        self._helper = alipay.protocol.helper_class

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        alipay = self.alipay
        if not self._started:
            alipay.start()
            warn_about_mount(alipay, environ.get("SCRIPT_NAME", ""))
            self._started = True
        path = environ.get("PATH_INFO", "")
        if path == self._notify_path:
            return self._notify(environ, start_response)
        environ["alipay"] = self._helper(alipay, environ, wsgi_origin, wsgi_client)
        if path == self._return_path:
            # PEP 3333 hands the query over as latin-1-decoded text: encoding it back restores the bytes.
            query = environ.get("QUERY_STRING", "").encode("latin-1")
            environ["alipay.return"] = run_flow(alipay.return_flow(environ.get("REQUEST_METHOD", ""), query), None)
        return self.app(environ, start_response)

    def _notify(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        max_body = self.alipay.max_body
        answer = precheck(environ.get("REQUEST_METHOD", ""), environ.get("CONTENT_LENGTH"), max_body)
        if answer is None:
            try:
                # One byte over the limit is let through so that a body without Content-Length
                # (wsgi.input_terminated) that is too long is seen as such, not cut to a prefix.
                body = get_input_stream(environ, max_content_length=max_body + 1).read(max_body + 1)
            except (HTTPException, OSError, ValueError):
                answer = Answer(400, "incomplete_body")
            else:
                if len(body) > max_body:
                    answer = TOO_LARGE
                else:
                    answer = run_flow(self.alipay.notify_flow(body, environ.get("CONTENT_TYPE")), INTERNAL_ERROR)
        status = HTTPStatus(answer.status)
        headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
        start_response(f"{status.value} {status.phrase}", headers)
        return [answer.body]
