"""The reconcile command: ask Alipay about the app's pending orders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..callbacks.confirm import Outcome
from .base import CliError, check_same_ledger, load_app
from .output import emit, visible

#: The outcomes of reconcile that do not make it exit 1.
QUIET_OUTCOMES: frozenset[Outcome] = frozenset({"processed", "already_paid", "already_done", "in_progress", "not_paid"})


def _progress_line() -> Callable[[int, int], None] | None:
    """A line on the operator's terminal that counts the orders asked about, rewritten in place; nothing
    when stderr is not a terminal (cron, a pipe, a test), whose output stays one line per order."""
    if not sys.stderr.isatty():
        return None

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"\rreconciled {done}/{total} orders")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


def cmd_reconcile(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise CliError("--concurrency must be at least 1 (1: one order after another)")
    alipay = load_app(args.app)
    try:
        check_same_ledger(args, alipay.ledger)
        alipay.start()
        try:
            results = alipay.reconcile(older_than_minutes=args.older_than_minutes, concurrency=args.concurrency,
                                       progress=_progress_line())
        except RuntimeError as exc:
            raise CliError(str(exc)) from None
    finally:
        alipay.close()
    for result in results:
        emit(f"{visible(result.outcome):<13}{visible(result.out_trade_no)}  "
             f"trade_status={visible(result.trade_status or '-')}")
    counts = {name: [r.outcome for r in results].count(name) for name in dict.fromkeys(r.outcome for r in results)}
    emit(", ".join(f"{count} {visible(name)}" for name, count in counts.items()) or "no pending orders")
    return 1 if any(r.outcome not in QUIET_OUTCOMES for r in results) else 0

