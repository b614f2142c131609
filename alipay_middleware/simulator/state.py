"""The simulator's memory: trades (with their refunds), issued notify ids and the trade number counter.

In memory by default; with ``state_path`` every change is written through to a JSON file (``*.json``,
rewritten atomically) or an SQLite database (``*.sqlite3``/``*.db``), so a restarted simulator still
answers ``alipay.trade.query`` and ``notify_verify`` the way it did. Notification attempts are kept in
memory only: resends that were pending when the process stopped are not resumed.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .model import Refund, SimTrade

_TRADE_DATES = ("created_at", "paid_at", "closed_at")


@dataclass
class NotifyId:
    notify_id: str
    merchant_id: str
    #: time.time() after which notify_verify answers false; None: until the notification is acknowledged.
    expires: float | None
    alive: bool = True


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


class Store:
    """Thread-safe: every method takes ``lock`` (re-entrant, so callers can group several calls)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.lock = threading.RLock()
        self._trades: dict[tuple[str, str], SimTrade] = {}
        self._notify_ids: dict[str, NotifyId] = {}
        self._counter = 0
        self._backend: _Backend | None = None
        if path is not None:
            path = Path(path)
            if path.suffix in (".sqlite3", ".sqlite", ".db"):
                self._backend = _SQLite(path)
            elif path.suffix == ".json":
                self._backend = _JSON(path)
            else:
                raise ValueError(f"state_path must end in .json, .sqlite3 or .db, got {str(path)!r}")
            trades, notify_ids, self._counter = self._backend.load()
            self._trades = {(t.merchant_id, t.out_trade_no): t for t in trades}
            self._notify_ids = {n.notify_id: n for n in notify_ids}

    # -- trades ------------------------------------------------------------------------------------

    def next_trade_no(self, now: datetime) -> str:
        """28 digits like Alipay's: the date, then a running number (``2026112622001400000000000001``)."""
        with self.lock:
            self._counter += 1
            if self._backend is not None:
                self._backend.save_counter(self._counter)
            return f"{now:%Y%m%d}220014{self._counter:014d}"

    def add(self, trade: SimTrade) -> None:
        with self.lock:
            self._trades[(trade.merchant_id, trade.out_trade_no)] = trade
            self.save(trade)

    def save(self, trade: SimTrade) -> None:
        """Write a changed trade through to the file (no-op in memory)."""
        with self.lock:
            if self._backend is not None:
                self._backend.save_trade(trade)

    def find(self, merchant_id: str, out_trade_no: str | None = None, trade_no: str | None = None) -> SimTrade | None:
        """``trade_no`` wins when both are given, as at Alipay."""
        with self.lock:
            if trade_no:
                return next((t for t in self._trades.values()
                             if t.trade_no == trade_no and t.merchant_id == merchant_id), None)
            return self._trades.get((merchant_id, out_trade_no or ""))

    def by_trade_no(self, trade_no: str) -> SimTrade | None:
        with self.lock:
            return next((t for t in self._trades.values() if t.trade_no == trade_no), None)

    def trades(self) -> list[SimTrade]:
        with self.lock:
            return sorted(self._trades.values(), key=lambda t: t.created_at)

    # -- notify ids (legacy notify_verify) ---------------------------------------------------------

    def issue_notify_id(self, merchant_id: str, lifetime: float | None) -> str:
        notify_id = secrets.token_hex(16)
        record = NotifyId(notify_id, merchant_id, None if lifetime is None else time.time() + lifetime)
        with self.lock:
            self._notify_ids[notify_id] = record
            if self._backend is not None:
                self._backend.save_notify_id(record)
        return notify_id

    def notify_id_valid(self, merchant_id: str, notify_id: str) -> bool:
        with self.lock:
            record = self._notify_ids.get(notify_id)
            if record is None or not record.alive or record.merchant_id != merchant_id:
                return False
            return record.expires is None or time.time() <= record.expires

    def retire_notify_id(self, notify_id: str) -> None:
        """Alipay forgets a notification's id once the merchant answered ``success``."""
        with self.lock:
            record = self._notify_ids.get(notify_id)
            if record is not None and record.alive:
                record.alive = False
                if self._backend is not None:
                    self._backend.save_notify_id(record)

    def close(self) -> None:
        with self.lock:
            if self._backend is not None:
                self._backend.close()


class _Backend:
    def load(self) -> tuple[list[SimTrade], list[NotifyId], int]:
        raise NotImplementedError

    def save_trade(self, trade: SimTrade) -> None:
        raise NotImplementedError

    def save_notify_id(self, record: NotifyId) -> None:
        raise NotImplementedError

    def save_counter(self, counter: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _JSON(_Backend):
    """One document, rewritten through a temporary file and ``os.replace`` (never half-written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"version": 1, "counter": 0, "trades": {}, "notify_ids": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"state file {str(path)!r} is not a simulator state file: {exc}") from None
            if not isinstance(loaded, dict) or loaded.get("version") != 1:
                raise ValueError(f"state file {str(path)!r} is not a simulator state file (version 1)")
            self.doc = loaded

    def load(self) -> tuple[list[SimTrade], list[NotifyId], int]:
        trades = [trade_from_dict(t) for t in self.doc["trades"].values()]
        ids = [NotifyId(**n) for n in self.doc["notify_ids"].values()]
        return trades, ids, int(self.doc["counter"])

    def _write(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.doc, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(temporary, self.path)

    def save_trade(self, trade: SimTrade) -> None:
        self.doc["trades"][f"{trade.merchant_id}:{trade.out_trade_no}"] = trade_to_dict(trade)
        self._write()

    def save_notify_id(self, record: NotifyId) -> None:
        self.doc["notify_ids"][record.notify_id] = asdict(record)
        self._write()

    def save_counter(self, counter: int) -> None:
        self.doc["counter"] = counter
        self._write()


class _SQLite(_Backend):
    def __init__(self, path: Path) -> None:
        # One connection shared under the store's lock; autocommit, so every change is durable at once.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS sim_trades (merchant_id TEXT, out_trade_no TEXT, data TEXT NOT NULL,"
            " PRIMARY KEY (merchant_id, out_trade_no));"
            "CREATE TABLE IF NOT EXISTS sim_notify_ids (notify_id TEXT PRIMARY KEY, data TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS sim_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )

    def load(self) -> tuple[list[SimTrade], list[NotifyId], int]:
        trades = [trade_from_dict(json.loads(row[0])) for row in self.db.execute("SELECT data FROM sim_trades")]
        ids = [NotifyId(**json.loads(row[0])) for row in self.db.execute("SELECT data FROM sim_notify_ids")]
        row = self.db.execute("SELECT value FROM sim_meta WHERE name = 'counter'").fetchone()
        return trades, ids, int(row[0]) if row else 0

    def save_trade(self, trade: SimTrade) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_trades VALUES (?, ?, ?)",
                        (trade.merchant_id, trade.out_trade_no, json.dumps(trade_to_dict(trade), ensure_ascii=False)))

    def save_notify_id(self, record: NotifyId) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_notify_ids VALUES (?, ?)",
                        (record.notify_id, json.dumps(asdict(record))))

    def save_counter(self, counter: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO sim_meta VALUES ('counter', ?)", (str(counter),))

    def close(self) -> None:
        self.db.close()
