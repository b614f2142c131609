"""The commands that look after the ledger and the keys: prune, schema, migrate, keygen."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from ..ledger import (
    is_postgres_setting,
    split_table_params,
)
from ..wire.keys import write_key_pair
from .base import CliError, given_ledger_url, identity, ledger_url, opened
from .output import emit, when

#: Alipay resends an unacknowledged notification about 8 times over 25 hours.
MIN_PRUNE_DAYS = 2


def _progress_line() -> Callable[[int], None] | None:
    """A count of the events pruned so far on the operator's terminal, rewritten in place after each batch;
    nothing when stderr is not a terminal (cron, a pipe), whose output stays the one final line."""
    if not sys.stderr.isatty():
        return None

    def progress(pruned: int) -> None:
        sys.stderr.write(f"\rpruned {pruned} events so far")
        sys.stderr.flush()

    return progress


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than_days < MIN_PRUNE_DAYS:
        raise CliError(f"--older-than-days must be at least {MIN_PRUNE_DAYS}: Alipay resends a notification for "
                       "about 25 hours, and its raw body is the evidence while it does")
    if args.batch < 1:
        raise CliError(f"--batch must be at least 1, not {args.batch}")
    before = datetime.now(timezone.utc) - timedelta(days=args.older_than_days)
    with opened(ledger_url(args)) as ledger:
        if not args.yes:
            count = ledger.prune(before, dry_run=True)
            emit(f"{count} done events last updated before {when(before)} would be pruned: their raw bodies "
                 "and buyer fields dropped; keys, statuses, ids and amounts kept. Run again with --yes to prune.")
            return 0
        count = ledger.prune(before, batch=args.batch, progress=_progress_line())
    if sys.stderr.isatty() and count:
        sys.stderr.write("\n")
    emit(f"pruned {count} done events last updated before {when(before)}")
    return 0


def _agree(option: str, given: str | None, in_url: str | None) -> str | None:
    if given is not None and in_url is not None and given != in_url:
        raise CliError(f"--{option} {given!r} and the ledger URL's {option}={in_url!r} disagree")
    return given if given is not None else in_url


def cmd_schema(args: argparse.Namespace) -> int:
    try:
        from ..ledger.postgres import PostgresLedger, schema_sql
    except ImportError as exc:
        raise CliError(f"{exc}, or: pip install 'alipay-middleware[postgres]'") from None
    url = ledger_url(args) if args.apply else given_ledger_url(args)
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
    emit(f"the ledger table {schema}.{table} and its indexes are in place ({ledger!r})")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    source_url = args.source or ledger_url(args)
    with opened(source_url) as source, opened(args.target, create=True) as target:
        if identity(source) == identity(target):
            raise CliError(f"--from and --to are the same ledger ({source!r})")
        inserted, skipped = target.import_events(source.export())
    emit(f"copied {inserted} events from {source!r} to {target!r}; "
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
    emit(f"wrote {paths[0]} (RSA-{args.bits} private key, PKCS#8, readable by you only: never upload it), "
         f"{paths[1]} and {paths[2]} (the public key)")
    emit(f"for {where}")
    emit("the public key, as the console wants it (one line):")
    emit(line)
    return 0

