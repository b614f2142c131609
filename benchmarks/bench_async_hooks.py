"""Slow ``async def`` hooks on the ASGI front: throughput, latency, and copies answered while hooks run (information).

    python benchmarks/bench_async_hooks.py [--n 100] [--hook-ms 200] [--threads 1,8]

N unique signed notifications arrive at once (one task each, on one event loop, through the real ASGI
callable; scopes and signatures made before the clock starts), with an ``on_paid`` hook that awaits
``asyncio.sleep(hook_ms)`` and a SQLite ledger file per run. As each hook starts, a copy of its notification
is sent (as Alipay's resend or a second delivery would arrive while the hook runs): it must be answered 503
``in_progress``. Printed per ``hook_threads``: the rate at which the N were answered ``success``, their
latency from the burst's start, the copies' latency, the most hooks running at once, and the answers.

To compare with an older version, run the same script with that version first on the path, e.g. from a
checkout of it: ``PYTHONPATH=/path/to/old-tree python benchmarks/bench_async_hooks.py``. The first line
says which package was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from _shared import fresh_keys, make_alipay, print_table, signed_body, typical_notify_fields
from bench_notify import asgi_post

import alipay_middleware

AMOUNT = "88.88"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


async def burst(app: Any, bodies: dict[str, bytes], started: dict[str, asyncio.Event]) -> dict[str, Any]:
    """Post every body at once; post a copy of each as soon as its hook has started."""
    answers: Counter[str] = Counter()
    firsts: list[float] = []
    copies: list[float] = []
    clock = time.perf_counter()

    async def original(body: bytes) -> None:
        answers[await asgi_post(app, body)] += 1
        firsts.append(time.perf_counter() - clock)

    async def copy(trade: str, body: bytes) -> None:
        await started[trade].wait()
        sent = time.perf_counter()
        answers["copy: " + await asgi_post(app, body)] += 1
        copies.append(time.perf_counter() - sent)

    await asyncio.gather(*(original(body) for body in bodies.values()),
                         *(copy(trade, body) for trade, body in bodies.items()))
    return {"seconds": max(firsts), "firsts": firsts, "copies": copies, "answers": answers}


def run(keys: Any, n: int, hook_seconds: float, threads: int, workdir: Path) -> list[str]:
    fields = [typical_notify_fields(i, AMOUNT) for i in range(n)]
    bodies = {f["out_trade_no"]: signed_body(f, keys.alipay) for f in fields}
    alipay = make_alipay(keys, f"sqlite:///{workdir}/ledger-{threads}.sqlite3", hook_threads=threads,
                         allowed_hosts=["shop.example"])
    orders = {trade: Decimal(AMOUNT) for trade in bodies}
    alipay.order_amount(orders.get)
    running, peak, calls = 0, 0, Counter[str]()

    async def main() -> dict[str, Any]:
        started = {trade: asyncio.Event() for trade in bodies}

        @alipay.on_paid
        async def paid(event: Any) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            started[event.out_trade_no].set()
            await asyncio.sleep(hook_seconds)
            calls[event.key] += 1
            running -= 1

        async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never reached
            raise AssertionError("only the notify path is posted")

        return await burst(alipay.asgi(inner), bodies, started)

    try:
        figures = asyncio.run(main())
    finally:
        alipay.close()
    firsts, copies = figures["firsts"], figures["copies"]
    once = len(calls) == n and set(calls.values()) == {1}
    answers = ", ".join(f"{count} {answer}" for answer, count in sorted(figures["answers"].items()))
    return [str(threads), f"{n / figures['seconds']:,.1f}/s", ms(statistics.median(firsts)),
            ms(percentile(firsts, 0.99)), ms(statistics.median(copies)), ms(percentile(copies, 0.99)), str(peak),
            "yes" if once else "NO", answers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--hook-ms", type=float, default=200.0)
    parser.add_argument("--threads", default="1,8", help="hook_threads values, comma-separated")
    args = parser.parse_args()
    print(f"package: {Path(alipay_middleware.__file__).parent}")
    keys = fresh_keys()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(run(keys, args.n, args.hook_ms / 1000, threads, Path(workdir)))
    print_table(f"{args.n} notifications at once, async on_paid hook of {args.hook_ms:g} ms, ASGI front, SQLite",
                ["hook_threads", "rate", "p50", "p99", "copy p50", "copy p99", "hooks at once", "hook once each",
                 "answers"], rows)


if __name__ == "__main__":
    main()
