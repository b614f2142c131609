"""A replayed legacy return against a slow gateway, and a genuine notification arriving meanwhile.

    python benchmarks/bench_return_replay.py [--replays 40] [--delay 2] [--threads 8]

The attack from issue 11 (2.1): a buyer's signed return URL never expires, so anyone holding it can load
it again and again. Each load used to make a ``notify_verify`` call (up to ``verify_timeout``) on the
threads notifications need. A loopback gateway answers ``notify_verify`` for the replayed return's id
after ``--delay`` seconds (``false``: its minute is long over) and for every other id at once, so the
notification's latency measures only its wait for a thread. Real servers on loopback, one process each:
uvicorn (ASGI front, ``hook_threads`` threads) and gunicorn gthread (WSGI front, ``--threads`` request
threads). Scenarios:

- ``baseline``: the notification alone;
- ``paid trade``: the trade was paid (its notification is done in the ledger), then ``--replays`` loads
  of its return URL at once, then the notification of another trade;
- ``unknown to the ledger``: the same, for a trade the ledger has nothing done about (the return cannot be
  answered from the ledger, so only the bound on returns' calls to Alipay helps).

Columns: the notification's latency; how many ``notify_verify`` calls the replays made (each one a call
to Alipay under the merchant's partner id); how many replays got "not confirmed yet" (``confirmed=False``;
always 0 before the change, which had no such answer); how long the last replay took.

For the "before" figure run the same script against the code before the change, e.g.
``PYTHONPATH=/path/to/old/checkout python benchmarks/bench_return_replay.py`` (the servers inherit it).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, urlsplit

import alipay_middleware
from alipay_middleware import sign_string

PARTNER = "2088000000000002"
MD5_KEY = "k3xq9z0m1n2b3v4c5x6z7l8k9j0h1g2f"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
RETURN_ID = "RqPnCoPT3K9/vwbh3InYz+8Yh="

APP = '''
import os
from decimal import Decimal

from alipay_middleware import Alipay, LegacyConfig

config = LegacyConfig(partner=os.environ["BENCH_PARTNER"], key=os.environ["BENCH_KEY"],
                      gateway=os.environ["BENCH_GATEWAY"], verify_timeout=10)
alipay = Alipay(config, ledger="sqlite:///" + os.environ["BENCH_LEDGER"],
                hook_threads=int(os.environ["BENCH_THREADS"]))
alipay.order_amount(lambda out_trade_no: Decimal("9.90"))
alipay.on_paid(lambda event: None)


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr(environ.get("alipay.return", "absent")).encode()]


async def inner_asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = repr(scope.get("alipay.return", "absent")).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


wsgi_app = alipay.wsgi(inner)
asgi_app = alipay.asgi(inner_asgi)
'''


def md5_signed(fields: dict[str, str]) -> dict[str, str]:
    sign = hashlib.md5(sign_string(fields, ("sign", "sign_type")).encode() + MD5_KEY.encode()).hexdigest()
    return {**fields, "sign": sign}


def form(fields: dict[str, str]) -> str:
    return "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items())


def notification(out_trade_no: str, notify_id: str) -> bytes:
    return form(md5_signed({
        "notify_time": "2024-01-01 12:00:07", "notify_type": "trade_status_sync", "notify_id": notify_id,
        "sign_type": "MD5", "out_trade_no": out_trade_no, "subject": "Tea", "payment_type": "1",
        "trade_no": "2024010121001004000000000002", "trade_status": "TRADE_SUCCESS",
        "gmt_payment": "2024-01-01 12:00:06", "seller_id": PARTNER, "total_fee": "9.90",
    })).encode()


def return_target(out_trade_no: str) -> str:
    fields = md5_signed({
        "is_success": "T", "sign_type": "MD5", "out_trade_no": out_trade_no, "subject": "Tea",
        "payment_type": "1", "exterface": "create_direct_pay_by_user", "trade_no": "2024010121001004000000000001",
        "trade_status": "TRADE_SUCCESS", "notify_id": quote_plus(RETURN_ID), "notify_time": "2024-01-01 12:00:07",
        "notify_type": "trade_status_sync", "seller_id": PARTNER, "total_fee": "9.90",
    })
    return "/alipay/return?" + form(fields)


class Gateway:
    """``notify_verify`` on loopback: the replayed return's id after ``delay`` seconds, others at once."""

    def __init__(self, delay: float) -> None:
        gateway = self
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                notify_id = parse_qs(urlsplit(self.path).query).get("notify_id", [""])[0]
                with gateway.lock:
                    gateway.calls[notify_id] += 1
                if notify_id == RETURN_ID:
                    time.sleep(delay)
                    body = b"false"
                else:
                    body = b"true"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gateway.do"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, target, body=body, headers={"Content-Type": FORM} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Serving:
    def __init__(self, front: str, workdir: Path, env: dict[str, str], threads: int) -> None:
        self.port = free_port()
        if front == "asgi":
            argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(workdir), "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "warning", "--no-access-log", "--backlog", "256",
                    "bench_replay_app:asgi_app"]
        else:
            argv = [sys.executable, "-m", "gunicorn", "--chdir", str(workdir), "--bind", f"127.0.0.1:{self.port}",
                    "--no-control-socket", "--log-level", "warning", "-w", "1", "-k", "gthread",
                    "--threads", str(threads), "--backlog", "256", "--timeout", "120", "bench_replay_app:wsgi_app"]
        self.log = open(workdir / f"{front}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{front} server exited:\n{(workdir / f'{front}.log').read_text()[-2000:]}")
            try:
                if send(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{front} server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started
            self.proc.wait()
        self.log.close()


def run(front: str, scenario: str, args: argparse.Namespace, gateway: Gateway, workdir: Path, n: int) -> str:
    env = dict(os.environ, BENCH_PARTNER=PARTNER, BENCH_KEY=MD5_KEY, BENCH_GATEWAY=gateway.url,
               BENCH_LEDGER=str(workdir / f"ledger-{n}.sqlite3"), BENCH_THREADS=str(args.threads))
    server = Serving(front, workdir, env, args.threads)
    try:
        if scenario == "paid trade":
            status, body = send(server.port, "POST", "/alipay/notify", notification("R1", f"paid-{n}"))
            assert (status, body) == (200, b"success"), (status, body)
        with gateway.lock:
            gateway.calls[RETURN_ID] = 0
        answers: list[tuple[int, bytes]] = []
        finished: list[float] = []
        started = time.perf_counter()

        def replay() -> None:
            answer = send(server.port, "GET", return_target("R1"))
            answers.append(answer)
            finished.append(time.perf_counter() - started)

        replays = [threading.Thread(target=replay) for _ in range(args.replays if scenario != "baseline" else 0)]
        for thread in replays:
            thread.start()
        if replays:
            time.sleep(0.5)  # let the replays take their threads
        sent = time.perf_counter()
        status, body = send(server.port, "POST", "/alipay/notify", notification("N1", f"genuine-{n}"))
        latency = time.perf_counter() - sent
        assert (status, body) == (200, b"success"), (status, body)
        for thread in replays:
            thread.join()
    finally:
        server.stop()
    unconfirmed = sum(b"confirmed=False" in body for _, body in answers)
    paid = sum(b"paid=True" in body for _, body in answers)
    last = f"{max(finished):6.2f} s" if finished else "      -"
    return (f"| {front} | {scenario} | {latency * 1000:8.1f} ms | {gateway.calls[RETURN_ID]:3d} | {unconfirmed:3d} | "
            f"{paid:3d} | {last} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=40)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the gateway takes for the return's id")
    parser.add_argument("--threads", type=int, default=8, help="hook_threads (uvicorn) and gthread threads")
    parser.add_argument("--fronts", default="asgi,wsgi")
    args = parser.parse_args()
    print(f"code under test: {Path(alipay_middleware.__file__).parent}")
    print(f"{args.replays} replays, gateway {args.delay} s for the return's id, {args.threads} threads\n")
    gateway = Gateway(args.delay)
    rows = ["| front | scenario | notification latency | notify_verify calls by the replays | "
            "'not confirmed yet' | replays told paid | last replay answered after |",
            "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_replay_app.py").write_text(textwrap.dedent(APP))
        n = 0
        for front in args.fronts.split(","):
            for scenario in ("baseline", "paid trade", "unknown to the ledger"):
                n += 1
                print(run(front, scenario, args, gateway, workdir, n), flush=True)
    gateway.close()


if __name__ == "__main__":
    main()
