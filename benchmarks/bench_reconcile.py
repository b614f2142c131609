"""``reconcile`` over many pending orders against a gateway that answers each query after 50 ms (information).

    python benchmarks/bench_reconcile.py [--n 400] [--latency 0.05] [--concurrency 1,8,16]

Starts the tests' loopback Open Platform gateway (``tests/openapi_gateway.py``: it checks every request's
signature and signs its answers), made to wait ``--latency`` seconds before answering each query, with N
paid trades; then, for each concurrency, a fresh SQLite ledger and ``alipay.reconcile(concurrency=C)``
over the N orders (each one queried, its payment fed through the hooks and recorded). Concurrency 1 is
what reconcile did before it asked about several orders at once. Prints the wall time and orders per
second of each run, and the time 10,000 orders would take at that rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from _shared import APP_ID, fresh_keys, print_table

from alipay_middleware import Alipay, OpenApiConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openapi_gateway import OpenApiGateway  # noqa: E402 - the tests' gateway stand-in


class SlowGateway(OpenApiGateway):
    """Answers each call ``latency`` seconds after it arrived, as a gateway across the Internet does."""

    latency = 0.05

    def _handle(self, handler: Any) -> None:
        time.sleep(self.latency)
        super()._handle(handler)


def run(keys: Any, gateway: SlowGateway, orders: list[str], concurrency: int, directory: str) -> float:
    config = OpenApiConfig(app_id=APP_ID, app_private_key=keys.app_private_pem,
                           alipay_public_key=keys.alipay_public_pem, gateway=gateway.url)
    alipay = Alipay(config, ledger=f"sqlite:///{directory}/ledger-{concurrency}.sqlite3",
                    allowed_hosts=["shop.example"])
    paid: list[str] = []
    lock = threading.Lock()

    @alipay.on_paid
    def on_paid(event: Any) -> None:
        with lock:
            paid.append(event.out_trade_no)

    alipay.order_amount(lambda out_trade_no: Decimal("9.90"))
    alipay.pending_orders(lambda created_before: orders)
    try:
        started = time.perf_counter()
        results = alipay.reconcile(older_than_minutes=0, concurrency=concurrency)
        elapsed = time.perf_counter() - started
    finally:
        alipay.close()
    assert [r.outcome for r in results] == ["processed"] * len(orders), {r.outcome for r in results}
    assert sorted(paid) == sorted(orders)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="pending orders (default 400)")
    parser.add_argument("--latency", type=float, default=0.05, help="the gateway's delay per query, seconds")
    parser.add_argument("--concurrency", default="1,8,16", help="comma-separated (default 1,8,16)")
    args = parser.parse_args()
    keys = fresh_keys()
    SlowGateway.latency = args.latency
    gateway = SlowGateway(keys.app.public_key(), keys.alipay, APP_ID)
    orders = [f"B{i:06d}" for i in range(args.n)]
    for out_trade_no in orders:
        gateway.add_trade(out_trade_no, "TRADE_SUCCESS", "9.90")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                elapsed = run(keys, gateway, orders, concurrency, directory)
                rate = args.n / elapsed
                rows.append([str(concurrency), f"{elapsed:.2f} s", f"{rate:.0f}", f"{10_000 / rate / 60:.1f} min"])
    finally:
        gateway.close()
    print_table(f"reconcile: {args.n} pending orders, the gateway answering after {args.latency * 1000:.0f} ms",
                ["concurrency", "wall time", "orders/s", "10k orders"], rows)


if __name__ == "__main__":
    main()
