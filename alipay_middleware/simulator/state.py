"""The simulator's memory: trades, live notify ids, the trade number counter and the resends to come.

In memory by default; with ``state_path`` (``*.sqlite3``/``*.db``, see ``statefile``) every change is
written through as one row, so a restarted simulator still answers ``alipay.trade.query`` and
``notify_verify`` the way it did and resumes the resends that were pending. Every operation costs the same
at 10 or 10,000 trades: trades are indexed by ``(merchant, out_trade_no)``, ``trade_no`` and
``out_trade_no``, and kept in creation order for the admin page's pages.

Notify ids (legacy ``notify_verify``): a return's id lives ``RETURN_ID_LIFETIME``-ish (about a minute, as
at Alipay), a notification's until the shop answers ``success``. An acknowledged or expired id is
forgotten (``notify_verify`` answers ``false`` for it, as for any id it does not know); of the ids still
alive the table keeps the newest ``keep_notify_ids`` (default 10,000) and drops the oldest beyond that.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime
from pathlib import Path
from typing import Any

from .model import NotifyId, SimTrade
from .statefile import StateFile

#: How many live notify ids are kept by default (the oldest beyond are dropped).
KEEP_NOTIFY_IDS = 10_000


class Store:
    """Thread-safe: every method takes ``lock`` (re-entrant, so callers can group several calls)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, keep_notify_ids: int = KEEP_NOTIFY_IDS) -> None:
        if isinstance(keep_notify_ids, bool) or not isinstance(keep_notify_ids, int) or keep_notify_ids < 1:
            raise ValueError(f"keep_notify_ids must be a positive whole number, got {keep_notify_ids!r}")
        self.lock = threading.RLock()
        self.keep_notify_ids = keep_notify_ids
        self._trades: dict[tuple[str, str], SimTrade] = {}
        self._by_trade_no: dict[str, SimTrade] = {}
        self._by_out_trade_no: dict[str, list[SimTrade]] = {}
        self._order: list[SimTrade] = []  # creation order
        self._notify_ids: OrderedDict[str, NotifyId] = OrderedDict()
        self._expiring: deque[NotifyId] = deque()  # ids with a lifetime, oldest first
        self._counter = 0
        self._file: StateFile | None = None
        if path is not None:
            self._file = StateFile(Path(path))
            trades, notify_ids, self._counter = self._file.load()
            for trade in trades:
                self._index(trade)
            self._notify_ids.update((record.notify_id, record) for record in notify_ids)  # oldest first
            self._expiring.extend(sorted((r for r in notify_ids if r.expires is not None),
                                         key=lambda r: r.expires or 0.0))  # soonest first
            self._prune()

    # -- trades ------------------------------------------------------------------------------------

    def next_trade_no(self, now: datetime) -> str:
        """28 digits like Alipay's: the date, then a running number (``2026112622001400000000000001``)."""
        with self.lock:
            self._counter += 1
            if self._file is not None:
                self._file.save_counter(self._counter)
            return f"{now:%Y%m%d}220014{self._counter:014d}"

    def _index(self, trade: SimTrade) -> None:
        self._trades[(trade.merchant_id, trade.out_trade_no)] = trade
        self._by_trade_no[trade.trade_no] = trade
        self._by_out_trade_no.setdefault(trade.out_trade_no, []).append(trade)
        self._order.append(trade)

    def add(self, trade: SimTrade) -> None:
        with self.lock:
            if (trade.merchant_id, trade.out_trade_no) in self._trades or trade.trade_no in self._by_trade_no:
                raise ValueError(f"trade {trade.merchant_id}:{trade.out_trade_no} ({trade.trade_no}) exists already")
            self._index(trade)
            self.save(trade)

    def save(self, trade: SimTrade) -> None:
        """Write a changed trade through to the file (no-op in memory)."""
        with self.lock:
            if self._file is not None:
                self._file.save_trade(trade)

    def find(self, merchant_id: str, out_trade_no: str | None = None, trade_no: str | None = None) -> SimTrade | None:
        """``trade_no`` wins when both are given, as at Alipay."""
        with self.lock:
            if trade_no:
                trade = self._by_trade_no.get(trade_no)
                return trade if trade is not None and trade.merchant_id == merchant_id else None
            return self._trades.get((merchant_id, out_trade_no or ""))

    def by_trade_no(self, trade_no: str) -> SimTrade | None:
        with self.lock:
            return self._by_trade_no.get(trade_no)

    def by_out_trade_no(self, out_trade_no: str) -> list[SimTrade]:
        """The trades of every merchant with this out_trade_no, oldest first."""
        with self.lock:
            return list(self._by_out_trade_no.get(out_trade_no, ()))

    def trades(self) -> list[SimTrade]:
        """Every trade, oldest first."""
        with self.lock:
            return list(self._order)

    def count(self) -> int:
        with self.lock:
            return len(self._order)

    def newest(self, skip: int, limit: int) -> list[SimTrade]:
        """``limit`` trades, newest first, after skipping the ``skip`` newest: one page of the admin page."""
        with self.lock:
            end = max(len(self._order) - skip, 0)
            return self._order[max(end - limit, 0):end][::-1]

    # -- notify ids (legacy notify_verify) ---------------------------------------------------------

    def issue_notify_id(self, merchant_id: str, lifetime: float | None) -> str:
        notify_id = secrets.token_hex(16)
        record = NotifyId(notify_id, merchant_id, None if lifetime is None else time.time() + lifetime)
        with self.lock:
            self._notify_ids[notify_id] = record
            if record.expires is not None:
                self._expiring.append(record)
            if self._file is not None:
                self._file.save_notify_id(record)
            self._prune()
        return notify_id

    def notify_id_valid(self, merchant_id: str, notify_id: str) -> bool:
        with self.lock:
            self._prune()
            record = self._notify_ids.get(notify_id)
            if record is None or record.merchant_id != merchant_id:
                return False
            return record.expires is None or time.time() <= record.expires

    def retire_notify_id(self, notify_id: str) -> None:
        """Alipay forgets a notification's id once the merchant answered ``success``."""
        with self.lock:
            self._forget(notify_id)

    def notify_id_count(self) -> int:
        with self.lock:
            return len(self._notify_ids)

    def _forget(self, notify_id: str) -> None:
        record = self._notify_ids.pop(notify_id, None)
        if record is not None:
            record.alive = False
            if self._file is not None:
                self._file.drop_notify_id(notify_id)

    def _prune(self) -> None:
        """Forget expired ids (from the front of ``_expiring``) and the oldest beyond ``keep_notify_ids``."""
        now = time.time()
        while self._expiring and (not self._expiring[0].alive or (self._expiring[0].expires or 0) < now):
            self._forget(self._expiring.popleft().notify_id)
        while len(self._notify_ids) > self.keep_notify_ids:
            oldest = next(iter(self._notify_ids))
            self._forget(oldest)

    # -- pending notifications (the notifier's journal) ----------------------------------------------

    def save_pending(self, notify_id: str, due: float, record: dict[str, Any]) -> None:
        """A notification still to be sent at ``due`` (time.time()); kept only with a state file."""
        with self.lock:
            if self._file is not None:
                self._file.save_pending(notify_id, due, record)

    def drop_pending(self, notify_id: str) -> None:
        with self.lock:
            if self._file is not None:
                self._file.drop_pending(notify_id)

    def load_pending(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return self._file.load_pending() if self._file is not None else []

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None  # later changes (none are expected) stay in memory
