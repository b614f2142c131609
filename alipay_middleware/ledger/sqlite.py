"""The embedded ledger: one SQLite file, correct across threads and across processes on one host.

WAL mode with ``synchronous=FULL``: a commit is on disk before the call returns, so an event recorded
before its hook survives a crash. Each thread of each process has its own connection (reopened after a
fork); writers serialise on ``BEGIN IMMEDIATE``, which is what makes claim-or-busy atomic between
gunicorn workers. A writer that cannot get the lock within ``busy_timeout`` seconds gets
:class:`LedgerUnavailable`, which the notify path answers with a retryable 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any

from ..errors import HookFailed, LedgerUnavailable
from ..events import PaymentEvent
from .base import (
    ALREADY_DONE,
    BUSY,
    CLAIMED,
    DONE,
    FAILED,
    FOREIGN_PREFIX,
    PRUNE_KEEP,
    RECEIVED,
    REJECTED,
    Claim,
    Ledger,
    StoredEvent,
    check_aware,
    chunks,
)
from .guard import TransactionGuard

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COLUMNS = (
    "dedupe_key, trade_key, kind, status, out_trade_no, trade_no, trade_status, notify_id, charset, "
    "raw_body, fields, reason, error, attempts, received_at, updated_at"
)
_SELECTED = f"{_COLUMNS}, lease_owner, lease_until"
_PRUNABLE = "status = ? AND updated_at < ? AND raw_body IS NOT NULL"
_PRUNE_BATCH = 500


def _early(row: tuple[Any, ...] | None, now: float) -> Claim | None:
    """The claim's answer when the event's own row settles it: done, or its lease still live."""
    if row is not None and row[0] == DONE:
        return Claim(ALREADY_DONE)
    if row is not None and row[0] == RECEIVED and row[1] is not None and row[1] > now:
        return Claim(BUSY, retry_after=row[1] - now)
    return None


class _LeaseLost(Exception):
    """The event is no longer ``received`` under this owner's lease: roll back, run nothing."""


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:  # a -wal or -shm file removed meanwhile by the last connection closing
        return None


