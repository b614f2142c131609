"""What the simulator's costs do as its state grows (issue 13 item 2.6): each figure should stay flat.

For 250, 2,000 and 10,000 orders in a state file it prints:

- order creation: a signed legacy pay request (MD5, so signing costs nothing) through the WSGI app, up to
  the 303 to the checkout page, per order (best of ``--repeat`` runs of ``--k`` orders);
- trade lookup: ``store.find(partner, trade_no=...)`` (what the query APIs do) and ``sim.trade(out_trade_no)``;
- the admin page (``GET /``): bytes and render time;
- state file write: one changed trade written through (``store.save``), and the file's size;

then, apart from the order count, the delivery log and the notify-id table after ``--deliveries``
notification attempts (2,500 orders paid on the checkout page, each notification sent to a closed
loopback port and tried 8 times at a tiny ``time_scale``) and as many notify ids issued and acknowledged.

The orders are put in the store directly (one transaction) before the clock starts; only the measured
operations go through the simulator. Run it against older code with ``PYTHONPATH=<checkout>``; the
``--state json`` variant exists only there (the JSON state file is gone).

    python benchmarks/bench_simulator.py                  # ~1 min
    python benchmarks/bench_simulator.py --state json     # old code only
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import pickle
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

from werkzeug.test import Client

from alipay_middleware import sign_string
from alipay_middleware.simulator import LegacyMerchant, SimTrade, Simulator

PARTNER = "2088000000000001"
MD5_KEY = "0123456789abcdef0123456789abcdef"
SIZES = (250, 2000, 10_000)
CST = timezone(timedelta(hours=8))


def sim_for(path: Path | None, **kwargs: Any) -> Simulator:
    return Simulator(legacy_merchants=[LegacyMerchant(partner=PARTNER, md5_key=MD5_KEY, name="Bench shop")],
                     state_path=path, **kwargs)


@contextlib.contextmanager
def one_transaction(sim: Simulator) -> Iterator[None]:
    """Bulk-load the store: JSON written once at the end, SQLite in one transaction."""
    store: Any = sim._store
    backend = getattr(store, "_backend", None)
    write = getattr(backend, "_write", None)
    db = getattr(backend, "db", None)
    if write is not None:
        backend._write = lambda: None  # type: ignore[union-attr]
    if db is not None:
        db.execute("BEGIN")
    try:
        yield
    finally:
        if write is not None:
            backend._write = write  # type: ignore[union-attr]
            write()
        if db is not None:
            db.execute("COMMIT")


def fill(sim: Simulator, n: int) -> list[SimTrade]:
    store: Any = sim._store
    now = datetime.now(CST)
    made = []
    with one_transaction(sim):
        for i in range(n):
            trade = SimTrade(kind="legacy", merchant_id=PARTNER, out_trade_no=f"F{i:06d}",
                             trade_no=store.next_trade_no(now), subject=f"Filler order {i} 茶",
                             total_amount=Decimal("9.90"), status="TRADE_SUCCESS" if i % 2 else "WAIT_BUYER_PAY",
                             charset="utf-8", notify_url="http://127.0.0.1:9/notify",
                             return_url="http://127.0.0.1:9/return", created_at=now, method="create_direct_pay_by_user",
                             sign_type="MD5", seller_id=PARTNER, buyer_acted=bool(i % 2),
                             paid_at=now if i % 2 else None)
            store.add(trade)
            made.append(trade)
    return made


def pay_url(out_trade_no: str, notify_url: str = "http://127.0.0.1:9/notify",
            return_url: str | None = "http://127.0.0.1:9/return") -> str:
    """A legacy pay request signed with the partner's MD5 key (md5 of the sign string and the key)."""
    params = {"service": "create_direct_pay_by_user", "partner": PARTNER, "_input_charset": "utf-8",
              "out_trade_no": out_trade_no, "subject": "Bench 茶", "payment_type": "1", "total_fee": "9.90",
              "seller_id": PARTNER, "notify_url": notify_url, **({"return_url": return_url} if return_url else {})}
    text = sign_string(params, ("sign", "sign_type")) + MD5_KEY
    signed = {**params, "sign": hashlib.md5(text.encode("utf-8")).hexdigest(), "sign_type": "MD5"}
    return "/gateway.do?" + urlencode(signed, quote_via=quote_plus)


