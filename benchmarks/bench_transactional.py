"""What a transactional hook costs next to a plain one (information; no goal).

    python benchmarks/bench_transactional.py [--n 1000] [--threads 1,4]

N unique signed notifications go through the real WSGI callable, once with a plain ``on_paid`` that
updates the shop's ``orders`` row on a connection of its own (and commits it), once with
``on_paid(transactional=True)`` doing the same update through ``tx``, inside the ledger transaction that
marks the event done. SQLite (one file holding the ledger and the orders) and, when reachable,
PostgreSQL (``ALIPAY_BENCH_POSTGRES``, default the local test database). Prints notifications/second,
the 503s (SQLite: writers queued behind the hook's write lock past the busy timeout) and the effects
counted in the orders table (always exactly N).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from _shared import FORM, fresh_keys, make_alipay, print_table, signed_body, typical_notify_fields
from werkzeug.test import EnvironBuilder

from alipay_middleware import Alipay

POSTGRES = os.environ.get("ALIPAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
AMOUNT = "88.88"


class Store:
    """The shop's orders table beside the ledger, and a per-thread connection of the shop's own."""

    def __init__(self, backend: str, workdir: Path, n: int) -> None:
        self.backend = backend
        self.suffix = uuid.uuid4().hex[:8]
        self.local = threading.local()
        if backend == "sqlite":
            self.path = workdir / f"shop-{self.suffix}.sqlite3"
            self.ledger = f"sqlite:///{self.path}"
            self.table, self.p = "orders", "?"
        else:
            self.ledger = f"{POSTGRES}?table=alipay_bench_{self.suffix}"
            self.table, self.p = f"orders_bench_{self.suffix}", "%s"
        self.run(f"CREATE TABLE {self.table} (id TEXT PRIMARY KEY, status TEXT, paid INTEGER DEFAULT 0)")
        for i in range(n):
            self.run(f"INSERT INTO {self.table} (id, status) VALUES ({self.p}, 'new')", (f"B{i:07d}",))

    @property
    def pay(self) -> str:
        return f"UPDATE {self.table} SET status = 'paid', paid = paid + 1 WHERE id = {self.p}"

    def own_connection(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            if self.backend == "sqlite":
                conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
            else:
                import psycopg

                conn = psycopg.connect(POSTGRES, autocommit=True)
            self.local.conn = conn
        return conn

    def run(self, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.path, timeout=30) as db:
                rows = db.execute(statement, args).fetchall()
            db.close()
            return rows
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            cur = conn.execute(statement, args)
            return cur.fetchall() if cur.description else []

    def effects(self) -> int:
        [(total,)] = self.run(f"SELECT COALESCE(sum(paid), 0) FROM {self.table}")
        return int(total)

    def drop(self) -> None:
        if self.backend == "postgres":
            self.run(f"DROP TABLE IF EXISTS {self.table}")
            self.run(f"DROP TABLE IF EXISTS alipay_bench_{self.suffix}")
            self.run(f"DROP FUNCTION IF EXISTS alipay_bench_{self.suffix}_claim_v1")


def register(alipay: Alipay, store: Store, transactional: bool) -> None:
    if transactional:
        @alipay.on_paid(transactional=True)
        def paid_tx(event: Any, tx: Any) -> None:
            tx.execute(store.pay, (event.out_trade_no,))
    else:
        @alipay.on_paid
        def paid(event: Any) -> None:
            conn = store.own_connection()
            conn.execute(store.pay, (event.out_trade_no,))  # autocommit: its own transaction


def run(backend: str, transactional: bool, threads: int, n: int, keys: Any, workdir: Path) -> list[str]:
    store = Store(backend, workdir, n)
    alipay = make_alipay(keys, store.ledger)
    try:
        orders = {f"B{i:07d}": Decimal(AMOUNT) for i in range(n)}
        alipay.order_amount(orders.get)
        register(alipay, store, transactional)
        app = alipay.wsgi(lambda environ, start_response: [])
        environs = []
        for i in range(n):
            fields = typical_notify_fields(i, AMOUNT)
            fields["out_trade_no"] = f"B{i:07d}"
            builder = EnvironBuilder(path="/alipay/notify", method="POST", data=signed_body(fields, keys.alipay),
                                     content_type=FORM, headers={"Host": "shop.example"})
            environs.append(builder.get_environ())
            builder.close()
        statuses: list[str] = []
        lock = threading.Lock()

        def worker(chunk: list[dict[str, Any]]) -> None:
            seen = []
            for environ in chunk:
                answer: list[str] = []

                def start_response(status: str, headers: Any, exc_info: Any = None, answer: list[str] = answer) -> None:
                    answer.append(status)

                b"".join(app(environ, start_response))
                seen.append(answer[0])
            with lock:
                statuses.extend(seen)

        chunks = [environs[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
        start = time.perf_counter()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.perf_counter() - start
        ok = sum(status.startswith("200") for status in statuses)
        return [backend, "transactional" if transactional else "plain", str(threads), f"{n / elapsed:,.0f}",
                f"{elapsed / n * 1000:.2f}", str(n - ok), str(store.effects())]
    finally:
        alipay.close()
        store.drop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", default="1,4")
    args = parser.parse_args(argv)
    keys = fresh_keys()
    backends = ["sqlite"]
    try:
        import psycopg

        with psycopg.connect(POSTGRES, connect_timeout=3):
            backends.append("postgres")
    except Exception as exc:  # noqa: BLE001 - any reason to skip is printed
        print(f"PostgreSQL skipped: {type(exc).__name__}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for backend in backends:
            for threads in (int(t) for t in args.threads.split(",")):
                for transactional in (False, True):
                    rows.append(run(backend, transactional, threads, args.n, keys, Path(workdir)))
    print_table(f"{args.n} unique notifications through the WSGI callable, hook updates one orders row",
                ["ledger", "hook", "threads", "notif/s", "ms each", "non-200", "effects"], rows)


if __name__ == "__main__":
    main()
