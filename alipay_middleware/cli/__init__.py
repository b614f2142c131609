"""The operator's command line: ``python -m alipay_middleware <command>`` (or ``alipay-middleware``).

Look into the ledger (``list``, ``show``), run failed events' hooks again through the very steps of
the notify path (``replay``), drop old raw bodies while keeping every dedupe key (``prune``), print or
apply the PostgreSQL schema (``schema``) and copy a ledger into another (``migrate``); ``keygen`` makes
the app's RSA key pair. Every other command reads the ledger from ``--ledger URL`` or, without it, from
the ``ALIPAY_LEDGER`` environment variable; a PostgreSQL URL names its table with ``?table=`` (and
``&schema=``), as ``Alipay(ledger=...)`` does.

Exit codes: 0 done, 1 something failed (an unknown key, a replayed hook that raised, an unreachable
ledger), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..alipay import RECONCILE_CONCURRENCY
from ..errors import AlipayError
from ..ledger import DONE, FAILED, RECEIVED, REJECTED
from ..ledger.base import PRUNE_BATCH
from .admin import MIN_PRUNE_DAYS, cmd_keygen, cmd_migrate, cmd_prune, cmd_schema
from .base import LEDGER_HELP, PROG, CliError
from .events import cmd_list, cmd_replay, cmd_show
from .output import EscapingFormatter, emit
from .reconcile import cmd_reconcile

# -- the parser -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ledger", metavar="URL", help=LEDGER_HELP)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and repair the ledger of alipay-middleware: the durable record of every verified "
                    "Alipay callback, its status and its hook's outcome.",
        epilog="Exit codes: 0 done, 1 something failed (unknown key, a replayed hook raised, ledger unreachable), "
               "2 usage or configuration error. 'COMMAND --help' shows a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], summary: str,
                description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=summary, description=description)
        sub.set_defaults(run=run)
        return sub

    listing = command("list", cmd_list, "events, newest first",
                      "One line per event, newest first: key, kind, status, out_trade_no, attempts, updated_at "
                      "(UTC), reason (a failed event's: the exception its hook raised; 'show KEY' prints the "
                      "traceback).")
    listing.add_argument("--status", choices=(RECEIVED, DONE, FAILED, REJECTED), help="only events of this status")
    listing.add_argument("--order", metavar="OUT_TRADE_NO", help="only the events of this order")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most N events (default 50; 0: all)")
    listing.add_argument("--json", action="store_true",
                         help="one JSON object per line, every field but the raw body (raw_body_size: null once "
                              "pruned)")

    show = command("show", cmd_show, "one event, or an order's events, all their fields",
                   "One event: every column, its decoded fields, its reason and error (the hook's traceback). "
                   "Given an out_trade_no instead of a key: every event of that order, oldest first. "
                   "Exit code 1 if neither is known.")
    show.add_argument("key", metavar="KEY_OR_OUT_TRADE_NO",
                      help="an event's key or an order's out_trade_no, as 'list' shows them")
    show.add_argument("--raw", action="store_true",
                      help="also the raw body as received, decoded in its charset (undecodable bytes escaped)")

    replay = command(
        "replay", cmd_replay, "run failed events' hooks again",
        "Run events through the notify path's own steps again (claim, order_amount check, hook, done) with "
        "the app's hooks, on the app's own ledger. By default: every failed event, and every received one "
        "(a live lease is left alone and reported busy; an expired one, whose worker died, is retaken). A "
        "done event is never run again. The stored fields must still verify with the app's Alipay key. "
        "One line per event: replayed, already_done, busy, failed, rejected (order check), refused "
        "(signature, recipient), unavailable (ledger), finish_pending (the hook ran, its done mark is not "
        "written yet) or unknown; exit code 1 if any failed, was rejected, refused, unavailable, pending or "
        "unknown. "
        "--ledger is optional here; if given (or ALIPAY_LEDGER is set) it must name the app's ledger.")
    replay.add_argument("--app", required=True, metavar="MODULE:ATTR",
                        help="the app's Alipay object, e.g. myshop.payments:alipay (imported from the current "
                             "directory, as uvicorn does)")
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--key", action="append", metavar="KEY", help="replay this event (repeatable)")
    which.add_argument("--status", choices=(FAILED, RECEIVED, REJECTED),
                       help="replay the events of this status only (rejected: the order check is made again)")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; run nothing")

    reconcile = command(
        "reconcile", cmd_reconcile, "ask Alipay about pending orders",
        "For every order the app's @alipay.pending_orders lists as unpaid and older than N minutes, query "
        "Alipay (alipay.trade.query) and feed confirmed payments and unpaid closes through the app's hooks, "
        "with the notify path's dedupe: safe from cron on every host at once. Up to --concurrency orders are "
        "asked about at once; on a terminal a progress line counts them. Then one line per order, in the order "
        "pending_orders listed them: "
        "processed, already_paid, already_done, in_progress, not_paid, error or a refusal reason; exit code 1 "
        "on error or refusal. --ledger is optional; if given it must name the app's ledger.")
    reconcile.add_argument("--app", required=True, metavar="MODULE:ATTR",
                           help="the app's Alipay object, e.g. myshop.payments:alipay")
    reconcile.add_argument("--older-than-minutes", type=float, default=15.0, metavar="N",
                           help="only orders created more than N minutes ago (default 15)")
    reconcile.add_argument("--concurrency", type=int, default=RECONCILE_CONCURRENCY, metavar="N",
                           help=f"ask Alipay about N orders at once (default {RECONCILE_CONCURRENCY}; 1: one after "
                                "another). The app's hooks then run in up to N threads at once, as under a threaded "
                                "server")

    prune = command(
        "prune", cmd_prune, "drop old raw bodies, keep the keys",
        "For done events last updated more than N days ago, drop the raw body and the fields that are not "
        "needed to know what the event was (buyer ids, subject, signature); the row, its key, status, ids "
        "and amounts stay forever, so a late resend (TRADE_FINISHED, a refund months later) is still "
        "recognised. Without --yes, only says how many would be pruned.")
    prune.add_argument("--older-than-days", type=int, required=True, metavar="N",
                       help=f"at least {MIN_PRUNE_DAYS}: Alipay resends for about 25 hours")
    prune.add_argument("--yes", action="store_true", help="prune (without it: count only)")
    prune.add_argument("--batch", type=int, default=PRUNE_BATCH, metavar="N",
                       help=f"events per short transaction (default {PRUNE_BATCH}); on a terminal a progress "
                            "line counts the events pruned")

    schema = command(
        "schema", cmd_schema, "print (or apply) the PostgreSQL DDL",
        "Print the SQL that creates the PostgreSQL ledger table and its indexes (idempotent), for an "
        "administrator to run when the app's database user may not run DDL; with --apply, run it on --ledger. "
        "The names default to the ledger URL's ?schema=/?table=, else public.alipay_events.")
    schema.add_argument("--schema", metavar="S", help="the PostgreSQL schema (default public)")
    schema.add_argument("--table", metavar="T", help="the table name (default alipay_events)")
    schema.add_argument("--apply", action="store_true", help="create what is missing on --ledger postgresql://...")

    migrate = command(
        "migrate", cmd_migrate, "copy every event into another ledger",
        "Copy every event (all columns: raw bytes, fields, statuses, attempts, leases, timestamps, reason, "
        "error) from one ledger into another, oldest first; the target is created if missing. Rows whose "
        "key is already in the target are skipped (not updated) and counted, so running it again is safe. Stop the app "
        "(or point it at the target) first, or events recorded meanwhile stay behind until the next run.")
    migrate.add_argument("--from", dest="source", metavar="URL",
                         help="the ledger to copy (default: --ledger, then ALIPAY_LEDGER)")
    migrate.add_argument("--to", dest="target", metavar="URL", required=True, help="the ledger to copy into")

    keygen = commands.add_parser(
        "keygen", help="make your app's RSA key pair",
        description="Make an RSA key pair for your app in DIRECTORY (created if missing): app_private_key.pem "
                    "(PKCS#8, mode 0600), app_public_key.pem, and app_public_key.txt, the one-line base64 "
                    "the Alipay console wants, which is also printed. Existing files are never overwritten.")
    keygen.set_defaults(run=cmd_keygen)
    keygen.add_argument("directory", metavar="DIR", help="where to write the three files")
    keygen.add_argument("--bits", type=int, choices=(2048, 1024), default=2048,
                        help="2048 (default: Open Platform apps, RSA2) or 1024 (legacy RSA partners)")
    return parser


def _tolerant(stream: Any) -> None:
    """A terminal that cannot show a character gets an escape, not a UnicodeEncodeError."""
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _tolerant(sys.stdout)
    _tolerant(sys.stderr)
    if not logging.root.handlers:  # as basicConfig: an embedding program's own logging is left alone
        handler = logging.StreamHandler()
        handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
        logging.root.addHandler(handler)
        logging.root.setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except CliError as exc:
        emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # a bad ledger URL, an unreachable server, a missing table or file
        emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except AlipayError as exc:  # LedgerUnavailable while working
        emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return code

