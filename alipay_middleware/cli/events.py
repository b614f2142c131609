"""The commands that look into the ledger and run its events again: list, show, replay."""

from __future__ import annotations

import argparse
import heapq
import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Literal

from ..alipay import Alipay
from ..callbacks.answers import INTERNAL_ERROR, Answer, Reason
from ..callbacks.flow import replay_flow
from ..fronts.drive import run_flow
from ..ledger import (
    DONE,
    FAILED,
    RECEIVED,
    Ledger,
    StoredEvent,
)
from ..ledger.base import FOREIGN_PREFIX
from .base import CliError, check_same_ledger, ledger_url, load_app, opened
from .output import as_json, decode, describe_lease, emit, json_line, print_rows_read_twice, visible, when

#: What replay says of each event (its first column).
ReplayOutcome = Literal["replayed", "already_done", "busy", "unavailable", "finish_pending", "rejected", "failed",
                        "refused", "unknown", "would_replay"]
FAILING_OUTCOMES: tuple[ReplayOutcome, ...] = ("failed", "rejected", "refused", "unavailable", "unknown",
                                               "finish_pending")
#: The notify path's answers that replay reports as ``busy`` (a worker holds the lease) and ``unavailable``.
BUSY_REASONS: tuple[Reason, ...] = ("in_progress", "lease_lost")
UNAVAILABLE_REASONS: tuple[Reason, ...] = ("ledger_unavailable", "commit_failed")
#: The longest error line ``list`` shows in its REASON column (``show`` prints the whole traceback).
REASON_WIDTH = 100


def why(event: StoredEvent) -> str:
    """The REASON column: the reason recorded (a rejection's), or for a failed event the last line of its
    error, the exception the hook raised (not escaped yet)."""
    if event.reason:
        return event.reason
    if event.status != FAILED or not event.error:
        return ""
    # Line feeds only: str.splitlines() would also break at (and so hide) \r, \x1c-\x1e, \x85, \u2028.
    last = next((line.strip() for line in reversed(event.error.split("\n")) if line.strip()), "")
    return last if len(last) <= REASON_WIDTH else last[: REASON_WIDTH - 3] + "..."


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise CliError("--limit must be 0 (no limit) or more")
    with opened(ledger_url(args)) as ledger:
        # --limit 0 streams the ledger page by page; --limit N reads N rows.
        listed = ledger.events(status=args.status, out_trade_no=args.order, limit=args.limit) if args.limit else None

        def events() -> Iterable[StoredEvent]:
            if listed is not None:
                return listed
            # The table shows neither raw bodies nor fields: they are not read (the JSON lines need them).
            return ledger.iter_events(status=args.status, out_trade_no=args.order, bodies=args.json)

        if args.json:
            for event in events():
                print(json_line(as_json(event)))
            return 0
        if not print_rows_read_twice(
            ("KEY", "KIND", "STATUS", "OUT_TRADE_NO", "ATTEMPTS", "UPDATED_AT", "REASON"),
            lambda: ((e.key, e.kind, e.status, e.out_trade_no, str(e.attempts), when(e.updated_at),
                      visible(why(e))) for e in events()),
        ):
            emit("no events")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with opened(ledger_url(args)) as ledger:
        event = ledger.get(args.key)
        # Not a key: an out_trade_no, whose events (index-backed) come oldest first, as they happened.
        found = [event] if event is not None else list(ledger.iter_events(out_trade_no=args.key, oldest_first=True))
    if not found:
        raise CliError(f"no event with the key {args.key!r} in this ledger, and no order with that out_trade_no "
                       "('list' shows both: KEY and OUT_TRADE_NO)", code=1)
    if event is None:
        emit(f"order {visible(args.key)}: {len(found)} event{'s' if len(found) > 1 else ''}, oldest first")
    for number, one in enumerate(found):
        if event is None:
            emit()
            emit(f"-- event {number + 1} of {len(found)}")
        _show_event(one, raw=args.raw)
    return 0


def _show_event(event: StoredEvent, *, raw: bool) -> None:
    facts = [
        ("key", event.key), ("trade_key", event.trade_key), ("kind", event.kind), ("status", event.status),
        ("out_trade_no", event.out_trade_no), ("trade_no", event.trade_no), ("trade_status", event.trade_status),
        ("notify_id", event.notify_id), ("charset", event.charset), ("attempts", str(event.attempts)),
        ("received_at", when(event.received_at, precise=True)),
        ("updated_at", when(event.updated_at, precise=True)), ("lease", describe_lease(event)),
        ("reason", visible(event.reason or "-")),
    ]
    for name, value in facts:
        emit(f"{name + ':':<14}{visible(value)}")
    emit("fields:" if event.fields else "fields:       -")
    for name in sorted(event.fields):
        emit(f"  {visible(name)} = {visible(event.fields[name])}")
    emit("error:" if event.error else "error:        -")
    if event.error:
        # Line feeds only: str.splitlines() would also break at (and so hide) \r, \x1c-\x1e, \x85, \u2028.
        for line in event.error.rstrip("\n").split("\n"):
            emit(f"  {visible(line)}")
    if event.raw_body is None:
        emit("raw body:     - (pruned)")
    elif not raw:
        emit(f"raw body:     {len(event.raw_body)} bytes (--raw shows them)")
    else:
        emit(f"raw body:     {len(event.raw_body)} bytes, decoded as {visible(event.charset)}:")
        emit(f"  {visible(decode(event.raw_body, event.charset))}")


