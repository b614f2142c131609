"""The shop that ``bench_load.py`` serves: ``load_app:asgi_app`` under uvicorn, ``load_app:wsgi_app`` under gunicorn.

Not meant to be run by hand: every worker process imports it and builds its own ``Alipay`` from these
environment variables, which ``bench_load.py`` sets:

- ``ALIPAY_LOAD_LEDGER``: ``sqlite:////abs/path.sqlite3`` or ``postgresql://user@host:port/db``;
- ``ALIPAY_LOAD_PG_TABLE``: the PostgreSQL table (created beforehand by the benchmark, so the workers
  pass ``create_schema=False`` and never race each other's DDL);
- ``ALIPAY_LOAD_APP_KEY``, ``ALIPAY_LOAD_ALIPAY_PUB``: files holding the shop's private key and the key
  standing in for Alipay's public key (PEM), written by the benchmark into its temp dir;
- ``ALIPAY_LOAD_APP_ID``, ``ALIPAY_LOAD_SELLER_ID``, ``ALIPAY_LOAD_AMOUNT``: what the notifications carry;
- ``ALIPAY_LOAD_HOOK_LOG``: the file every hook call appends one line to, ``"<event key> <pid> <request
  id>\\n"``, in a single ``write`` on a descriptor opened with ``O_APPEND`` (lines from several processes
  never interleave); the request id is the client's ``X-Bench-Id`` header, so the benchmark knows which
  copy of a notification ran the hook;
- ``ALIPAY_LOAD_TIMING_LOG``: the file every request with an ``X-Bench-Id`` appends ``"<request id> <seconds>\\n"``
  to: the time from the server calling the app to the app's answer being complete, i.e. the middleware's
  own share of the answer time, without the wait in the server's queue;
- ``ALIPAY_LOAD_HOOK``: ``sync`` (a plain function) or ``async`` (an ``async def``);
- ``ALIPAY_LOAD_HOOK_MS``: simulated work inside the hook (``time.sleep`` / ``asyncio.sleep``), default 0;
- ``ALIPAY_LOAD_HOOK_THREADS``, ``ALIPAY_LOAD_LEASE_SECONDS``: passed to ``Alipay(...)``.

Any other path answers ``200 ok pid=<pid>`` (the benchmark's readiness probe).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from alipay_middleware import Alipay, Ledger, OpenApiConfig, PaymentEvent


def _env(name: str) -> str:
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(f"load_app is started by benchmarks/bench_load.py, which sets {name}") from None


def _ledger(url: str) -> str | Ledger:
    if url.startswith(("postgresql://", "postgres://")):
        from alipay_middleware.ledger.postgres import PostgresLedger

        return PostgresLedger(url, table=_env("ALIPAY_LOAD_PG_TABLE"), create_schema=False)
    return url


alipay = Alipay(
    OpenApiConfig(
        app_id=_env("ALIPAY_LOAD_APP_ID"),
        seller_id=_env("ALIPAY_LOAD_SELLER_ID"),
        app_private_key=Path(_env("ALIPAY_LOAD_APP_KEY")).read_text(),
        alipay_public_key=Path(_env("ALIPAY_LOAD_ALIPAY_PUB")).read_text(),
    ),
    ledger=_ledger(_env("ALIPAY_LOAD_LEDGER")),
    hook_threads=int(os.environ.get("ALIPAY_LOAD_HOOK_THREADS", "8")),
    lease_seconds=float(os.environ.get("ALIPAY_LOAD_LEASE_SECONDS", "600")),
)
AMOUNT = Decimal(_env("ALIPAY_LOAD_AMOUNT"))
HOOK_LOG = _env("ALIPAY_LOAD_HOOK_LOG")
TIMING_LOG = _env("ALIPAY_LOAD_TIMING_LOG")
HOOK_STYLE = _env("ALIPAY_LOAD_HOOK")
HOOK_SECONDS = float(os.environ.get("ALIPAY_LOAD_HOOK_MS", "0")) / 1000
# The client's X-Bench-Id of the request being answered. Set by the wrappers below; it reaches the hook
# in the Alipay pool thread (asgiref copies the context into it) and on the event loop (async hooks).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("bench_request_id", default="-")
_log_fd: dict[tuple[int, str], int] = {}  # (pid, file) -> descriptor: opened once per worker process


def append(path: str, line: str) -> None:
    pid = os.getpid()
    fd = _log_fd.get((pid, path))
    if fd is None:
        fd = _log_fd[pid, path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())


@alipay.order_amount
def order_amount(out_trade_no: str) -> Decimal:
    return AMOUNT  # every order of the benchmark costs the same; a dict or a SELECT in a real shop


def record(event: PaymentEvent) -> None:
    append(HOOK_LOG, f"{event.key} {os.getpid()} {REQUEST_ID.get()}\n")


if HOOK_STYLE == "async":
    @alipay.on_paid
    async def paid(event: PaymentEvent) -> None:
        if HOOK_SECONDS:
            await asyncio.sleep(HOOK_SECONDS)
        record(event)
elif HOOK_STYLE == "sync":
    @alipay.on_paid
    def paid(event: PaymentEvent) -> None:
        if HOOK_SECONDS:
            time.sleep(HOOK_SECONDS)
        record(event)
else:
    raise RuntimeError(f"ALIPAY_LOAD_HOOK must be 'sync' or 'async', not {HOOK_STYLE!r}")


# -- WSGI (gunicorn) -----------------------------------------------------------------------------------

def inner_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"ok pid={os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_wsgi = alipay.wsgi(inner_wsgi)


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    request_id = environ.get("HTTP_X_BENCH_ID", "-")
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    try:
        return _wsgi(environ, start_response)  # the notify answer is complete when this returns
    finally:
        REQUEST_ID.reset(token)
        if request_id != "-":
            append(TIMING_LOG, f"{request_id} {time.perf_counter() - started:.6f}\n")


# -- ASGI (uvicorn) ------------------------------------------------------------------------------------

async def inner_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    body = f"ok pid={os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_asgi = alipay.asgi(inner_asgi)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    request_id = "-"
    if scope["type"] == "http":
        for name, value in scope["headers"]:
            if name == b"x-bench-id":
                request_id = value.decode("latin-1")
                REQUEST_ID.set(request_id)  # each request runs in its own task and context
                break
    started = time.perf_counter()
    await _asgi(scope, receive, send)  # returns once the answer is sent
    if request_id != "-":
        append(TIMING_LOG, f"{request_id} {time.perf_counter() - started:.6f}\n")
