"""The SQLite ledger under a thread-per-request server: open fds, RSS and ledger connections (information).

    python benchmarks/bench_threads.py [--n 5000] [--marks 1000,3000,5000] [--http]

``flask run``, Django's runserver and wsgiref's threading server run every request on a new thread. N
unique signed notifications go through the real WSGI callable, each called from a thread of its own that
ends when its answer is read (with ``--http``: through werkzeug's threaded server, one TCP connection and
so one thread per request, which is slower). After each mark the script prints the process's open file
descriptors (``/proc/self/fd``), its resident memory (``VmRSS``) and the connections the ledger holds.

To compare with an older version, run the same script with that version first on the path, e.g. from a
worktree of it: ``PYTHONPATH=/path/to/old-tree python benchmarks/bench_threads.py``. The first line says
which package was measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from _shared import FORM, fresh_keys, make_alipay, print_table, signed_body, typical_notify_fields
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

import alipay_middleware

AMOUNT = "88.88"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def held_connections(ledger: Any) -> int:
    return len(getattr(ledger, "_connections", ()))


def call_on_new_thread(app: Any, body: bytes) -> str:
    builder = EnvironBuilder(path="/alipay/notify", method="POST", data=body, content_type=FORM,
                             headers={"Host": "shop.example"})
    environ = builder.get_environ()
    builder.close()
    answer: list[bytes] = []

    def request() -> None:
        answer.append(b"".join(app(environ, lambda status, headers, exc_info=None: None)))

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    return answer[0].decode()


def post(port: int, body: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /alipay/notify HTTP/1.1\r\nHost: shop.example\r\nContent-Type: " + FORM.encode()
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).split(b"\r\n\r\n", 1)[-1].decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--marks", default="1000,3000,5000")
    parser.add_argument("--http", action="store_true", help="through werkzeug's threaded server")
    args = parser.parse_args()
    marks = sorted({int(m) for m in args.marks.split(",") if int(m) <= args.n} | {args.n})
    print(f"package: {Path(alipay_middleware.__file__).parent}")
    keys = fresh_keys()
    with tempfile.TemporaryDirectory() as workdir:
        alipay = make_alipay(keys, f"sqlite:///{workdir}/ledger.sqlite3")
        fields = [typical_notify_fields(i, AMOUNT) for i in range(args.n)]
        orders = {f["out_trade_no"]: Decimal(AMOUNT) for f in fields}
        alipay.order_amount(orders.get)
        alipay.on_paid(lambda event: None)
        app = alipay.wsgi(lambda environ, start_response: [])
        bodies = [signed_body(f, keys.alipay) for f in fields]
        server = None
        if args.http:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access line per request
            server = make_server("127.0.0.1", 0, app, threaded=True)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        rows = [["start", "-", str(open_fds()), f"{rss_mb():.0f} MB", str(held_connections(alipay.ledger))]]
        refused = 0
        try:
            for i, body in enumerate(bodies, 1):
                answer = post(server.server_address[1], body) if server else call_on_new_thread(app, body)
                refused += answer != "success"
                if i in marks:
                    rows.append([f"{i:,} requests", str(refused), str(open_fds()), f"{rss_mb():.0f} MB",
                                 str(held_connections(alipay.ledger))])
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            alipay.close()
        how = "werkzeug threaded server" if args.http else "WSGI callable, a new thread per request"
        print_table(f"SQLite ledger, thread per request ({how})",
                    ["after", "not success", "open fds", "RSS", "ledger connections"], rows)


if __name__ == "__main__":
    main()
