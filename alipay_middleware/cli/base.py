"""What the commands share: the operator's error, the ledger they are given, the app they load."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..alipay import Alipay
from ..ledger import (
    Ledger,
    SQLiteLedger,
    open_ledger,
)

PROG = "alipay-middleware"
LEDGER_HELP = (
    "the ledger: sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3 or "
    "postgresql://user@host:5432/dbname, with ?table=NAME (and &schema=NAME) when the table is not "
    "public.alipay_events. Default: the ALIPAY_LEDGER environment variable"
)


class CliError(Exception):
    """A message for the operator, and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -- ledgers ------------------------------------------------------------------------------------------

def given_ledger_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.ledger or os.environ.get("ALIPAY_LEDGER") or None
    return url


def ledger_url(args: argparse.Namespace) -> str:
    url = given_ledger_url(args)
    if url is None:
        raise CliError("no ledger given: pass --ledger URL (e.g. sqlite:////srv/shop/alipay-ledger.sqlite3 or "
                       "postgresql://shop@db/shop) or set the ALIPAY_LEDGER environment variable")
    return url


@contextmanager
def opened(url: str, *, create: bool = False) -> Iterator[Ledger]:
    ledger = open_ledger(url, create=create)
    try:
        yield ledger
    finally:
        ledger.close()


def identity(ledger: Ledger) -> object:
    """What makes two ledger objects the same store (a false "different" only costs skipped rows)."""
    if isinstance(ledger, SQLiteLedger) and ledger.path != ":memory:":
        return ("sqlite", os.path.realpath(ledger.path), ledger.table)
    return repr(ledger)  # PostgresLedger: host, port, database, schema.table (never the password)


#: What --app takes, said with every error about it.
APP_FORMS = ("--app names the app's Alipay object as MODULE:ATTRIBUTE, e.g. myshop.payments:alipay (the module "
             "myshop/payments.py, imported from the current directory, as uvicorn does), or as FILE.py:ATTRIBUTE, "
             "e.g. shop.py:alipay or path/to/shop.py:alipay (that file, its folder on the import path)")


def load_app(spec: str) -> Alipay:
    """The ``Alipay`` object ``spec`` (``module.path:attribute`` or ``path/to/file.py:attribute``) names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        hint = f" Did you mean {spec}:alipay?" if spec.endswith(".py") else ""
        raise CliError(f"--app must be MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE (got {spec!r}).{hint} {APP_FORMS}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not module_name.endswith(".py") or not os.path.isfile(path):
            raise CliError(f"no Python file {module_name!r} (from {os.getcwd()}). {APP_FORMS}")
        folder, module_name = os.path.split(path[: -len(".py")])
        if folder not in sys.path:
            sys.path.insert(0, folder)  # the file's own imports of its neighbours work, as under `python FILE`
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn and gunicorn do: the app's modules sit here
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # a module that the app imports is missing: the traceback says which
        raise CliError(f"cannot import {module_name!r} (from {os.getcwd()}): {exc}. {APP_FORMS}") from None
    module = target
    for name in attribute.split("."):
        if not hasattr(target, name):
            apps = [n for n, value in vars(module).items() if isinstance(value, Alipay)]
            found = f"; its Alipay objects: {', '.join(apps)}" if apps else "; it holds no Alipay object"
            raise CliError(f"{module_name!r} has no attribute {attribute!r}{found}. {APP_FORMS}")
        target = getattr(target, name)
    if not isinstance(target, Alipay):
        raise CliError(f"{spec} is a {type(target).__name__}, not the app's Alipay object. {APP_FORMS}")
    return target


def check_same_ledger(args: argparse.Namespace, app_ledger: Ledger) -> None:
    """Replay runs on the app's own ledger: dedupe only holds within one ledger."""
    url = given_ledger_url(args)
    if url is None:
        return
    with opened(url) as named:
        if identity(named) != identity(app_ledger):
            raise CliError(f"--ledger (or ALIPAY_LEDGER) names {named!r}, but {args.app} records to "
                           f"{app_ledger!r}. Replay runs on the app's own ledger, where its notifications are "
                           "deduplicated: leave --ledger out or name that ledger")

