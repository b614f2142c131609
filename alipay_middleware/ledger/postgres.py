"""The PostgreSQL ledger: one table, correct across threads, processes and hosts.

::

    from alipay_middleware.ledger.postgres import PostgresLedger

    ledger = PostgresLedger("postgresql://shop@db.internal:5432/shop")  # a connection per thread
    ledger = PostgresLedger(pool=psycopg_pool.ConnectionPool(...))      # or connections from your pool

Needs psycopg 3 (``pip install "psycopg[binary]"``); nothing else in the package imports it. The
semantics are those of :class:`~alipay_middleware.ledger.sqlite.SQLiteLedger`, statement for statement.

**Claim-or-busy is atomic** between any number of workers on any number of hosts. Lock order, the same
in every transaction that takes more than one lock, so claims cannot deadlock each other:

1. the trade: a transaction-scoped advisory lock (``pg_advisory_xact_lock``) on a 64-bit hash of the
   table and the ``trade_key``. Every claim of any event of one trade queues here, so the per-trade busy
   check and the write that follows it cannot interleave with another claim;
2. the event's row (``SELECT ... FOR UPDATE``), which also orders a claim against a concurrent
   ``finish`` / ``fail`` / ``reject`` of the same event (those take the row lock only, one row each).

The operator's tools keep to that order. ``import_events`` takes the trade locks of its batch first, in
ascending key order (a claim holds at most one, so no cycle), then inserts the rows; ``prune`` takes no
trade lock and only row locks of old ``done`` events, a batch per transaction, skipping (``SKIP LOCKED``)
rather than waiting for a row another transaction holds; ``export`` only reads.

A claim is one call of the table's function ``<table>_claim_v1`` (created with the table), which takes
those two locks and writes in a single round trip; ``finish``, ``fail`` and ``reject`` are single
``UPDATE`` statements. The statements and the function are in ``sql/postgres_schema.sql`` and
``sql/postgres_queries.sql`` beside this module; the row mapping is shared with SQLite (:mod:`.rows`).
Every wait for a lock is bounded by ``lock_timeout`` (session-wide on the ledger's own connections,
``SET LOCAL`` on a pool's), so a lock held by a stuck session becomes
:class:`~alipay_middleware.errors.LedgerUnavailable` (a retryable 503) instead of a hung request. Every
psycopg error (server down, broken connection, lock timeout, a value PostgreSQL cannot store such as a
NUL character in text) surfaces as ``LedgerUnavailable``; a broken connection is discarded and a new one
opened on next use. Leases are measured on the database server's clock (``clock_timestamp()``): one
clock for every host, so clock skew between app servers cannot stretch or shorten a lease.

Durability: a commit returns only once it is durable with PostgreSQL's default
``synchronous_commit=on``; this module never changes that setting.

**Schema**: with ``create_schema=True`` (the default) the table, its indexes and its function are created at
construction if they are missing; if they exist nothing is run, so an app user without DDL rights works
too. Shops whose administrator creates tables run :func:`schema_sql` by hand and pass
``create_schema=False``: a missing table then fails the construction with ``ValueError``, as does an
unreachable server or a rejected login, so a bad configuration shows at start-up, not at the first
payment.

Without a pool each thread of each process keeps its own connection (a forked child opens new ones and
never uses or closes its parent's); connections of threads that have ended are closed the next time a
thread connects. With a pool (anything whose ``connection()`` is a context manager yielding a psycopg
``Connection``, such as ``psycopg_pool.ConnectionPool``) every call borrows a connection for one
transaction; no session state is left on it, and :meth:`PostgresLedger.close` leaves the pool alone.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg.rows import tuple_row
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('PostgresLedger needs psycopg 3: pip install "psycopg[binary]"') from exc

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
from .rows import COLUMNS, TIMESTAMPTZ, event_row
from .statements import load_statements

# Index names are "<table>_<suffix>"; PostgreSQL silently truncates names past 63 bytes, and with
# CREATE INDEX IF NOT EXISTS two truncated names could collide into one missing index, so the table
# name leaves room for the longest suffix ("_received").
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,53}")
_INDEXES = {  # suffix -> columns
    "trade": ("trade_key", "status"),
    "status": ("status", "id"),  # events(status=...) newest first
    "order": ("out_trade_no",),
    "received": ("received_at",),
}
_BEFORE_FIRST_ID = -(2**63)  # where prune's walk starts


class ConnectionPoolLike(Protocol):
    """What ``pool=`` needs: ``psycopg_pool.ConnectionPool`` fits, and so does any look-alike."""

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...


def _misplaced_at(url: str) -> bool:
    """An '@' where libpq does not read one as the end of ``user:password``: after the first '@', or
    after a '/' that libpq takes for the end of the host (an unescaped '@' or '/' in the password)."""
    rest = url.split("://", 1)[1]
    end = next((i for i, c in enumerate(rest) if c in "@/"), len(rest))
    after = rest[end + 1:] if end < len(rest) and rest[end] == "@" else rest
    return "@" in after.split("?", 1)[0]


def _check_names(schema: str, table: str) -> None:
    if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
        raise ValueError(f"schema must be a plain SQL identifier (letters, digits, _), got {schema!r}")
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise ValueError(f"table must be a plain SQL identifier of at most 54 characters, got {table!r}")


_CLAIM_SUFFIX = "_claim_v1"


def _ddl(schema: str, table: str, *, with_schema: bool) -> list[sql.Composed]:
    """The statements of ``sql/postgres_schema.sql`` for this table, in order."""
    ddl = load_statements("postgres_schema")
    t = sql.Identifier(schema, table)
    statements = []
    if with_schema:
        statements.append(sql.SQL(ddl["create_schema"]).format(schema=sql.Identifier(schema)))
    statements.append(sql.SQL(ddl["create_table"]).format(table=t))
    for suffix, columns in _INDEXES.items():
        statements.append(sql.SQL(ddl["create_index"]).format(
            index=sql.Identifier(f"{table}_{suffix}"), table=t,
            columns=sql.SQL(", ").join(map(sql.Identifier, columns))))
    statements.append(sql.SQL(ddl["create_claim_function"]).format(
        function=sql.Identifier(schema, f"{table}{_CLAIM_SUFFIX}"), table=t,
        done=sql.Literal(DONE), received=sql.Literal(RECEIVED)))
    return statements


def schema_sql(schema: str = "public", table: str = "alipay_events") -> str:
    """The DDL :class:`PostgresLedger` needs, for an administrator to run by hand (idempotent).

    ``python -c 'from alipay_middleware.ledger.postgres import schema_sql; print(schema_sql())' | psql -d shop``
    """
    _check_names(schema, table)
    statements = _ddl(schema, table, with_schema=schema != "public")
    return "".join(statement.as_string() + ";\n" for statement in statements)


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class _Held:
    """A connection this ledger opened, and the process and thread it belongs to."""

    pid: int
    thread: threading.Thread
    conn: psycopg.Connection[Any]


class PostgresLedger(Ledger):
    """``PostgresLedger("postgresql://user@host:5432/dbname")`` or ``PostgresLedger(pool=your_pool)``.

    ``schema`` and ``table`` name the table (plain identifiers, always quoted). ``connect_timeout`` (seconds,
    whole seconds of at least 2 as libpq counts them) applies to connections this ledger opens;
    ``lock_timeout`` (seconds) bounds every wait for a lock. Raises ``ValueError`` for a bad argument, an
    unreachable server, a failed login, or a missing table with ``create_schema=False``.
    """

    def __init__(self, conninfo: str | None = None, *, pool: ConnectionPoolLike | None = None,
                 schema: str = "public", table: str = "alipay_events", create_schema: bool = True,
                 connect_timeout: float = 5.0, lock_timeout: float = 5.0) -> None:
        _check_names(schema, table)
        if (conninfo is None) == (pool is None):
            raise ValueError("pass either a conninfo/URL ('postgresql://user@host:5432/dbname') or pool=, not both")
        if pool is not None and not callable(getattr(pool, "connection", None)):
            raise ValueError(f"pool must have a connection() context manager, like psycopg_pool.ConnectionPool; "
                             f"got {type(pool).__name__}")
        if not connect_timeout > 0 or not math.isfinite(connect_timeout):
            raise ValueError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        if not lock_timeout >= 0.001 or not math.isfinite(lock_timeout):
            raise ValueError(f"lock_timeout must be at least 0.001 seconds, got {lock_timeout!r}")
        self.schema = schema
        self.table = table
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self._pool = pool
        self._params: dict[str, Any] = {}
        if conninfo is not None:
            self._params = self._parse(conninfo)
            self._params["connect_timeout"] = max(2, math.ceil(connect_timeout))  # libpq's minimum is 2
            self._params.setdefault("application_name", "alipay-middleware")
        self._local = threading.local()
        # Connections this ledger opened, with their pid: a forked child must neither use nor close its
        # parent's, and keeps referring to them so that they are never garbage-collected in the child.
        self._held: list[_Held] = []
        self._held_lock = threading.Lock()
        self._q = _Queries(schema, table, lock_timeout)
        self._open(create_schema)

    @staticmethod
    def _parse(conninfo: str) -> dict[str, Any]:
        if not isinstance(conninfo, str):
            raise ValueError(f"conninfo must be a string, not {type(conninfo).__name__}")
        if "://" in conninfo and not conninfo.startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL URL starts with postgresql:// or postgres:// "
                             "(e.g. 'postgresql://user@host:5432/dbname')")
        if "://" in conninfo and _misplaced_at(conninfo):
            # libpq would take the password's tail for the host or the database, and every message and
            # repr that names those would show it.
            raise ValueError("the PostgreSQL URL has an '@' outside its user:password@ part (not shown: it may "
                             "hold a password); percent-encode '@', '/' and ':' in the password as %40, %2F, %3A")
        try:
            params = dict(conninfo_to_dict(conninfo))
        except psycopg.Error:
            # psycopg's message quotes pieces of the string, which may hold a password.
            raise ValueError("invalid PostgreSQL conninfo (not shown: it may hold a password); expected "
                             "'postgresql://user@host:5432/dbname' or 'host=... dbname=...'") from None
        if not all(not port.strip() or port.strip().isdigit() for port in str(params.get("port") or "").split(",")):
            # libpq's own message quotes the value: a password whose '/' ended the URL's host part early.
            raise ValueError("the PostgreSQL setting's port is not a number (not shown: it may be part of a "
                             "password); percent-encode '/' and ':' in the password as %2F, %3A")
        return params

    def __repr__(self) -> str:
        where = f"{self.schema}.{self.table}"
        if self._pool is not None:
            return f"PostgresLedger(pool={type(self._pool).__name__}, table={where!r})"
        host = self._params.get("host") or self._params.get("hostaddr") or "(default)"
        port = self._params.get("port") or "(default)"
        dbname = self._params.get("dbname") or "(default)"
        return f"PostgresLedger(host={host!r}, port={port!r}, dbname={dbname!r}, table={where!r})"

    def _describe(self) -> str:
        return repr(self)[len("PostgresLedger("):-1]

    # -- start-up ----------------------------------------------------------------------------------

    def _open(self, create: bool) -> None:
        """Check at construction that the server answers and the table is there (or create it)."""
        try:
            with self._startup_connection() as conn:
                if not self._schema_complete(conn):
                    if not create:
                        raise ValueError(
                            f"the ledger table {self.schema}.{self.table} (or one of its indexes, or its claim "
                            "function) does not exist. Create it as a user that may run DDL with "
                            "'alipay-middleware schema --apply --ledger postgresql://USER@HOST/DBNAME"
                            f"?schema={self.schema}&table={self.table}', or have an administrator run the SQL "
                            f"that 'alipay-middleware schema --schema {self.schema} --table {self.table}' "
                            "prints (schema_sql() in Python); or pass create_schema=True to let this user "
                            "create it."
                        )
                    self._run_ddl(conn)
                self._probe(conn)
        except LedgerUnavailable as exc:
            raise ValueError(f"cannot use the PostgreSQL ledger ({self._describe()}): {exc}") from None

    @contextmanager
    def _startup_connection(self) -> Iterator[psycopg.Connection[Any]]:
        # Without a pool, a short-lived connection: a parent process that constructs the ledger and
        # then forks workers (gunicorn --preload) leaves no connection behind for them to inherit.
        try:
            if self._pool is not None:
                with self._pool.connection() as conn:
                    yield conn
            else:
                with psycopg.connect(**self._params, autocommit=True) as conn:
                    yield conn
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"postgresql: {_oneline(exc)}") from exc

    def _schema_complete(self, conn: psycopg.Connection[Any]) -> bool:
        names = [self.table, *(f"{self.table}_{suffix}" for suffix in _INDEXES)]
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(self._q.schema_complete,
                              (self.schema, names, self.schema, f"{self.table}{_CLAIM_SUFFIX}")).fetchone()
        return row is not None and row[0] == len(names) and row[1] == 1

    def _run_ddl(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self._q.set_lock_timeout)
            # Workers starting together would race CREATE ... IF NOT EXISTS into a unique violation.
            cur.execute(self._q.lock_trade, (self._q.lock_key("\x00ddl"),))
            row = cur.execute(self._q.schema_exists, (self.schema,)).fetchone()
            for statement in _ddl(self.schema, self.table, with_schema=row is None):
                cur.execute(statement)

    def _probe(self, conn: psycopg.Connection[Any]) -> None:
        """Fail at start-up, not at the first payment, if the table has other columns or no rights."""
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self._q.probe)
            row = cur.execute(self._q.privileges, {"t": self._q.qualified, "f": self._q.claim_signature}).fetchone()
        if row is None or not row[0]:
            raise ValueError(f"the database user may not SELECT, INSERT and UPDATE {self.schema}.{self.table} or "
                             f"EXECUTE its function {self.schema}.{self.table}{_CLAIM_SUFFIX}; "
                             "grant those privileges to the app's user")

    def create_schema(self) -> None:
        """Create the table, its indexes and its function if missing (runs :func:`schema_sql`; needs DDL rights)."""
        try:
            with self._borrow() as conn:
                self._run_ddl(conn)
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"postgresql: {_oneline(exc)}") from exc

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> _Held:
        pid = os.getpid()
        with self._held_lock:  # connections of threads that have ended (thread-per-request servers)
            ended = [h for h in self._held if h.pid == pid and not h.thread.is_alive()]
            self._held = [h for h in self._held if h not in ended]
        for held in ended:
            self._close_quietly(held.conn)
        conn = psycopg.connect(**self._params, autocommit=True)
        try:
            # Session-wide on a connection of our own, so single statements need no transaction around
            # them; a pool's connections get SET LOCAL instead (see _tx), leaving no state behind.
            conn.execute(self._q.set_session_lock_timeout)
        except psycopg.Error:
            self._close_quietly(conn)
            raise
        held = _Held(pid, threading.current_thread(), conn)
        with self._held_lock:
            self._held.append(held)
        return held

    def _connection(self) -> psycopg.Connection[Any]:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid() or held.conn.closed:  # new thread, fork, or dropped
            held = self._connect()
            self._local.held = held
        return held.conn

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._held_lock:
            self._held = [h for h in self._held if h.conn is not conn]
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.conn is conn:
            self._local.held = None
        self._close_quietly(conn)

    @staticmethod
    def _close_quietly(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a dead socket
            pass

    @contextmanager
    def _borrow(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is not None:
            with self._pool.connection() as conn:  # the pool checks and discards broken connections itself
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    # Our "transaction" would be a savepoint, committed only when the app commits.
                    raise LedgerUnavailable("postgresql: the pool lent a connection inside a transaction")
                yield conn
            return
        conn = self._connection()
        try:
            yield conn
        finally:
            if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
                self._discard(conn)

    @contextmanager
    def _tx(self, *, single: bool = False) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """A transaction; with ``single=True`` the caller runs one statement, which on a connection of
        our own (autocommit, session lock_timeout) is a transaction by itself: one round trip, not four."""
        try:
            with self._borrow() as conn:
                if single and self._pool is None:
                    with conn.cursor(row_factory=tuple_row) as cur:
                        yield cur
                    return
                with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                    if self._pool is not None:
                        cur.execute(self._q.set_lock_timeout)
                    yield cur
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"postgresql: {_oneline(exc)}") from exc

    # -- the interface -----------------------------------------------------------------------------

    def claim(self, event: PaymentEvent, raw_body: bytes, charset: str, owner: str, lease: float) -> Claim:
        q = self._q
        row = event_row(event, raw_body, charset, RECEIVED)
        args = (*row[:3], *row[4:], owner, lease, q.lock_key(event.trade_key), q.lock_timeout)
        with self._tx(single=True) as cur:
            state, attempt, retry_after = _one(cur.execute(q.claim, args))
        if state == CLAIMED:
            return Claim(CLAIMED, attempt=attempt)
        if state == ALREADY_DONE:
            return Claim(ALREADY_DONE)
        return Claim(BUSY, retry_after=retry_after)

    def finish(self, key: str, note: str | None = None) -> None:
        with self._tx(single=True) as cur:
            cur.execute(self._q.finish, (DONE, note, key))

    def _release(self, key: str, owner: str, status: str, reason: str | None, error: str | None) -> None:
        with self._tx(single=True) as cur:
            cur.execute(self._q.release, (status, reason, error, key, RECEIVED, owner))

    def fail(self, key: str, owner: str, error: str) -> None:
        self._release(key, owner, FAILED, None, error)

    def reject(self, key: str, owner: str, reason: str) -> None:
        self._release(key, owner, REJECTED, reason, None)

    # -- transactional hooks ---------------------------------------------------------------------------

    def transactions_unsupported(self) -> str | None:
        return None

    def run_in_transaction(self, key: str, owner: str, work: Callable[[Any], None], note: str | None = None) -> bool:
        """See :meth:`Ledger.run_in_transaction`. The event's row is locked (``FOR UPDATE``) for the whole run
        of ``work``, which stops a copy from retaking it: that copy waits at most ``lock_timeout`` and is
        answered 503. Only that trade's row is locked by the ledger; the hook's own statements lock what
        they touch, and every wait for a lock is bounded by ``lock_timeout`` too."""
        q = self._q
        try:
            with self._borrow() as conn:
                try:
                    with conn.transaction():
                        with conn.cursor(row_factory=tuple_row) as cur:
                            if self._pool is not None:
                                cur.execute(q.set_lock_timeout)
                            if cur.execute(q.lock_own, (key, RECEIVED, owner)).fetchone() is None:
                                raise _LeaseLost
                        guard = TransactionGuard(conn)
                        try:
                            work(guard)
                            if conn.info.transaction_status != TransactionStatus.INTRANS:
                                # A statement of the hook failed and the hook swallowed the error: the
                                # transaction is aborted, and committing it would silently roll back.
                                raise RuntimeError("a statement of the hook failed and its error was caught; "
                                                   "the transaction is aborted")
                        except Exception as exc:
                            raise HookFailed(f"{type(exc).__name__}: {_oneline(exc)}") from exc
                        finally:
                            guard._end()
                        with conn.cursor(row_factory=tuple_row) as cur:
                            if cur.execute(q.finish_owned, (DONE, note, key, RECEIVED, owner)).rowcount != 1:
                                raise _LeaseLost  # pragma: no cover - the row lock kept it as read above
                except _LeaseLost:
                    return False
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"postgresql: {_oneline(exc)}") from exc
        return True

    def record_foreign(self, event: PaymentEvent, raw_body: bytes, charset: str, reason: str) -> None:
        ident = event.notify_id or hashlib.sha256(raw_body).hexdigest()[:32]
        row = event_row(event, raw_body, charset, REJECTED)
        keys = (f"{FOREIGN_PREFIX}{ident}", f"{FOREIGN_PREFIX}{event.trade_key}")
        with self._tx(single=True) as cur:
            cur.execute(self._q.insert_foreign, (*keys, *row[2:], reason))

    def is_done(self, key: str) -> bool:
        with self._tx(single=True) as cur:
            row = cur.execute(self._q.status, (key,)).fetchone()
        return row is not None and row[0] == DONE

    def get(self, key: str) -> StoredEvent | None:
        with self._tx(single=True) as cur:
            row = cur.execute(self._q.get, (key,)).fetchone()
        return TIMESTAMPTZ.stored(row) if row is not None else None

    def events(self, status: str | None = None, out_trade_no: str | None = None,
               limit: int = 100) -> list[StoredEvent]:
        where: list[sql.Composable] = []
        args: list[Any] = []
        if status is not None:
            where.append(sql.SQL("status = %s"))
            args.append(status)
        if out_trade_no is not None:
            where.append(sql.SQL("out_trade_no = %s"))
            args.append(out_trade_no)
        query = self._q.select
        if where:
            query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(where))
        # SQLite reads a negative LIMIT as "no limit"; PostgreSQL's spelling of that is LIMIT NULL.
        args.append(limit if limit >= 0 else None)
        with self._tx(single=True) as cur:
            rows = cur.execute(sql.SQL("{} ORDER BY id DESC LIMIT %s").format(query), args).fetchall()
        return [TIMESTAMPTZ.stored(row) for row in rows]

    def iter_events(self, status: str | None = None, out_trade_no: str | None = None, *,
                    oldest_first: bool = False, page: int = 500, bodies: bool = True) -> Iterator[StoredEvent]:
        select = self._q.select_page if bodies else self._q.select_page_bare
        if page < 1:
            raise ValueError(f"page must be at least 1, got {page!r}")
        where: list[sql.Composable] = []
        args: list[Any] = []
        if status is not None:
            where.append(sql.SQL("status = %s"))
            args.append(status)
        if out_trade_no is not None:
            where.append(sql.SQL("out_trade_no = %s"))
            args.append(out_trade_no)
        order = sql.SQL(" ORDER BY id ASC LIMIT %s" if oldest_first else " ORDER BY id DESC LIMIT %s")
        # Keyset paging: each page starts after the last id seen, so it costs the same at any depth.
        first = sql.SQL("{} WHERE {}").format(select, sql.SQL(" AND ").join(where)) if where \
            else select
        after = sql.SQL("{} WHERE {}").format(
            select, sql.SQL(" AND ").join([*where, sql.SQL("id > %s" if oldest_first else "id < %s")]))
        last: int | None = None
        while True:
            query, values = (first, args) if last is None else (after, [*args, last])
            with self._tx(single=True) as cur:
                rows = cur.execute(sql.Composed([query, order]), [*values, page]).fetchall()
            yield from (TIMESTAMPTZ.stored(row[1:]) for row in rows)  # outside the transaction
            if len(rows) < page:
                return
            last = rows[-1][0]

    # -- the operator's tools ---------------------------------------------------------------------

    def prune(self, before: datetime, *, dry_run: bool = False, batch: int = PRUNE_BATCH,
              progress: Callable[[int], None] | None = None) -> int:
        """See :meth:`Ledger.prune`. Each batch is one statement, its own transaction: it locks only rows of
        old ``done`` events, which no live notification writes (a resend of one is answered from a read),
        and skips a row another transaction holds instead of waiting for it (a later prune takes it)."""
        cutoff = check_aware(before)
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch!r}")
        if dry_run:
            with self._tx(single=True) as cur:
                (count,) = _one(cur.execute(self._q.count_prunable, (DONE, cutoff)))
            return int(count)
        pruned = 0
        after = _BEFORE_FIRST_ID
        while True:
            with self._tx(single=True) as cur:
                seen, last, done = _one(cur.execute(self._q.prune, (DONE, after, batch, DONE, after, cutoff,
                                                                    list(PRUNE_KEEP))))
            if done:
                pruned += done
                if progress is not None:
                    progress(pruned)
            if seen < batch:
                return pruned
            after = last

    def export(self, batch: int = 500) -> Iterator[StoredEvent]:
        after = 0
        while True:
            with self._tx(single=True) as cur:
                rows = cur.execute(self._q.export, (after, batch)).fetchall()
            yield from (TIMESTAMPTZ.stored(row[1:]) for row in rows)  # outside the transaction
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def import_events(self, events: Iterable[StoredEvent], batch: int = 500) -> tuple[int, int]:
        q = self._q
        inserted = skipped = 0
        for chunk in chunks(events, batch):
            with self._tx() as cur:
                for lock in sorted({q.lock_key(stored.trade_key) for stored in chunk}):  # trade locks first
                    cur.execute(q.lock_trade, (lock,))
                added = sum(cur.execute(q.insert_stored, TIMESTAMPTZ.values(stored)).fetchone() is not None
                            for stored in chunk)
            inserted, skipped = inserted + added, skipped + len(chunk) - added
        return inserted, skipped

    def close(self) -> None:
        """Close the connections this process opened (a pool passed in is left open: it is yours)."""
        pid = os.getpid()
        with self._held_lock:
            mine = [h for h in self._held if h.pid == pid]
            self._held = [h for h in self._held if h.pid != pid]
        for held in mine:
            self._close_quietly(held.conn)
        self._local = threading.local()


class _LeaseLost(Exception):
    """The event is no longer ``received`` under this owner's lease: roll back, run nothing."""