def best(runs: int, action: Callable[[], float]) -> float:
    return min(action() for _ in range(runs))


def per_call(action: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - start) / calls


def measure(n: int, suffix: str, k: int, repeat: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"state{suffix}"
        sim = sim_for(path)
        try:
            trades = fill(sim, n)
            client = Client(sim)
            batches = iter([[pay_url(f"N{n}-{r}-{i}") for i in range(k)] for r in range(repeat)])

            def create() -> float:
                urls = next(batches)
                start = time.perf_counter()
                for url in urls:
                    response = client.get(url)
                    assert response.status_code == 303, response.get_data(as_text=True)[:300]
                return (time.perf_counter() - start) / len(urls)

            creation = best(repeat, create)
            store: Any = sim._store
            early = trades[-1]  # the newest filler: a scan reaches it last
            find = best(3, lambda: per_call(lambda: store.find(PARTNER, None, early.trade_no), 200))
            by_out = best(3, lambda: per_call(lambda: sim.trade(early.out_trade_no), 200))
            page = client.get("/").get_data()
            render = best(3, lambda: per_call(lambda: client.get("/").get_data(), 3))
            target = store.find(PARTNER, trades[-1].out_trade_no)
            write = best(3, lambda: per_call(lambda: store.save(target), 10))
            size = path.stat().st_size  # SQLite's -wal file (up to about 4 MB, then checkpointed) not counted
        finally:
            sim.close()
    return {"orders": f"{n:,}", "create ms/order": f"{creation * 1e3:.2f}", "find(trade_no) us": f"{find * 1e6:.1f}",
            "sim.trade() us": f"{by_out * 1e6:.1f}", "admin page KB": f"{len(page) / 1024:,.1f}",
            "admin render ms": f"{render * 1e3:.1f}", "write ms/change": f"{write * 1e3:.2f}",
            "state file KB": f"{size / 1024:,.0f}"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def deliveries(attempts: int) -> dict[str, str]:
    sim = sim_for(None, time_scale=1e-6)
    try:
        client = Client(sim)
        url = f"http://127.0.0.1:{closed_port()}/notify"
        notes = attempts // 8
        start = time.perf_counter()
        for i in range(notes):  # paid on the checkout page: each notification is tried 8 times, refused
            location = client.get(pay_url(f"D{i}", url, None)).headers["Location"]
            client.post(location, data={"action": "pay"})
        assert sim.wait_idle(600), "the notifier did not finish"
        took = time.perf_counter() - start
        log = sim.deliveries()
        store: Any = sim._store
        for _ in range(attempts):  # notify ids issued, then acknowledged (answered `success`)
            store.retire_notify_id(store.issue_notify_id(PARTNER, None))
        table = len(store._notify_ids)
        return {"attempts made": f"{notes * 8:,}", "in the log": f"{len(log):,}",
                "log size (pickled) KB": f"{len(pickle.dumps(log)) / 1024:,.0f}",
                "notify ids kept": f"{table:,}", "took s": f"{took:.1f}"}
    finally:
        sim.close()


def table(rows: list[dict[str, str]]) -> None:
    heads = list(rows[0])
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for row in rows:
        print("| " + " | ".join(row[h] for h in heads) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", choices=("sqlite", "json"), default="sqlite")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--k", type=int, default=20, help="orders created per timed run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=20_000)
    args = parser.parse_args()
    suffix = ".json" if args.state == "json" else ".sqlite3"
    print(f"simulator state file: {suffix}; Python {sys.version.split()[0]}")
    table([measure(int(n), suffix, args.k, args.repeat) for n in args.sizes.split(",")])
    print()
    table([deliveries(args.deliveries)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
