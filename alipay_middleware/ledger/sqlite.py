"""The embedded ledger: one SQLite file, correct across threads and across processes on one host.

WAL mode with ``synchronous=FULL``: a commit is on disk before the call returns, so an event recorded
before its hook survives a crash. Each thread of each process has its own connection (reopened after a
fork; a child never closes its parent's). Connections of threads that have ended are closed the next
time a thread connects, so a thread-per-request server (``flask run``, Django's runserver) holds no more
connections than it has live threads. Writers serialise on ``BEGIN IMMEDIATE``, which is what makes
claim-or-busy atomic between gunicorn workers. A writer that cannot get the lock within ``busy_timeout``
seconds gets :class:`LedgerUnavailable`, which the notify path answers with a retryable 503. The
statements are in ``sql/sqlite_schema.sql`` and ``sql/sqlite_queries.sql`` beside this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
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
    PRUNE_BATCH,
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
from .rows import COLUMNS, EPOCH, event_row
from .statements import load_statements

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Below any id: where prune's walk starts.
_BEFORE_FIRST_ID = -(2**63)
#: The shortest pause between two prune batches that wrote (seconds): longer than the first sleeps of
#: SQLite's busy handler (1, 2, 5 ms), so a writer kept waiting by a short batch gets in before the next.
_PRUNE_PAUSE = 0.01
_pause = time.sleep
_INCREMENTAL = 2  # PRAGMA auto_vacuum's answer for INCREMENTAL


def _early(row: tuple[Any, ...] | None, now: float) -> Claim | None:
    """The claim's answer when the event's own row settles it: done, or its lease still live."""
    if row is not None and row[0] == DONE:
        return Claim(ALREADY_DONE)
    if row is not None and row[0] == RECEIVED and row[1] is not None and row[1] > now:
        return Claim(BUSY, retry_after=row[1] - now)
    return None


class _LeaseLost(Exception):
    """The event is no longer ``received`` under this owner's lease: roll back, run nothing."""


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
        # (pid, thread, connection): a forked child must neither use nor close its parent's connections,
        # and a connection of a thread that has ended is closed the next time a thread connects.
        self._connections: list[tuple[int, threading.Thread, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._q = _Queries(table)
        self._incremental = False
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
        pid = os.getpid()
        with self._connections_lock:  # connections of threads that have ended (thread-per-request servers)
            ended = [db for owner, thread, db in self._connections if owner == pid and not thread.is_alive()]
            if ended:
                self._connections = [held for held in self._connections if held[2] not in ended]
        for db in ended:
            self._close_quietly(db)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            if not self._memory:
                if db.execute("PRAGMA page_count").fetchone()[0] == 0:
                    # A new, empty file: incremental auto-vacuum, which a database can only take before
                    # its first page is written (switching to WAL writes it), so that prune gives the pages
                    # it frees back to the file system. An existing file keeps its mode (README: Maintenance).
                    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._wal(db)
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            db.close()
            raise
        with self._connections_lock:
            self._connections.append((pid, threading.current_thread(), db))
        return db

    @staticmethod
    def _close_quietly(db: sqlite3.Connection) -> None:
        try:
            db.close()
        except sqlite3.Error:  # pragma: no cover
            pass

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
            return self._connections[0][2]
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
        for statement in load_statements("sqlite_schema").values():
            db.execute(statement.format(table=self.table))
        self._incremental = db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL

    # -- the interface -----------------------------------------------------------------------------

    def claim(self, event: PaymentEvent, raw_body: bytes, charset: str, owner: str, lease: float) -> Claim:
        q = self._q
        # A copy of a done event, or of one whose hook is running, is answered from a read, without
        # queueing for the write lock behind other events' commits; done is final, so this is safe.
        with self._tx(write=False) as db:
            early = _early(db.execute(q.claim_read, (event.key,)).fetchone(), time.time())
        if early is not None:
            return early
        now = time.time()
        with self._tx() as db:
            row = db.execute(q.claim_read, (event.key,)).fetchone()
            early = _early(row, now)
            if early is not None:
                return early
            (other,) = db.execute(q.trade_lease, (event.trade_key, RECEIVED, now, event.key)).fetchone()
            if other is not None:
                return Claim(BUSY, retry_after=other - now)
            if row is None:
                db.execute(q.insert_claimed,
                           (*event_row(event, raw_body, charset, RECEIVED), now, now, owner, now + lease))
                return Claim(CLAIMED, attempt=1)
            (attempts,) = db.execute(q.retake, (RECEIVED, owner, now + lease, now, event.key)).fetchone()
            return Claim(CLAIMED, attempt=attempts)

    def finish(self, key: str, note: str | None = None) -> None:
        with self._tx() as db:
            db.execute(self._q.finish, (DONE, note, time.time(), key))

    def _release(self, key: str, owner: str, status: str, reason: str | None, error: str | None) -> None:
        with self._tx() as db:
            db.execute(self._q.release, (status, reason, error, time.time(), key, RECEIVED, owner))

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
                row = db.execute(self._q.lease_of, (key,)).fetchone()
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
                done = db.execute(self._q.finish_owned, (DONE, note, time.time(), key, RECEIVED, owner)).rowcount
                if done != 1:  # pragma: no cover - the write lock kept the row as it was read above
                    raise _LeaseLost
        except _LeaseLost:
            return False
        return True

    def record_foreign(self, event: PaymentEvent, raw_body: bytes, charset: str, reason: str) -> None:
        ident = event.notify_id or hashlib.sha256(raw_body).hexdigest()[:32]
        foreign = f"{FOREIGN_PREFIX}{ident}"
        now = time.time()
        row = event_row(event, raw_body, charset, REJECTED)
        with self._tx() as db:
            db.execute(self._q.insert_foreign,
                       (foreign, f"{FOREIGN_PREFIX}{event.trade_key}", *row[2:], reason, now, now))

    def is_done(self, key: str) -> bool:
        with self._tx(write=False) as db:
            row = db.execute(self._q.status, (key,)).fetchone()
        return row is not None and row[0] == DONE

    def get(self, key: str) -> StoredEvent | None:
        with self._tx(write=False) as db:
            row = db.execute(self._q.get, (key,)).fetchone()
        return EPOCH.stored(row) if row is not None else None

    def events(self, status: str | None = None, out_trade_no: str | None = None,
               limit: int = 100) -> list[StoredEvent]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if out_trade_no is not None:
            where.append("out_trade_no = ?")
            args.append(out_trade_no)
        sql = self._q.select
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._tx(write=False) as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [EPOCH.stored(row) for row in rows]

    def iter_events(self, status: str | None = None, out_trade_no: str | None = None, *,
                    oldest_first: bool = False, page: int = 500, bodies: bool = True) -> Iterator[StoredEvent]:
        select = self._q.select_page if bodies else self._q.select_page_bare
        if page < 1:
            raise ValueError(f"page must be at least 1, got {page!r}")
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if out_trade_no is not None:
            where.append("out_trade_no = ?")
            args.append(out_trade_no)
        first = select + (" WHERE " + " AND ".join(where) if where else "")
        order = " ORDER BY id ASC LIMIT ?" if oldest_first else " ORDER BY id DESC LIMIT ?"
        # Keyset paging: each page starts after the last id seen, so it costs the same at any depth.
        after = select + " WHERE " + " AND ".join([*where, "id > ?" if oldest_first else "id < ?"])
        last: int | None = None
        while True:
            sql, values = (first, args) if last is None else (after, [*args, last])
            with self._tx(write=False) as db:
                rows = db.execute(sql + order, (*values, page)).fetchall()
            yield from (EPOCH.stored(row[1:]) for row in rows)  # outside the transaction
            if len(rows) < page:
                return
            last = rows[-1][0]

    # -- the operator's tools ---------------------------------------------------------------------

    def prune(self, before: datetime, *, dry_run: bool = False, batch: int = PRUNE_BATCH,
              progress: Callable[[int], None] | None = None) -> int:
        """See :meth:`Ledger.prune`. Each page of ``batch`` done events is read without the write lock; only
        a page holding events to prune takes it, for one ``UPDATE`` on that page's id range. SQLite has one
        writer, so a live notification's claim waits for at most that one batch: after each commit the
        prune pauses for as long as the batch held the lock (at least ``_PRUNE_PAUSE``), longer than a
        waiting writer's busy-handler sleeps, so the waiter gets the lock before the next batch. In a ledger
        made with incremental auto-vacuum, each batch also gives the pages it freed back to the file system."""
        cutoff = check_aware(before).timestamp()
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch!r}")
        if dry_run:
            with self._tx(write=False) as db:
                (count,) = db.execute(self._q.count_prunable, (DONE, cutoff)).fetchone()
            return int(count)
        pruned = 0
        after = _BEFORE_FIRST_ID
        while True:
            with self._tx(write=False) as db:
                seen, last, ready = db.execute(self._q.prune_page, (cutoff, DONE, after, batch)).fetchone()
            if ready:
                started = time.monotonic()
                with self._tx() as db:
                    rows = db.execute(self._q.prune_rows, (*PRUNE_KEEP, DONE, after, last, cutoff)).fetchall()
                    db.execute(self._q.prune_delete, (DONE, after, last, cutoff))
                    db.executemany(self._q.prune_insert, rows)
                    pruned += len(rows)
                    if self._incremental:
                        (free,) = db.execute("PRAGMA freelist_count").fetchone()
                        for _ in range(free):  # each run of the pragma through sqlite3 frees one page
                            db.execute("PRAGMA incremental_vacuum(1)")
                held = time.monotonic() - started
                if progress is not None:
                    progress(pruned)
                _pause(max(held, _PRUNE_PAUSE))  # a writer that queued behind this batch goes first
            if seen < batch:
                return pruned
            after = last

    def export(self, batch: int = 500) -> Iterator[StoredEvent]:
        after = 0
        while True:
            with self._tx(write=False) as db:
                rows = db.execute(self._q.export, (after, batch)).fetchall()
            yield from (EPOCH.stored(row[1:]) for row in rows)  # outside the transaction
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def import_events(self, events: Iterable[StoredEvent], batch: int = 500) -> tuple[int, int]:
        inserted = skipped = 0
        for chunk in chunks(events, batch):
            with self._tx() as db:
                added = sum(db.execute(self._q.insert_stored, EPOCH.values(stored)).rowcount for stored in chunk)
            inserted, skipped = inserted + added, skipped + len(chunk) - added
        return inserted, skipped

    def close(self) -> None:
        pid = os.getpid()
        with self._connections_lock:
            mine = [db for owner, _, db in self._connections if owner == pid]
            self._connections.clear()
        for db in mine:
            self._close_quietly(db)
        self._local = threading.local()


class _Queries:
    """Every statement of ``sql/sqlite_queries.sql``, with the table's name filled in."""

    def __init__(self, table: str) -> None:
        bare = {"raw_body": "NULL", "fields": "'{}'"}
        keep = ", ".join("?" * len(PRUNE_KEEP))
        kept = f"(SELECT json_group_object(key, value) FROM json_each({table}.fields) WHERE key IN ({keep}))"
        pruned = {"raw_body": "NULL", "fields": kept}
        names = {"table": table, "columns": ", ".join(COLUMNS),
                 "bare": ", ".join(bare.get(name, name) for name in COLUMNS),
                 "pruned": ", ".join(pruned.get(name, name) for name in COLUMNS)}
        q = {name: text.format(**names) for name, text in load_statements("sqlite_queries").items()}
        self.claim_read = q["claim_read"]
        self.trade_lease = q["trade_lease"]
        self.insert_claimed = q["insert_claimed"]
        self.retake = q["retake"]
        self.finish = q["finish"]
        self.release = q["release"]
        self.lease_of = q["lease_of"]
        self.finish_owned = q["finish_owned"]
        self.insert_foreign = q["insert_foreign"]
        self.status = q["status"]
        self.select = q["select"]
        self.select_page = q["select_page"]
        self.select_page_bare = q["select_page_bare"]
        self.get = q["get"]
        self.count_prunable = q["count_prunable"]
        self.prune_page = q["prune_page"]
        self.prune_rows = q["prune_rows"]
        self.prune_delete = q["prune_delete"]
        self.prune_insert = q["prune_insert"]
        self.export = q["export"]
        self.insert_stored = q["insert_stored"]


__all__ = ["SQLiteLedger", "RECEIVED", "DONE", "FAILED", "REJECTED"]
