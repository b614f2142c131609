"""`list` on a large SQLite ledger: wall time and peak RSS of the command (information).

    python benchmarks/bench_list.py [--n 100000] [--keep DIR]

Builds a SQLite ledger of N events with the package on the path (97% done, 2% failed, 1% rejected; each
with a raw body and fields shaped like a real page-pay notification, about 1.4 KB of body), then runs
``alipay-middleware list --status done --limit 10`` and ``list --limit 0`` (output to /dev/null) as
child processes and prints each one's wall time and peak resident memory (``wait4``'s ``ru_maxrss``).

To compare with an older version, run the same script with that version first on the path
(``PYTHONPATH=/path/to/old-tree python benchmarks/bench_list.py``): the ledger is then built, and listed,
by that version (so without the indexes it did not create).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote_plus

from _shared import print_table, typical_notify_fields

import alipay_middleware
from alipay_middleware.ledger import DONE, FAILED, REJECTED, SQLiteLedger, StoredEvent

FAKE_SIGN = "A" * 344  # a 2048-bit RSA signature's length in base64; nothing verifies it here


def rows(first: int, count: int) -> list[StoredEvent]:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    made = []
    for i in range(first, first + count):
        fields = typical_notify_fields(i)
        body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in {**fields, "sign": FAKE_SIGN}.items())
        trade = f"{fields['app_id']}:{fields['out_trade_no']}"
        status = FAILED if i % 50 == 7 else REJECTED if i % 100 == 3 else DONE
        at = start + timedelta(seconds=i)
        made.append(StoredEvent(
            key=f"paid:{trade}", trade_key=trade,
            kind="paid", status=status, out_trade_no=fields["out_trade_no"], trade_no=fields["trade_no"],
            trade_status="TRADE_SUCCESS", notify_id=fields["notify_id"], charset="utf-8", raw_body=body.encode(),
            fields=fields, reason="unknown_order" if status == REJECTED else None,
            error="Traceback (most recent call last):\n  ...\nRuntimeError: boom" if status == FAILED else None,
            attempts=1, received_at=at, updated_at=at + timedelta(seconds=1)))
    return made


def run(args: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``python -m alipay_middleware ARGS``, its output discarded."""
    started = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        # cwd: python -m puts it first on the path, and this checkout's package must not shadow PYTHONPATH's.
        child = subprocess.Popen([sys.executable, "-m", "alipay_middleware", *args], stdout=devnull,
                                 cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{args} exited with {child.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--keep", metavar="DIR", help="build the ledger in DIR and leave it there")
    args = parser.parse_args()
    print(f"package: {Path(alipay_middleware.__file__).parent}")
    which = "import alipay_middleware; print(alipay_middleware.__file__)"
    child = subprocess.run([sys.executable, "-c", which], capture_output=True, text=True, cwd=tempfile.gettempdir())
    print(f"the commands' package: {Path(child.stdout.strip()).parent}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.keep or scratch) / f"list-{args.n}.sqlite3"
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        ledger = SQLiteLedger(str(path))
        batch = 10_000
        for first in range(0, args.n, batch):
            ledger.import_events(rows(first, min(batch, args.n - first)), batch=1000)
        ledger.close()
        size = path.stat().st_size / args.n
        print(f"ledger: {args.n:,} events, {size:,.0f} bytes each, built in {time.perf_counter() - started:.1f} s")
        url = f"sqlite:///{path}"
        results = []
        for name, command in [("list --status done --limit 10", ["list", "--status", "done", "--limit", "10"]),
                              ("list --limit 0", ["list", "--limit", "0"]),
                              ("list --limit 0 --json", ["list", "--limit", "0", "--json"])]:
            best = min((run([*command, "--ledger", url]) for _ in range(3)), key=lambda r: r[0])
            results.append([name, f"{best[0]:.2f} s", f"{best[1]:.0f} MB"])
        print_table(f"SQLite ledger of {args.n:,} events (best of 3)", ["command", "time", "peak RSS"], results)


if __name__ == "__main__":
    main()