# -- replay ---------------------------------------------------------------------------------------------

def _select(ledger: Ledger, args: argparse.Namespace) -> tuple[Iterator[StoredEvent], list[str]]:
    """The events to replay, oldest first (the order they were accepted in), and the unknown keys.

    Without ``--key`` the events are read page by page as they are replayed (each status oldest first,
    merged), so a ledger with many failed events is never held in memory at once."""
    if args.key:
        found = {key: ledger.get(key) for key in dict.fromkeys(args.key)}
        unknown = [key for key, event in found.items() if event is None]
        selected = [event for event in found.values() if event is not None]
        return iter(sorted(selected, key=lambda event: event.received_at)), unknown
    statuses = [args.status] if args.status else [FAILED, RECEIVED]
    merged = heapq.merge(*(ledger.iter_events(status=status, oldest_first=True) for status in statuses),
                         key=lambda event: event.received_at)
    # Messages for another app or seller (recorded under "foreign:...") are never ours to run.
    return (event for event in merged if not event.key.startswith(FOREIGN_PREFIX)), []


def _outcome(answer: Answer) -> ReplayOutcome:
    if answer.status == 200:
        return "already_done" if answer.reason == "already_done" else "replayed"
    if answer.reason in BUSY_REASONS:
        return "busy"
    if answer.reason in UNAVAILABLE_REASONS:
        return "unavailable"
    if answer.reason == "finish_pending":
        return "finish_pending"  # the hook ran; its done mark is retried until the command exits
    outcome: ReplayOutcome = "rejected" if answer.status == 409 else "failed" if answer.status == 500 else "refused"
    return outcome


def _replay_one(alipay: Alipay, event: StoredEvent) -> ReplayOutcome:
    answer = run_flow(replay_flow(alipay, event), INTERNAL_ERROR)
    outcome = _outcome(answer)
    after = alipay.ledger.get(event.key)
    attempts = after.attempts if after is not None else event.attempts
    details: dict[ReplayOutcome, str] = {
        "replayed": f"attempt={attempts}",
        "already_done": "done before: not run again",
        "busy": "a worker holds its lease now: not touched",
        "failed": f"reason={answer.reason} attempt={attempts} (its traceback: show {event.key})",
        "unavailable": f"reason={answer.reason}",
        "finish_pending": "the hook ran; its done mark could not be written yet (retried until this command "
                          "exits; a resend meanwhile gets 503)",
    }
    detail = details.get(outcome, f"reason={answer.reason}")
    emit(f"{outcome:<13}{visible(event.key)}  {visible(detail)}")
    return outcome


def cmd_replay(args: argparse.Namespace) -> int:
    alipay = load_app(args.app)
    try:
        check_same_ledger(args, alipay.ledger)
        selected, unknown = _select(alipay.ledger, args)
        for key in unknown:
            emit(f"{'unknown':<13}{visible(key)}  no such event in the app's ledger")
        first = next(selected, None)
        if first is None:
            if not unknown:
                emit("nothing to replay")
            return 1 if unknown else 0
        selected = itertools.chain([first], selected)
        if args.dry_run:
            for event in selected:
                live = event.lease_until is not None and event.lease_until > datetime.now(timezone.utc)
                what: ReplayOutcome = "already_done" if event.status == DONE else "busy" if live else "would_replay"
                lease = f" lease={describe_lease(event)}" if event.lease_until is not None else ""
                emit(f"{what:<13}{visible(event.key)}  status={visible(event.status)} attempts={event.attempts}"
                     f"{visible(lease)}")
            return 1 if unknown else 0
        alipay.start()  # the same start-up warnings as the app's (no order_amount, no on_paid)
        unknowns: list[ReplayOutcome] = ["unknown"] * len(unknown)
        outcomes = [_replay_one(alipay, event) for event in selected] + unknowns
    finally:
        alipay.close()
    counts = {name: outcomes.count(name) for name in dict.fromkeys(outcomes)}
    emit(", ".join(f"{count} {name}" for name, count in counts.items()))
    return 1 if any(name in FAILING_OUTCOMES for name in outcomes) else 0

