"""Ledgers: where verified events are recorded before their hooks run, and ``open_ledger`` to pick one.

The interface is :mod:`.base`; :class:`SQLiteLedger` (:mod:`.sqlite`) is imported on first use, so a module
that needs only the interface does not load ``sqlite3``. ``PostgresLedger`` lives in :mod:`.postgres`.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .base import (
    ALREADY_DONE,
    BUSY,
    CLAIMED,
    DONE,
    FAILED,
    PRUNE_KEEP,
    RECEIVED,
    REJECTED,
    Claim,
    Ledger,
    StoredEvent,
)

if TYPE_CHECKING:  # at run time __getattr__ below imports it on first use
    from .sqlite import SQLiteLedger

_NAMES = ("schema", "table")
_POSTGRES_URL = ("postgresql://", "postgres://")
#: libpq's keyword form, ``host=db dbname=shop user=shop``: it starts with a keyword and ``=``.
_KEYWORD_FORM = re.compile(r"\s*[A-Za-z_]+\s*=")


def is_postgres_setting(spec: str) -> bool:
    """A PostgreSQL URL, or libpq's keyword form (which ``PostgresLedger`` accepts as well)."""
    return spec.startswith(_POSTGRES_URL) or _KEYWORD_FORM.match(spec) is not None


def split_table_params(url: str) -> tuple[str, dict[str, str]]:
    """``postgresql://...?table=t&schema=s`` -> the URL without them, and ``{"table": "t", "schema": "s"}``.

    They name the ledger's table; libpq knows no such parameters, so they never reach it. Every other
    parameter is kept exactly as written.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    kept, names = [], {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in _NAMES:
            names[name] = unquote(value)
        elif part:
            kept.append(part)
    return base + ("?" + "&".join(kept) if kept else ""), names


def open_ledger(spec: str | Ledger, *, create: bool = True) -> Ledger:
    """A ledger from ``"sqlite:///relative.sqlite3"``, ``"sqlite:////absolute/path"``, ``":memory:"``
    (or ``"sqlite:///:memory:"``), ``"postgresql://user@host/db"`` (needs the ``postgres`` extra; add
    ``?table=name`` and/or ``&schema=name`` for another table than ``public.alipay_events``), libpq's
    keyword form ``"host=db dbname=shop user=shop"`` (always ``public.alipay_events``), or a
    :class:`Ledger` instance passed through.

    ``create=False`` (the operator's tools) refuses a SQLite file or PostgreSQL table that does not
    exist yet instead of creating an empty one: a mistyped path is an error, not an empty ledger.

    An unrecognised setting is never quoted in the error, not even its first characters: a PostgreSQL
    setting with a typo still holds its password.
    """
    if isinstance(spec, Ledger):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"ledger must be a URL string or a Ledger instance, not {type(spec).__name__}")
    from .sqlite import SQLiteLedger

    if spec == ":memory:":
        return SQLiteLedger(":memory:")
    if spec.startswith("sqlite:///"):
        path = spec[len("sqlite:///"):]
        if not path:
            raise ValueError("ledger URL names no file: use sqlite:///alipay-ledger.sqlite3")
        if not create and path != ":memory:" and not os.path.isfile(path):
            raise ValueError(f"no SQLite ledger at {path!r} (relative paths start from {os.getcwd()!r})")
        return SQLiteLedger(path)
    if is_postgres_setting(spec):
        try:
            from .postgres import PostgresLedger
        except ImportError as exc:
            raise ValueError(f"{exc}, or: pip install 'alipay-middleware[postgres]'") from None
        url, names = split_table_params(spec) if spec.startswith(_POSTGRES_URL) else (spec, {})
        return PostgresLedger(url, schema=names.get("schema", "public"), table=names.get("table", "alipay_events"),
                              create_schema=create)
    raise ValueError(
        f"unsupported ledger setting (not shown: it may hold a password){_hint(spec)}. Use "
        "'sqlite:///path/to/file.sqlite3' (relative), 'sqlite:////absolute/path.sqlite3', ':memory:' (tests only), "
        "'postgresql://user@host/db', libpq's 'host=... dbname=...', or pass a Ledger instance"
    )


def _hint(spec: str) -> str:
    """What the setting seems to be meant as, said without quoting any of it."""
    start = spec.strip().lower()
    if start.startswith("postgres"):
        return ": it starts like a PostgreSQL URL, which begins with postgresql:// (a colon and two slashes)"
    if start.startswith("sqlite"):
        return ": it starts like a SQLite URL, which begins with sqlite:/// (three slashes; four for an absolute path)"
    return ""


__all__ = [
    "ALREADY_DONE", "BUSY", "CLAIMED", "DONE", "FAILED", "PRUNE_KEEP", "RECEIVED", "REJECTED",
    "Claim", "Ledger", "SQLiteLedger", "StoredEvent", "is_postgres_setting", "open_ledger", "split_table_params",
]


if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise accept any name as this one's result

    def __getattr__(name: str) -> Any:
        """``SQLiteLedger``, imported on first use (PEP 562) and kept here for the next."""
        if name != "SQLiteLedger":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from .sqlite import SQLiteLedger

        globals()[name] = SQLiteLedger
        return SQLiteLedger


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
