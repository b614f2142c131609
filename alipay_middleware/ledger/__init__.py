"""Ledgers: where verified events are recorded before their hooks run. See :mod:`.base`."""

from __future__ import annotations

from .base import ALREADY_DONE, BUSY, CLAIMED, DONE, FAILED, RECEIVED, REJECTED, Claim, Ledger, StoredEvent
from .sqlite import SQLiteLedger


def open_ledger(spec: str | Ledger) -> Ledger:
    """A ledger from ``"sqlite:///relative.sqlite3"``, ``"sqlite:////absolute/path"``, ``":memory:"``
    (or ``"sqlite:///:memory:"``), ``"postgresql://user@host/db"`` (needs the ``postgres`` extra), or a
    :class:`Ledger` instance passed through."""
    if isinstance(spec, Ledger):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"ledger must be a URL string or a Ledger instance, not {type(spec).__name__}")
    if spec == ":memory:":
        return SQLiteLedger(":memory:")
    if spec.startswith("sqlite:///"):
        path = spec[len("sqlite:///"):]
        if not path:
            raise ValueError("ledger URL names no file: use sqlite:///alipay-ledger.sqlite3")
        return SQLiteLedger(path)
    if spec.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresLedger
        except ImportError as exc:
            raise ValueError(f"{exc}, or: pip install 'alipay-middleware[postgres]'") from None
        return PostgresLedger(spec)
    raise ValueError(
        f"unsupported ledger {spec.split('://')[0][:20]!r}: use 'sqlite:///path/to/file.sqlite3' (relative), "
        "'sqlite:////absolute/path.sqlite3', ':memory:' (tests only), 'postgresql://user@host/db', "
        "or pass a Ledger instance"
    )


__all__ = [
    "ALREADY_DONE", "BUSY", "CLAIMED", "DONE", "FAILED", "RECEIVED", "REJECTED",
    "Claim", "Ledger", "SQLiteLedger", "StoredEvent", "open_ledger",
]
