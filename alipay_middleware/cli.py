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
import dataclasses
import heapq
import importlib
import io
import itertools
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from .alipay import Alipay
from .callbacks.answers import INTERNAL_ERROR, Answer, Reason
from .callbacks.confirm import Outcome
from .callbacks.flow import replay_flow
from .errors import AlipayError
from .fronts.drive import run_flow
from .ledger import (
    DONE,
    FAILED,
    RECEIVED,
    REJECTED,
    Ledger,
    SQLiteLedger,
    StoredEvent,
    is_postgres_setting,
    open_ledger,
    split_table_params,
)
from .ledger.base import FOREIGN_PREFIX
from .wire.keys import write_key_pair

PROG = "alipay-middleware"
LEDGER_HELP = (
    "the ledger: sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3 or "
    "postgresql://user@host:5432/dbname, with ?table=NAME (and &schema=NAME) when the table is not "
    "public.alipay_events. Default: the ALIPAY_LEDGER environment variable"
)
#: Alipay resends an unacknowledged notification about 8 times over 25 hours.
MIN_PRUNE_DAYS = 2
#: What replay says of each event (its first column).
ReplayOutcome = Literal["replayed", "already_done", "busy", "unavailable", "finish_pending", "rejected", "failed",
                        "refused", "unknown", "would_replay"]
FAILING_OUTCOMES: tuple[ReplayOutcome, ...] = ("failed", "rejected", "refused", "unavailable", "unknown",
                                               "finish_pending")
#: The notify path's answers that replay reports as ``busy`` (a worker holds the lease) and ``unavailable``.
BUSY_REASONS: tuple[Reason, ...] = ("in_progress", "lease_lost")
UNAVAILABLE_REASONS: tuple[Reason, ...] = ("ledger_unavailable", "commit_failed")
#: The outcomes of reconcile that do not make it exit 1.
QUIET_OUTCOMES: frozenset[Outcome] = frozenset({"processed", "already_paid", "already_done", "in_progress", "not_paid"})


