"""The reconcile command: ask Alipay about the app's pending orders."""

from __future__ import annotations

import argparse

from ..callbacks.confirm import Outcome
from .base import CliError, check_same_ledger, load_app
from .output import emit, visible

#: The outcomes of reconcile that do not make it exit 1.
QUIET_OUTCOMES: frozenset[Outcome] = frozenset({"processed", "already_paid", "already_done", "in_progress", "not_paid"})


def cmd_reconcile(args: argparse.Namespace) -> int:
    alipay = load_app(args.app)
    try:
        check_same_ledger(args, alipay.ledger)
        alipay.start()
        try:
            results = alipay.reconcile(older_than_minutes=args.older_than_minutes)
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

