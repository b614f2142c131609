"""The simulator's state file: SQLite (WAL), one row per trade, live notify id and pending notification.

A change writes its own row and nothing else, so it costs the same at 10 or 10,000 trades. The file is
read whole once, at start-up. Older simulators could keep their state in a JSON document rewritten whole
on every change; such a file is no longer written: ``state.json`` is refused with the fix, and a new
``state.sqlite3`` imports the ``state.json`` next to it (same name, ``.json``) on its first start.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .model import NotifyId, Refund, SimTrade

log = logging.getLogger("alipay_middleware.simulator")

SUFFIXES = (".sqlite3", ".sqlite", ".db")
_TRADE_DATES = ("created_at", "paid_at", "closed_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_trades (merchant_id TEXT, out_trade_no TEXT, data TEXT NOT NULL,
    PRIMARY KEY (merchant_id, out_trade_no));
CREATE TABLE IF NOT EXISTS sim_notify_ids (notify_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_pending (notify_id TEXT PRIMARY KEY, due REAL NOT NULL, data TEXT NOT NULL);
"""


def check_path(path: Path) -> None:
    """Raises ValueError naming the fix for a path the simulator cannot keep its state in."""
    if path.suffix == ".json":
        raise ValueError(
            f"state_path {str(path)!r}: the simulator keeps its state in SQLite now (a JSON file was rewritten "
            f"whole on every change); give {str(path.with_suffix('.sqlite3'))!r} instead: on its first start "
            f"it imports the trades of {path.name} if that file exists")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"state_path must end in .sqlite3 or .db (SQLite), got {str(path)!r}")


def trade_to_dict(trade: SimTrade) -> dict[str, Any]:
    data = asdict(trade)
    data["total_amount"] = str(trade.total_amount)
    data["refunded_amount"] = str(trade.refunded_amount)
    for name in _TRADE_DATES:
        value = getattr(trade, name)
        data[name] = value.isoformat() if value is not None else None
    data["refunds"] = {no: {"out_request_no": no, "amount": str(r.amount), "at": r.at.isoformat()}
                       for no, r in trade.refunds.items()}
    return data


def trade_from_dict(data: dict[str, Any]) -> SimTrade:
    data = dict(data)
    data["total_amount"] = Decimal(data["total_amount"])
    data["refunded_amount"] = Decimal(data["refunded_amount"])
    for name in _TRADE_DATES:
        data[name] = datetime.fromisoformat(data[name]) if data.get(name) else None
    data["refunds"] = {no: Refund(no, Decimal(r["amount"]), datetime.fromisoformat(r["at"]))
                       for no, r in data.get("refunds", {}).items()}
    return SimTrade(**data)


def _creation_order(trade: SimTrade) -> tuple[int, str]:
    # trade_no ends in the running counter (see Store.next_trade_no): the order the trades were created in.
    tail = trade.trade_no[-14:]
    return (int(tail), trade.trade_no) if tail.isdigit() else (0, trade.trade_no)


class StateFile:
    """One SQLite connection, used under the store's lock; autocommit (each change is one transaction)."""

    def __init__(self, path: Path) -> None:
        check_path(path)
        fresh = not path.exists()
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # a test double's state: survives a crash of the process
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"state file {str(path)!r} is not a simulator state file (SQLite): {exc}") from None
        legacy_json = path.with_suffix(".json")
        if fresh and legacy_json.exists():
            try:
                self._import_json(legacy_json)
            except ValueError:
                self.db.close()
                path.unlink()  # not left half-made: the next start tries the import again
                raise

    def _import_json(self, source: Path) -> None:
        try:
            doc = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot import {str(source)!r} (an older simulator's state file): {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError(f"cannot import {str(source)!r}: not an older simulator's state file (version 1)")
        self.db.execute("BEGIN")
        for data in doc.get("trades", {}).values():
            self.save_trade(trade_from_dict(data))
        for data in doc.get("notify_ids", {}).values():
            if data.get("alive", True):
                self.save_notify_id(NotifyId(**data))
        self.save_counter(int(doc.get("counter", 0)))
        self.db.execute("COMMIT")
        log.info("simulator state: imported %d trades from %s (no longer used)", len(doc.get("trades", {})), source)

    def load(self) -> tuple[list[SimTrade], list[NotifyId], int]:
        trades = [trade_from_dict(json.loads(row[0])) for row in self.db.execute("SELECT data FROM sim_trades")]
        ids = [NotifyId(**json.loads(row[0]))
               for row in self.db.execute("SELECT data FROM sim_notify_ids ORDER BY rowid")]
        # Ids an older simulator kept after their acknowledgement: forgotten now (see state.py).
        self.db.execute("DELETE FROM sim_notify_ids WHERE json_extract(data, '$.alive') = 0")
        row = self.db.execute("SELECT value FROM sim_meta WHERE name = 'counter'").fetchone()
        return sorted(trades, key=_creation_order), [n for n in ids if n.alive], int(row[0]) if row else 0

    def save_trade(self, trade: SimTrade) -> None:
        self.db.execute("INSERT INTO sim_trades VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET data = excluded.data",
                        (trade.merchant_id, trade.out_trade_no, json.dumps(trade_to_dict(trade), ensure_ascii=False)))

    def save_notify_id(self, record: NotifyId) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_notify_ids VALUES (?, ?)",
                        (record.notify_id, json.dumps(asdict(record))))

    def drop_notify_id(self, notify_id: str) -> None:
        self.db.execute("DELETE FROM sim_notify_ids WHERE notify_id = ?", (notify_id,))

    def save_counter(self, counter: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_meta VALUES ('counter', ?)", (str(counter),))

    def save_pending(self, notify_id: str, due: float, record: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_pending VALUES (?, ?, ?)",
                        (notify_id, due, json.dumps(record, ensure_ascii=False)))

    def drop_pending(self, notify_id: str) -> None:
        self.db.execute("DELETE FROM sim_pending WHERE notify_id = ?", (notify_id,))

    def load_pending(self) -> list[tuple[float, dict[str, Any]]]:
        return [(float(due), json.loads(data))
                for due, data in self.db.execute("SELECT due, data FROM sim_pending ORDER BY due")]

    def close(self) -> None:
        self.db.close()
