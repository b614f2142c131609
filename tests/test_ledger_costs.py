"""Costs that must not grow with the work: the SQLite ledger under a thread-per-request server, and the
ledger reads of ``list`` and ``replay`` on a large ledger (issue 13, section 2)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from werkzeug.serving import make_server

from alipay_middleware import Alipay
from alipay_middleware.ledger.sqlite import SQLiteLedger
from conftest import Recorder, inner_wsgi, notify_fields, signed_body

NOTIFY = "/alipay/notify"
REQUESTS = 5_000
#: Open fds and ledger connections allowed above the start: the live request threads' connections (a few),
#: not one per request ever served.
SLACK = 24


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def post(port: int, body: bytes) -> bytes:
    """One request on a new TCP connection (so the threaded server runs it on a new thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST " + NOTIFY.encode() + b" HTTP/1.1\r\nHost: shop.example\r\n"
                     b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_thread_per_request_server_keeps_fds_and_connections_flat(make_alipay: Callable[..., Alipay],
                                                                  keys: Any) -> None:
    """5,000 notifications through werkzeug's threaded server, each request on a thread of its own: the
    ledger closes the connections of the threads that have ended, so neither the process's open fds nor the
    ledger's connections grow with the number of requests (before: 2 fds and one connection per request)."""
    orders = {f"T{n}": "9.90" for n in range(50)}
    alipay = make_alipay(orders=orders)
    hook = Recorder()
    alipay.on_paid(hook)
    ledger = alipay.ledger
    assert isinstance(ledger, SQLiteLedger)
    bodies = [signed_body(notify_fields(out_trade_no=order), keys.alipay) for order in orders]
    server = make_server("127.0.0.1", 0, alipay.wsgi(inner_wsgi), threaded=True)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    port = server.server_address[1]
    try:
        assert post(port, bodies[0]).endswith(b"\r\n\r\nsuccess")  # the ledger's first thread has connected
        start_fds, start_connections = open_fds(), len(ledger._connections)
        peak_fds = peak_connections = 0
        for n in range(1, REQUESTS):
            answer = post(port, bodies[n % len(bodies)])
            assert answer.endswith(b"\r\n\r\nsuccess"), answer[:300]
            if n % 250 == 0:  # fail early, before a leak runs into the fd limit
                peak_fds, peak_connections = max(peak_fds, open_fds()), max(peak_connections, len(ledger._connections))
                assert peak_fds <= start_fds + SLACK, f"{peak_fds} fds open after {n} requests (from {start_fds})"
                assert peak_connections <= start_connections + SLACK, f"{peak_connections} ledger connections"
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert len(hook.calls) == len(bodies)  # each notification's hook ran once; the rest were resends
    assert peak_fds <= start_fds + SLACK and peak_connections <= start_connections + SLACK


def test_a_forked_child_never_closes_its_parents_connections(tmp_path: Any) -> None:
    """A child forked while the parent holds connections of ended threads opens its own and leaves the
    parent's alone (closing them would break the parent's SQLite locks)."""
    ledger = SQLiteLedger(str(tmp_path / "ledger.sqlite3"))
    try:
        worker = threading.Thread(target=lambda: ledger.get("x"))
        worker.start()
        worker.join()
        parents = [db for _, _, db in ledger._connections]
        assert len(parents) == 2  # the constructor's thread and the ended worker's
        pid = os.fork()
        if pid == 0:  # the child: connect (which releases the ended threads' connections of ITS process only)
            code = 1
            try:
                ledger.get("x")
                threading.Thread(target=lambda: ledger.get("y")).start()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for db in parents:  # still open in the parent: a closed connection raises here
            db.execute("SELECT 1").fetchone()
        assert ledger.get("x") is None
    finally:
        ledger.close()
