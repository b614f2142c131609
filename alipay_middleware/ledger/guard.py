"""The ``tx`` a transactional hook receives: the ledger's connection, minus the power to end its transaction.

A transactional hook (``@alipay.on_paid(transactional=True)``) runs inside the transaction that also marks
its event done, so its writes and the done mark commit together or not at all. If the hook could commit
on its own, its writes would land without the done mark and the next resend would run it again; if it
could roll back or close, the done mark would land without its writes. So the guard passes every call
through to the real connection (a ``sqlite3.Connection`` or a psycopg ``Connection``) except those:

- ``commit()``, ``rollback()``, ``close()``, ``executescript()`` (which commits first), autocommit and
  isolation-level changes, two-phase commit calls: :class:`~alipay_middleware.errors.TransactionControlRefused`;
- SQL that starts or ends a transaction (``BEGIN``, ``START TRANSACTION``, ``COMMIT``, ``END``,
  ``ROLLBACK`` without ``TO``, ``ABORT``, ``PREPARE TRANSACTION``), in any statement of a multi-statement
  string: the same error, before anything is sent.

Savepoints stay available (``SAVEPOINT``, ``RELEASE``, ``ROLLBACK TO``, psycopg's nested
``conn.transaction()``), so a hook can undo part of its own work. Cursors made from the guard are guarded
too, and their ``connection`` is the guard. This protects against mistakes, not against code that digs the
raw connection out on purpose. The guard stops working once the hook returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import TransactionControlRefused

_REFUSED_METHODS = frozenset({
    "commit", "rollback", "close", "executescript", "set_autocommit", "set_isolation_level",
    "set_read_only", "set_deferrable", "tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "cancel",
    "cancel_safe", "backup", "deserialize",
})
_REFUSED_ATTRIBUTES = frozenset({"autocommit", "isolation_level", "read_only", "deferrable"})

# Tokens that matter for finding where statements start: quoted text and comments are skipped whole.
_TOKEN = re.compile(
    r"""
      (?P<skip> '(?:[^']|'')*'?             # 'string' ('' inside)
              | [eE]'(?:[^'\\]|\\.|'')*'?   # E'string' (backslash escapes, PostgreSQL)
              | "(?:[^"]|"")*"?             # "identifier"
              | `[^`]*`? | \[[^\]]*\]?      # SQLite's other identifier quotes
              | --[^\n]*                    # line comment
              | /\*.*?(?:\*/|\Z)            # block comment (not nested: a nested one only ends early)
              | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(?:\$(?P=tag)\$|\Z)  # $tag$ dollar quoting $tag$
      )
    | (?P<semicolon> ; )
    | (?P<word> [A-Za-z_]+ )
    | (?P<other> . )
    """,
    re.VERBOSE | re.DOTALL,
)
_ENDS_OR_STARTS = frozenset({"BEGIN", "START", "COMMIT", "END", "ABORT"})


def _leading_words(sql: str) -> Iterator[list[str]]:
    """For each statement of ``sql``: its first three words, upper-cased (fewer if it has fewer)."""
    words: list[str] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "semicolon":
            yield words
            words = []
        elif kind == "word" and len(words) < 3:
            words.append(match.group().upper())
        elif kind == "other" and not match.group().isspace() and len(words) < 3:
            words.append(match.group())
    yield words


def transaction_control(sql: str) -> str | None:
    """The first statement of ``sql`` that would start or end a transaction, or None."""
    for words in _leading_words(sql):
        if not words:
            continue
        first = words[0]
        rest = words[1:]
        if first in _ENDS_OR_STARTS:
            return " ".join(words)
        if first == "ROLLBACK":
            # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name keeps the transaction; a plain ROLLBACK ends it.
            if rest[:1] in (["WORK"], ["TRANSACTION"]):
                rest = rest[1:]
            if rest[:1] != ["TO"]:
                return " ".join(words)
        if first == "PREPARE" and rest[:1] == ["TRANSACTION"]:
            return " ".join(words)
    return None


def _text(query: Any, connection: Any) -> str | None:
    if isinstance(query, str):
        return query
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", errors="replace")
    as_string = getattr(query, "as_string", None)  # psycopg.sql.Composable
    if callable(as_string):
        text: str = as_string(connection)
        return text
    return None


class _Guarded:
    """What the connection guard and the cursor guard share: pass through, refuse what ends the transaction."""

    __slots__ = ("_target", "_guard")

    _target: Any
    _guard: TransactionGuard

    def _check(self, query: Any) -> None:
        self._guard._check_live()
        text = _text(query, self._guard._connection)
        if text is None:
            return
        statement = transaction_control(text)
        if statement is not None:
            raise TransactionControlRefused(
                f"a transactional hook may not run {statement!r}: the ledger commits the hook's writes together "
                "with the event's done mark (use SAVEPOINT / ROLLBACK TO for partial undo, or raise to roll back)"
            )

    def __getattr__(self, name: str) -> Any:
        if name in _REFUSED_METHODS:
            raise TransactionControlRefused(
                f"a transactional hook may not call {name}(): the ledger commits (or rolls back) the hook's "
                "transaction together with the event's done mark; raise an exception to roll it back"
            )
        self._guard._check_live()
        return getattr(self._target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _Guarded.__slots__ or name in type(self).__slots__:
            object.__setattr__(self, name, value)
            return
        if name in _REFUSED_ATTRIBUTES:
            raise TransactionControlRefused(f"a transactional hook may not change {name} of the ledger's connection")
        setattr(self._target, name, value)

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(query)
        result = self._target.execute(query, *args, **kwargs)
        return self._guard._wrap_cursor(result)

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(query)
        result = self._target.executemany(query, *args, **kwargs)
        return self._guard._wrap_cursor(result)


class GuardedCursor(_Guarded):
    """A cursor of the guarded connection; ``connection`` is the guard, not the real connection."""

    __slots__ = ()

    def __init__(self, cursor: Any, guard: TransactionGuard) -> None:
        object.__setattr__(self, "_target", cursor)
        object.__setattr__(self, "_guard", guard)

    @property
    def connection(self) -> TransactionGuard:
        return self._guard

    def close(self) -> None:  # closing a cursor ends nothing
        self._target.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._target)

    def __enter__(self) -> GuardedCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._target.close()

    def __repr__(self) -> str:
        return f"<GuardedCursor {self._target!r}>"


class TransactionGuard(_Guarded):
    """The ``tx`` of a transactional hook: see the module docstring."""

    __slots__ = ("_connection", "_live")

    def __init__(self, connection: Any) -> None:
        object.__setattr__(self, "_target", connection)
        object.__setattr__(self, "_guard", self)
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_live", True)

    def _check_live(self) -> None:
        if not self._live:
            raise TransactionControlRefused("this transaction is over: tx is only usable while the hook runs")

    def _end(self) -> None:
        object.__setattr__(self, "_live", False)

    def _wrap_cursor(self, result: Any) -> Any:
        # sqlite3's and psycopg's Connection.execute return a cursor; anything else is passed on as is.
        if result is self._connection:  # pragma: no cover - no driver returns the connection
            return self
        if hasattr(result, "fetchone") and hasattr(result, "connection"):
            return GuardedCursor(result, self)
        return result

    def cursor(self, *args: Any, **kwargs: Any) -> GuardedCursor:
        self._check_live()
        return GuardedCursor(self._connection.cursor(*args, **kwargs), self)

    def __enter__(self) -> TransactionGuard:
        # sqlite3's ``with conn:`` commits on exit and psycopg's closes: neither is the hook's to do.
        raise TransactionControlRefused("a transactional hook may not use tx as a context manager (it would "
                                        "commit or close the ledger's transaction); call tx.execute(...)")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ refuses
        return None

    def __repr__(self) -> str:
        return f"<TransactionGuard {type(self._connection).__module__}.{type(self._connection).__name__}>"