def _one(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:  # pragma: no cover - each caller's statement returns exactly one row
        raise LedgerUnavailable("postgresql: a statement returned no row")
    return row


class _Queries:
    """Every statement of ``sql/postgres_queries.sql``, composed once per ledger with the quoted table name."""

    def __init__(self, schema: str, table: str, lock_timeout: float) -> None:
        t = sql.Identifier(schema, table)
        function = sql.Identifier(schema, f"{table}{_CLAIM_SUFFIX}")
        self.qualified = t.as_string()
        self._lock_namespace = f"{schema}.{table}".encode()
        self.lock_timeout = f"{max(1, round(lock_timeout * 1000))}ms"
        names = {
            "table": t, "function": function, "timeout": sql.Literal(self.lock_timeout),
            "columns": sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
            "selected": sql.SQL(", ").join(
                sql.SQL("fields::text") if name == "fields" else sql.Identifier(name) for name in COLUMNS),
            "bare": sql.SQL(", ").join(
                sql.SQL("NULL") if name == "raw_body" else sql.SQL("'{}'") if name == "fields" else sql.Identifier(name)
                for name in COLUMNS),
        }
        q = {name: sql.SQL(text).format(**names) for name, text in load_statements("postgres_queries").items()}
        self.claim_signature = sql.SQL(load_statements("postgres_schema")["claim_function_signature"]).format(
            function=function).as_string(None)
        # The hot statements as bytes, rendered once rather than on every call.
        self.claim = q["claim"].as_bytes(None)
        self.finish = q["finish"].as_bytes(None)
        self.lock_own = q["lock_own"].as_bytes(None)
        self.finish_owned = q["finish_owned"].as_bytes(None)
        self.release = q["release"].as_bytes(None)
        self.status = q["status"].as_bytes(None)
        self.set_lock_timeout = q["set_lock_timeout"]
        self.set_session_lock_timeout = q["set_session_lock_timeout"]
        self.lock_trade = q["lock_trade"]
        self.insert_foreign = q["insert_foreign"]
        self.select = q["select"]
        self.select_page = q["select_page"]
        self.select_page_bare = q["select_page_bare"]
        self.get = q["get"]
        self.probe = q["probe"]
        self.count_prunable = q["count_prunable"]
        self.prune = q["prune"]
        self.export = q["export"]
        self.insert_stored = q["insert_stored"]
        self.schema_complete = q["schema_complete"]
        self.schema_exists = q["schema_exists"]
        self.privileges = q["privileges"]

    def lock_key(self, trade_key: str) -> int:
        """The advisory lock's 64-bit key; a collision only makes two trades wait for each other."""
        digest = hashlib.blake2b(self._lock_namespace + b"\x00" + trade_key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


__all__ = ["ConnectionPoolLike", "PostgresLedger", "schema_sql"]