def _prepare_file(path: str) -> None:
    """Create a new ledger file owner-only (0600), before SQLite does with the umask's usual 0644; warn
    about an existing one that group or others can read or write.

    The file holds raw notification bodies with buyer ids. SQLite gives the ``-wal`` and ``-shm`` files
    the database file's mode, so they follow. Anything that goes wrong here (no such directory, no
    rights) is left to ``sqlite3.connect``, whose error the caller already explains.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        loose = {name: mode for name in (path, f"{path}-wal", f"{path}-shm")
                 if (mode := _mode(name)) is not None and mode & 0o066}
        if loose:
            name, mode = next(iter(loose.items()))
            logging.getLogger("alipay_middleware").warning(
                "alipay ledger file %s can be read or written by group or others (mode %04o): it holds raw "
                "notification bodies with buyer ids. Run: chmod 600 %s", name, mode, " ".join(loose))
        return
    except OSError:
        return
    try:
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask (a stricter one would drop the owner's write)
    finally:
        os.close(fd)


class SQLiteLedger(Ledger):
    """``SQLiteLedger("alipay-ledger.sqlite3")``, or ``SQLiteLedger(":memory:")`` for tests."""

    def __init__(self, path: str = "alipay-ledger.sqlite3", *, busy_timeout: float = 5.0,
                 table: str = "alipay_events") -> None:
        if not _TABLE.match(table):
            raise ValueError(f"table must be a plain SQL identifier, got {table!r}")
        self.path = path
        self.table = table
        self.busy_timeout = busy_timeout
        self._memory = path == ":memory:"
        self._local = threading.local()
        # An in-memory database lives in one connection, shared by all threads under a lock.
        self._lock: threading.Lock | None = threading.Lock() if self._memory else None
        # (pid, connection): a forked child must neither use nor close its parent's connections.
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        if not self._memory:
            _prepare_file(path)
        try:
            with self._tx() as db:
                self._create_schema(db)
        except LedgerUnavailable as exc:
            raise ValueError(
                f"cannot open the SQLite ledger at {path!r}: {exc}. Check that the directory exists "
                "and is writable by the app's user, or pass ledger='sqlite:///other/path.sqlite3'."
            ) from None

    def __repr__(self) -> str:
        return f"SQLiteLedger({self.path!r})"

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            if not self._memory:
                self._wal(db)
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            db.close()
            raise
        with self._connections_lock:
            self._connections.append((os.getpid(), db))
        return db

    def _wal(self, db: sqlite3.Connection) -> None:
        """Switch to WAL, waiting up to ``busy_timeout`` like every other statement. Workers that open a new
        ledger file at the same moment race to switch it, and the loser's pragma fails with ``database is
        locked`` at once: SQLite does not call the busy handler there. So retry, with short pauses."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        pid = os.getpid()
        if self._memory:
            if not self._connections:
                return self._connect()
            return self._connections[0][1]
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is None or local.pid != pid:  # new thread, or a forked child must not reuse a parent's
            db = self._connect()
            local.db, local.pid = db, pid
        return db

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock or nullcontext():
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise LedgerUnavailable(f"sqlite: {exc}") from exc
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise LedgerUnavailable(f"sqlite: {exc}") from exc
            except BaseException:
                self._rollback(db)
                raise

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _create_schema(self, db: sqlite3.Connection) -> None:
        t = self.table
        db.execute(
            f"""CREATE TABLE IF NOT EXISTS {t} (
                id INTEGER PRIMARY KEY,
                dedupe_key TEXT NOT NULL UNIQUE,
                trade_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                out_trade_no TEXT NOT NULL,
                trade_no TEXT NOT NULL,
                trade_status TEXT NOT NULL,
                notify_id TEXT NOT NULL,
                charset TEXT NOT NULL,
                raw_body BLOB,
                fields TEXT NOT NULL,
                reason TEXT,
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_until REAL,
                received_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )"""
        )
        db.execute(f"CREATE INDEX IF NOT EXISTS {t}_trade ON {t} (trade_key, status)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {t}_status ON {t} (status, updated_at)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {t}_order ON {t} (out_trade_no)")

    # -- the interface -----------------------------------------------------------------------------

    def claim(self, event: PaymentEvent, raw_body: bytes, charset: str, owner: str, lease: float) -> Claim:
        t = self.table
        select = f"SELECT status, lease_until FROM {t} WHERE dedupe_key = ?"
        # A copy of a done event, or of one whose hook is running, is answered from a read, without
        # queueing for the write lock behind other events' commits; done is final, so this is safe.
        with self._tx(write=False) as db:
            early = _early(db.execute(select, (event.key,)).fetchone(), time.time())
        if early is not None:
            return early
        now = time.time()
        with self._tx() as db:
            row = db.execute(select, (event.key,)).fetchone()
            early = _early(row, now)
            if early is not None:
                return early
            (other,) = db.execute(
                f"SELECT MAX(lease_until) FROM {t} WHERE trade_key = ? AND status = ? AND lease_until > ? "
                "AND dedupe_key <> ?",
                (event.trade_key, RECEIVED, now, event.key),
            ).fetchone()
            if other is not None:
                return Claim(BUSY, retry_after=other - now)
            if row is None:
                db.execute(
                    f"INSERT INTO {t} ({_COLUMNS}, lease_owner, lease_until) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?, ?)",
                    (*self._row(event, raw_body, charset, RECEIVED), now, now, owner, now + lease),
                )
                return Claim(CLAIMED, attempt=1)
            (attempts,) = db.execute(
                f"UPDATE {t} SET status = ?, lease_owner = ?, lease_until = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE dedupe_key = ? RETURNING attempts",
                (RECEIVED, owner, now + lease, now, event.key),
            ).fetchone()
            return Claim(CLAIMED, attempt=attempts)

    @staticmethod
    def _row(event: PaymentEvent, raw_body: bytes, charset: str, status: str) -> tuple[Any, ...]:
        return (
            event.key, event.trade_key, event.kind, status, event.out_trade_no, event.trade_no,
            event.trade_status, event.notify_id, charset, raw_body,
            json.dumps(event.raw, ensure_ascii=False, sort_keys=True),
        )

    def finish(self, key: str, note: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                f"UPDATE {self.table} SET status = ?, lease_owner = NULL, lease_until = NULL, error = NULL, "
                "reason = ?, updated_at = ? WHERE dedupe_key = ?",
                (DONE, note, time.time(), key),
            )

    def _release(self, key: str, owner: str, status: str, reason: str | None, error: str | None) -> None:
        with self._tx() as db:
            db.execute(
                f"UPDATE {self.table} SET status = ?, reason = ?, error = ?, lease_owner = NULL, "
                "lease_until = NULL, updated_at = ? WHERE dedupe_key = ? AND status = ? AND lease_owner = ?",
                (status, reason, error, time.time(), key, RECEIVED, owner),
            )

    def fail(self, key: str, owner: str, error: str) -> None:
        self._release(key, owner, FAILED, None, error)

    def reject(self, key: str, owner: str, reason: str) -> None:
        self._release(key, owner, REJECTED, reason, None)

    # -- transactional hooks ---------------------------------------------------------------------------

    def transactions_unsupported(self) -> str | None:
        if self._memory:
            return "an in-memory SQLite ledger (':memory:') shares one connection between all threads"
        return None

    def run_in_transaction(self, key: str, owner: str, work: Callable[[Any], None], note: str | None = None) -> bool:
        """See :meth:`Ledger.run_in_transaction`. ``BEGIN IMMEDIATE`` takes the database's write lock for the
        whole run of ``work``: other writers (claims of other events included) wait up to ``busy_timeout``."""
        if self._memory:
            raise NotImplementedError(self.transactions_unsupported())
        try:
            with self._tx() as db:
                row = db.execute(f"SELECT status, lease_owner FROM {self.table} WHERE dedupe_key = ?",
                                 (key,)).fetchone()
                if row is None or row[0] != RECEIVED or row[1] != owner:
                    raise _LeaseLost
                guard = TransactionGuard(db)
                try:
                    work(guard)
                    if not db.in_transaction:  # pragma: no cover - the guard refuses every way we know of
                        raise RuntimeError("the hook ended the ledger's transaction")
                except Exception as exc:
                    raise HookFailed(f"{type(exc).__name__}: {exc}") from exc
                finally:
                    guard._end()
                done = db.execute(
                    f"UPDATE {self.table} SET status = ?, lease_owner = NULL, lease_until = NULL, error = NULL, "
                    "reason = ?, updated_at = ? WHERE dedupe_key = ? AND status = ? AND lease_owner = ?",
                    (DONE, note, time.time(), key, RECEIVED, owner),
                ).rowcount
                if done != 1:  # pragma: no cover - the write lock kept the row as it was read above
                    raise _LeaseLost
        except _LeaseLost:
            return False
        return True

    def record_foreign(self, event: PaymentEvent, raw_body: bytes, charset: str, reason: str) -> None:
        ident = event.notify_id or hashlib.sha256(raw_body).hexdigest()[:32]
        foreign = f"{FOREIGN_PREFIX}{ident}"
        now = time.time()
        row = self._row(event, raw_body, charset, REJECTED)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO {self.table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, ?, ?) "
                "ON CONFLICT (dedupe_key) DO UPDATE SET attempts = attempts + 1, updated_at = excluded.updated_at",
                (foreign, f"{FOREIGN_PREFIX}{event.trade_key}", *row[2:], reason, now, now),
            )

    def is_done(self, key: str) -> bool:
        with self._tx(write=False) as db:
            row = db.execute(f"SELECT status FROM {self.table} WHERE dedupe_key = ?", (key,)).fetchone()
        return row is not None and row[0] == DONE

    def _stored(self, row: tuple[Any, ...]) -> StoredEvent:
        return StoredEvent(
            key=row[0], trade_key=row[1], kind=row[2], status=row[3], out_trade_no=row[4], trade_no=row[5],
            trade_status=row[6], notify_id=row[7], charset=row[8],
            raw_body=bytes(row[9]) if row[9] is not None else None, fields=json.loads(row[10]),
            reason=row[11], error=row[12], attempts=row[13], received_at=_utc(row[14]), updated_at=_utc(row[15]),
            lease_owner=row[16], lease_until=_utc(row[17]) if row[17] is not None else None,
        )

    def get(self, key: str) -> StoredEvent | None:
        with self._tx(write=False) as db:
            row = db.execute(f"SELECT {_SELECTED} FROM {self.table} WHERE dedupe_key = ?", (key,)).fetchone()
        return self._stored(row) if row is not None else None

    def events(self, status: str | None = None, out_trade_no: str | None = None,
               limit: int = 100) -> list[StoredEvent]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if out_trade_no is not None:
            where.append("out_trade_no = ?")
            args.append(out_trade_no)
        sql = f"SELECT {_SELECTED} FROM {self.table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._tx(write=False) as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [self._stored(row) for row in rows]

    # -- the operator's tools ---------------------------------------------------------------------

    def prune(self, before: datetime, *, dry_run: bool = False) -> int:
        t, cutoff = self.table, check_aware(before).timestamp()
        if dry_run:
            with self._tx(write=False) as db:
                (count,) = db.execute(f"SELECT count(*) FROM {t} WHERE {_PRUNABLE}", (DONE, cutoff)).fetchone()
            return int(count)
        keep = ", ".join("?" * len(PRUNE_KEEP))
        pruned = 0
        while True:  # short transactions: resends of the events being pruned are not kept waiting
            with self._tx() as db:
                batch = db.execute(
                    f"UPDATE {t} SET raw_body = NULL, fields = (SELECT json_group_object(key, value) "
                    f"FROM json_each({t}.fields) WHERE key IN ({keep})) "
                    f"WHERE id IN (SELECT id FROM {t} WHERE {_PRUNABLE} ORDER BY id LIMIT ?)",
                    (*PRUNE_KEEP, DONE, cutoff, _PRUNE_BATCH),
                ).rowcount
            pruned += batch
            if batch < _PRUNE_BATCH:
                return pruned

    def export(self, batch: int = 500) -> Iterator[StoredEvent]:
        after = 0
        while True:
            with self._tx(write=False) as db:
                rows = db.execute(f"SELECT id, {_SELECTED} FROM {self.table} WHERE id > ? ORDER BY id LIMIT ?",
                                  (after, batch)).fetchall()
            yield from (self._stored(row[1:]) for row in rows)  # outside the transaction
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def import_events(self, events: Iterable[StoredEvent], batch: int = 500) -> tuple[int, int]:
        inserted = skipped = 0
        for chunk in chunks(events, batch):
            with self._tx() as db:
                added = sum(db.execute(
                    f"INSERT INTO {self.table} ({_SELECTED}) VALUES ({', '.join('?' * 18)}) "
                    "ON CONFLICT (dedupe_key) DO NOTHING", _values(stored)).rowcount for stored in chunk)
            inserted, skipped = inserted + added, skipped + len(chunk) - added
        return inserted, skipped

    def close(self) -> None:
        pid = os.getpid()
        with self._connections_lock:
            for owner, db in self._connections:
                if owner == pid:
                    try:
                        db.close()
                    except sqlite3.Error:  # pragma: no cover
                        pass
            self._connections.clear()
        self._local = threading.local()


def _values(e: StoredEvent) -> tuple[Any, ...]:
    """A stored event as the values of :data:`_SELECTED`."""
    return (
        e.key, e.trade_key, e.kind, e.status, e.out_trade_no, e.trade_no, e.trade_status, e.notify_id, e.charset,
        e.raw_body, json.dumps(e.fields, ensure_ascii=False, sort_keys=True), e.reason, e.error, e.attempts,
        check_aware(e.received_at).timestamp(), check_aware(e.updated_at).timestamp(), e.lease_owner,
        check_aware(e.lease_until).timestamp() if e.lease_until is not None else None,
    )


__all__ = ["SQLiteLedger", "RECEIVED", "DONE", "FAILED", "REJECTED"]