class CliError(Exception):
    """A message for the operator, and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -- ledgers ------------------------------------------------------------------------------------------

def _given_ledger_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.ledger or os.environ.get("ALIPAY_LEDGER") or None
    return url


def _ledger_url(args: argparse.Namespace) -> str:
    url = _given_ledger_url(args)
    if url is None:
        raise CliError("no ledger given: pass --ledger URL (e.g. sqlite:////srv/shop/alipay-ledger.sqlite3 or "
                       "postgresql://shop@db/shop) or set the ALIPAY_LEDGER environment variable")
    return url


@contextmanager
def _opened(url: str, *, create: bool = False) -> Iterator[Ledger]:
    ledger = open_ledger(url, create=create)
    try:
        yield ledger
    finally:
        ledger.close()


def _identity(ledger: Ledger) -> object:
    """What makes two ledger objects the same store (a false "different" only costs skipped rows)."""
    if isinstance(ledger, SQLiteLedger) and ledger.path != ":memory:":
        return ("sqlite", os.path.realpath(ledger.path), ledger.table)
    return repr(ledger)  # PostgresLedger: host, port, database, schema.table (never the password)


# -- output ---------------------------------------------------------------------------------------------
#
# Everything printed comes from a stranger in the end (signed fields, raw bodies, out_trade_no in keys,
# tracebacks quoting them), and the operator reads it on a terminal: an ESC sequence in a subject could
# clear the screen, retitle the window or rewrite earlier lines, and a bidi override could make a line
# read differently from what it holds. So every control character is shown as a Python-style escape:
# C0 (ESC, BEL, CR, LF, TAB, ...), DEL, C1 (0x80-0x9f, which some terminals take as CSI and friends),
# and the invisible format characters (category Cf: bidi overrides, embeddings and isolates, zero-width
# characters, the BOM, tag characters), line and paragraph separators and lone surrogates. Everything
# else, Chinese text included, is printed as it is. Literal backslashes are not doubled (as for the raw
# body's undecodable bytes), so a shown escape is not proof that the character was there.

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _visible(text: str) -> str:
    """``text`` with every control and format character escaped (line breaks included)."""
    if text.isprintable():  # the common case; also False for some harmless spaces, sorted out below
        return text
    return "".join(_escape(char) if _unsafe(char) else char for char in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _json_line(data: Any) -> str:
    """One JSON object on one line, still valid JSON, with no raw control or format character in it.

    ``json.dumps`` escapes C0 only; DEL, C1 and the rest can only occur inside strings there, where
    their ``\\uXXXX`` escape means the same character.
    """
    text = json.dumps(data, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(_json_escape(char) if _unsafe(char) else char for char in text)


def _emit(text: str = "", *, file: Any = None) -> None:
    """Print ``text``, keeping its own line breaks and escaping every other control character."""
    print("\n".join(_visible(line) for line in text.split("\n")), file=file)


class _EscapingFormatter(logging.Formatter):
    """Log lines on the operator's terminal (replay and reconcile log what they refuse, with
    out_trade_no and ids): the message with everything escaped, line breaks too, so that no field can
    forge a line; a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return _visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return "\n".join(_visible(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join(_visible(line) for line in super().formatStack(stack_info).split("\n"))


def _when(moment: datetime | None, *, precise: bool = False) -> str:
    if moment is None:
        return "-"
    text = moment.astimezone(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")
    return text.replace("+00:00", "Z")


def _lease(event: StoredEvent) -> str:
    if event.lease_until is None:
        return "-"
    state = "live" if event.lease_until > datetime.now(timezone.utc) else "expired"
    return f"{event.lease_owner} until {_when(event.lease_until)} ({state})"


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset, errors="backslashreplace")
    except LookupError:  # a charset name Python does not know: show the bytes, escaped
        return raw.decode("ascii", errors="backslashreplace")


def _as_json(event: StoredEvent) -> dict[str, Any]:
    data: dict[str, Any] = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    raw = data.pop("raw_body")
    data["raw_body_size"] = None if raw is None else len(raw)  # None: pruned
    for name in ("received_at", "updated_at", "lease_until"):
        data[name] = data[name].isoformat() if data[name] is not None else None
    return data


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not _print_rows_read_twice(header, lambda: rows):
        _emit("  ".join(header).rstrip())


def _print_rows_read_twice(header: Sequence[str], rows: Callable[[], Iterable[Sequence[str]]]) -> bool:
    """Print ``rows()`` under ``header`` in aligned columns; False (nothing printed) when there are none.

    ``rows()`` is read twice, once to measure the columns and once to print them, so that no more than
    a page of a large ledger is ever held. A row that changed in between may come out misaligned."""
    widths = [len(cell) for cell in header]
    count = 0
    for row in rows():
        count += 1
        widths = [max(width, len(_visible(cell))) for width, cell in zip(widths, row, strict=True)]
    if not count:
        return False
    lines = itertools.chain([header], ([_visible(cell) for cell in row] for row in rows()))  # escaped as measured
    for row in lines:
        _emit("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return True


# -- list, show ---------------------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise CliError("--limit must be 0 (no limit) or more")
    with _opened(_ledger_url(args)) as ledger:
        # --limit 0 streams the ledger page by page; --limit N reads N rows.
        listed = ledger.events(status=args.status, out_trade_no=args.order, limit=args.limit) if args.limit else None

        def events() -> Iterable[StoredEvent]:
            if listed is not None:
                return listed
            # The table shows neither raw bodies nor fields: they are not read (the JSON lines need them).
            return ledger.iter_events(status=args.status, out_trade_no=args.order, bodies=args.json)

        if args.json:
            for event in events():
                print(_json_line(_as_json(event)))
            return 0
        if not _print_rows_read_twice(
            ("KEY", "KIND", "STATUS", "OUT_TRADE_NO", "ATTEMPTS", "UPDATED_AT", "REASON"),
            lambda: ((e.key, e.kind, e.status, e.out_trade_no, str(e.attempts), _when(e.updated_at),
                      _visible(e.reason or "")) for e in events()),
        ):
            _emit("no events")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _opened(_ledger_url(args)) as ledger:
        event = ledger.get(args.key)
    if event is None:
        raise CliError(f"no event with the key {args.key!r} in this ledger ('list' shows the keys)", code=1)
    facts = [
        ("key", event.key), ("trade_key", event.trade_key), ("kind", event.kind), ("status", event.status),
        ("out_trade_no", event.out_trade_no), ("trade_no", event.trade_no), ("trade_status", event.trade_status),
        ("notify_id", event.notify_id), ("charset", event.charset), ("attempts", str(event.attempts)),
        ("received_at", _when(event.received_at, precise=True)),
        ("updated_at", _when(event.updated_at, precise=True)), ("lease", _lease(event)),
        ("reason", _visible(event.reason or "-")),
    ]
    for name, value in facts:
        _emit(f"{name + ':':<14}{_visible(value)}")
    _emit("fields:" if event.fields else "fields:       -")
    for name in sorted(event.fields):
        _emit(f"  {_visible(name)} = {_visible(event.fields[name])}")
    _emit("error:" if event.error else "error:        -")
    if event.error:
        # Line feeds only: str.splitlines() would also break at (and so hide) \r, \x1c-\x1e, \x85, \u2028.
        for line in event.error.rstrip("\n").split("\n"):
            _emit(f"  {_visible(line)}")
    if event.raw_body is None:
        _emit("raw body:     - (pruned)")
    elif not args.raw:
        _emit(f"raw body:     {len(event.raw_body)} bytes (--raw shows them)")
    else:
        _emit(f"raw body:     {len(event.raw_body)} bytes, decoded as {_visible(event.charset)}:")
        _emit(f"  {_visible(_decode(event.raw_body, event.charset))}")
    return 0


# -- replay ---------------------------------------------------------------------------------------------

def _load_app(spec: str) -> Alipay:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CliError(f"--app must be MODULE:ATTRIBUTE, like myshop.payments:alipay (got {spec!r})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn and gunicorn do: the app's modules sit here
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # a module that the app imports is missing: the traceback says which
        raise CliError(f"cannot import {module_name!r} (from {os.getcwd()}): {exc}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise CliError(f"{module_name!r} has no attribute {attribute!r}")
        target = getattr(target, name)
    if not isinstance(target, Alipay):
        raise CliError(f"{spec} is a {type(target).__name__}, not the app's Alipay object")
    return target


def _check_same_ledger(args: argparse.Namespace, app_ledger: Ledger) -> None:
    """Replay runs on the app's own ledger: dedupe only holds within one ledger."""
    url = _given_ledger_url(args)
    if url is None:
        return
    with _opened(url) as named:
        if _identity(named) != _identity(app_ledger):
            raise CliError(f"--ledger (or ALIPAY_LEDGER) names {named!r}, but {args.app} records to "
                           f"{app_ledger!r}. Replay runs on the app's own ledger, where its notifications are "
                           "deduplicated: leave --ledger out or name that ledger")


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
    _emit(f"{outcome:<13}{_visible(event.key)}  {_visible(detail)}")
    return outcome


def cmd_replay(args: argparse.Namespace) -> int:
    alipay = _load_app(args.app)
    try:
        _check_same_ledger(args, alipay.ledger)
        selected, unknown = _select(alipay.ledger, args)
        for key in unknown:
            _emit(f"{'unknown':<13}{_visible(key)}  no such event in the app's ledger")
        first = next(selected, None)
        if first is None:
            if not unknown:
                _emit("nothing to replay")
            return 1 if unknown else 0
        selected = itertools.chain([first], selected)
        if args.dry_run:
            for event in selected:
                live = event.lease_until is not None and event.lease_until > datetime.now(timezone.utc)
                what: ReplayOutcome = "already_done" if event.status == DONE else "busy" if live else "would_replay"
                lease = f" lease={_lease(event)}" if event.lease_until is not None else ""
                _emit(f"{what:<13}{_visible(event.key)}  status={_visible(event.status)} attempts={event.attempts}"
                      f"{_visible(lease)}")
            return 1 if unknown else 0
        alipay.start()  # the same start-up warnings as the app's (no order_amount, no on_paid)
        unknowns: list[ReplayOutcome] = ["unknown"] * len(unknown)
        outcomes = [_replay_one(alipay, event) for event in selected] + unknowns
    finally:
        alipay.close()
    counts = {name: outcomes.count(name) for name in dict.fromkeys(outcomes)}
    _emit(", ".join(f"{count} {name}" for name, count in counts.items()))
    return 1 if any(name in FAILING_OUTCOMES for name in outcomes) else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    alipay = _load_app(args.app)
    try:
        _check_same_ledger(args, alipay.ledger)
        alipay.start()
        try:
            results = alipay.reconcile(older_than_minutes=args.older_than_minutes)
        except RuntimeError as exc:
            raise CliError(str(exc)) from None
    finally:
        alipay.close()
    for result in results:
        _emit(f"{_visible(result.outcome):<13}{_visible(result.out_trade_no)}  "
              f"trade_status={_visible(result.trade_status or '-')}")
    counts = {name: [r.outcome for r in results].count(name) for name in dict.fromkeys(r.outcome for r in results)}
    _emit(", ".join(f"{count} {_visible(name)}" for name, count in counts.items()) or "no pending orders")
    return 1 if any(r.outcome not in QUIET_OUTCOMES for r in results) else 0


# -- prune, schema, migrate ----------------------------------------------------------------------------

def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than_days < MIN_PRUNE_DAYS:
        raise CliError(f"--older-than-days must be at least {MIN_PRUNE_DAYS}: Alipay resends a notification for "
                       "about 25 hours, and its raw body is the evidence while it does")
    before = datetime.now(timezone.utc) - timedelta(days=args.older_than_days)
    with _opened(_ledger_url(args)) as ledger:
        if not args.yes:
            count = ledger.prune(before, dry_run=True)
            _emit(f"{count} done events last updated before {_when(before)} would be pruned: their raw bodies "
                  "and buyer fields dropped; keys, statuses, ids and amounts kept. Run again with --yes to prune.")
            return 0
        count = ledger.prune(before)
    _emit(f"pruned {count} done events last updated before {_when(before)}")
    return 0


def _agree(option: str, given: str | None, in_url: str | None) -> str | None:
    if given is not None and in_url is not None and given != in_url:
        raise CliError(f"--{option} {given!r} and the ledger URL's {option}={in_url!r} disagree")
    return given if given is not None else in_url


def cmd_schema(args: argparse.Namespace) -> int:
    try:
        from .ledger.postgres import PostgresLedger, schema_sql
    except ImportError as exc:
        raise CliError(f"{exc}, or: pip install 'alipay-middleware[postgres]'") from None
    url = _ledger_url(args) if args.apply else _given_ledger_url(args)
    names: dict[str, str] = {}
    if url is not None and is_postgres_setting(url):
        if url.startswith(("postgresql://", "postgres://")):
            url, names = split_table_params(url)
    elif args.apply:
        raise CliError("schema --apply needs a PostgreSQL ledger: --ledger postgresql://user@host/dbname "
                       "(or libpq's 'host=... dbname=...')")
    schema = _agree("schema", args.schema, names.get("schema")) or "public"
    table = _agree("table", args.table, names.get("table")) or "alipay_events"
    if not args.apply:
        print(schema_sql(schema, table), end="")
        return 0
    ledger = PostgresLedger(url, schema=schema, table=table, create_schema=True)  # creates what is missing
    ledger.close()
    _emit(f"the ledger table {schema}.{table} and its indexes are in place ({ledger!r})")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    source_url = args.source or _ledger_url(args)
    with _opened(source_url) as source, _opened(args.target, create=True) as target:
        if _identity(source) == _identity(target):
            raise CliError(f"--from and --to are the same ledger ({source!r})")
        inserted, skipped = target.import_events(source.export())
    _emit(f"copied {inserted} events from {source!r} to {target!r}; "
          f"skipped {skipped} whose key was already there")
    return 0


# -- keygen ---------------------------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        paths, line = write_key_pair(args.directory, args.bits)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    if args.bits == 1024:
        where = ("a legacy RSA partner (sign_type='RSA'): upload the public key below in the merchant console, "
                 "then LegacyConfig(partner=..., sign_type='RSA', private_key=<the private key's text>)")
    else:
        where = ("an Open Platform app (RSA2): paste the public key below into the console (接口加签方式 -> 公钥), "
                 "then OpenApiConfig(app_id=..., app_private_key=<the private key's text>, "
                 "alipay_public_key=<the *Alipay* public key the console then shows>)")
    _emit(f"wrote {paths[0]} (RSA-{args.bits} private key, PKCS#8, readable by you only: never upload it), "
          f"{paths[1]} and {paths[2]} (the public key)")
    _emit(f"for {where}")
    _emit("the public key, as the console wants it (one line):")
    _emit(line)
    return 0


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
                      "(UTC), reason.")
    listing.add_argument("--status", choices=(RECEIVED, DONE, FAILED, REJECTED), help="only events of this status")
    listing.add_argument("--order", metavar="OUT_TRADE_NO", help="only the events of this order")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most N events (default 50; 0: all)")
    listing.add_argument("--json", action="store_true",
                         help="one JSON object per line, every field but the raw body (raw_body_size: null once "
                              "pruned)")

    show = command("show", cmd_show, "one event, all its fields",
                   "One event: every column, its decoded fields, its reason and error (the hook's traceback). "
                   "Exit code 1 if the key is unknown.")
    show.add_argument("key", metavar="KEY", help="the event's key, as 'list' shows it")
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
        "with the notify path's dedupe: safe from cron on every host at once. One line per order: "
        "processed, already_paid, already_done, in_progress, not_paid, error or a refusal reason; exit code 1 "
        "on error or refusal. --ledger is optional; if given it must name the app's ledger.")
    reconcile.add_argument("--app", required=True, metavar="MODULE:ATTR",
                           help="the app's Alipay object, e.g. myshop.payments:alipay")
    reconcile.add_argument("--older-than-minutes", type=float, default=15.0, metavar="N",
                           help="only orders created more than N minutes ago (default 15)")

    prune = command(
        "prune", cmd_prune, "drop old raw bodies, keep the keys",
        "For done events last updated more than N days ago, drop the raw body and the fields that are not "
        "needed to know what the event was (buyer ids, subject, signature); the row, its key, status, ids "
        "and amounts stay forever, so a late resend (TRADE_FINISHED, a refund months later) is still "
        "recognised. Without --yes, only says how many would be pruned.")
    prune.add_argument("--older-than-days", type=int, required=True, metavar="N",
                       help=f"at least {MIN_PRUNE_DAYS}: Alipay resends for about 25 hours")
    prune.add_argument("--yes", action="store_true", help="prune (without it: count only)")

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
        handler.setFormatter(_EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
        logging.root.addHandler(handler)
        logging.root.setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except CliError as exc:
        _emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # a bad ledger URL, an unreachable server, a missing table or file
        _emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except AlipayError as exc:  # LedgerUnavailable while working
        _emit(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover - python -m alipay_middleware runs __main__.py
    raise SystemExit(main())
