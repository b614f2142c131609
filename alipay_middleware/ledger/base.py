"""The ledger interface: the durable record that makes "once" true.

Every verified event is written here before its hook runs and marked done only after the hook returned.
An event being processed carries a lease (owner and expiry); copies arriving meanwhile are told to come
back later, and a lease past its expiry is taken to be abandoned (a crashed worker) and retaken.

Statuses: ``received`` (claimed, hook running or abandoned), ``done`` (final: hook succeeded, or nothing
to call), ``failed`` (hook or order check raised; the next copy retries), ``rejected`` (not accepted:
another app/seller, unknown order, wrong amount; a resend of an own-order event is checked again).

All methods are blocking; the ASGI front calls them from a worker thread. Implementations raise
:class:`~alipay_middleware.errors.LedgerUnavailable` when the store cannot be used.

The operator's tools (``python -m alipay_middleware``) also use :meth:`Ledger.prune`,
:meth:`Ledger.export` and :meth:`Ledger.import_events`. Both built-in ledgers implement them; a ledger of
your own that does not simply cannot be pruned or migrated (they raise ``NotImplementedError``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Any, Final, Literal

from ..events import PaymentEvent

RECEIVED = "received"
DONE = "done"
FAILED = "failed"
REJECTED = "rejected"
STATUSES = (RECEIVED, DONE, FAILED, REJECTED)

#: What :meth:`Ledger.prune` keeps of a done event's fields: what it was (ids, amounts, times), not
#: who paid (buyer ids and names, subject, body) nor the signature, which is gone with the raw body.
PRUNE_KEEP = (
    "app_id", "seller_id", "out_trade_no", "trade_no", "trade_status", "refund_status", "notify_id",
    "notify_type", "notify_time", "total_amount", "total_fee", "refund_fee", "out_biz_no", "gmt_create",
    "gmt_payment", "gmt_refund", "gmt_close",
)

#: How many done events :meth:`Ledger.prune` looks at per transaction, by default.
PRUNE_BATCH: Final = 500

#: What :meth:`Ledger.claim` found: the lease is the caller's now, the event is done, or it (or its trade) is leased.
ClaimState = Literal["claimed", "done", "busy"]
CLAIMED: Final = "claimed"
ALREADY_DONE: Final = "done"
BUSY: Final = "busy"

#: The dedupe key prefix of :meth:`Ledger.record_foreign`'s rows (and of their trade keys): never one of ours.
FOREIGN_PREFIX: Final = "foreign:"


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`."""

    state: ClaimState
    attempt: int = 0  # for CLAIMED: 1 on the first call of the hook
    retry_after: float = 0.0  # for BUSY: seconds until the holder's lease runs out


@dataclass(frozen=True)
class StoredEvent:
    """One ledger row, for operators and tests.

    ``raw_body`` is None once the event was pruned (:meth:`Ledger.prune`). ``lease_owner`` and
    ``lease_until`` are set while an event is ``received``: a live lease means a worker is running its
    hook now; one past ``lease_until`` was abandoned and the next claim retakes it.
    """

    key: str
    trade_key: str
    kind: str
    status: str
    out_trade_no: str
    trade_no: str
    trade_status: str
    notify_id: str
    charset: str
    raw_body: bytes | None
    fields: dict[str, str]
    reason: str | None
    error: str | None
    attempts: int
    received_at: datetime
    updated_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None


class Ledger(ABC):
    @abstractmethod
    def claim(self, event: PaymentEvent, raw_body: bytes, charset: str, owner: str, lease: float) -> Claim:
        """Record ``event`` (if new) and take its lease, unless it is done or its trade is busy.

        Busy means: this event, or another event of the same trade, holds a live lease.
        """

    @abstractmethod
    def finish(self, key: str, note: str | None = None) -> None:
        """Mark done (final). Idempotent."""

    @abstractmethod
    def fail(self, key: str, owner: str, error: str) -> None:
        """Record a failed attempt and release the lease, if ``owner`` still holds it."""

    @abstractmethod
    def reject(self, key: str, owner: str, reason: str) -> None:
        """Record that the event was not accepted and release the lease, if ``owner`` still holds it."""

    @abstractmethod
    def record_foreign(self, event: PaymentEvent, raw_body: bytes, charset: str, reason: str) -> None:
        """Keep a verified message addressed to someone else, without touching our dedupe keys."""

    @abstractmethod
    def is_done(self, key: str) -> bool: ...

    @abstractmethod
    def get(self, key: str) -> StoredEvent | None: ...

    @abstractmethod
    def events(self, status: str | None = None, out_trade_no: str | None = None,
               limit: int = 100) -> list[StoredEvent]:
        """Newest first, optionally filtered."""

    def iter_events(self, status: str | None = None, out_trade_no: str | None = None, *,
                    oldest_first: bool = False, page: int = 500, bodies: bool = True) -> Iterator[StoredEvent]:
        """Every event, optionally filtered, newest first (``oldest_first``: in the order they were
        recorded), read ``page`` rows per query, so that a large ledger is never held in memory at once.
        Rows recorded after the iteration started may or may not be seen. With ``bodies=False`` the raw
        body and the fields are not read (``raw_body`` is None and ``fields`` empty), for listings.

        Not abstract: this fallback reads everything with :meth:`events`, for ledgers of your own.
        """
        if page < 1:
            raise ValueError(f"page must be at least 1, got {page!r}")
        found = self.events(status=status, out_trade_no=out_trade_no, limit=-1)
        for stored in reversed(found) if oldest_first else found:
            yield stored if bodies else replace(stored, raw_body=None, fields={})

    # -- transactional hooks: not abstract, a ledger of your own simply does not offer them -----------

    def transactions_unsupported(self) -> str | None:
        """Why this ledger cannot run transactional hooks (None when it can). See :meth:`run_in_transaction`."""
        return f"{type(self).__name__} does not offer hook transactions"

    def run_in_transaction(self, key: str, owner: str, work: Callable[[Any], None], note: str | None = None) -> bool:
        """Run ``work(tx)`` and mark ``key`` done in one transaction on this ledger's own connection.

        The event's row must still be ``received`` under ``owner``'s lease; it is locked for the whole
        transaction (no retake while ``work`` runs), and the done mark is written only if it still is.
        ``tx`` is a :class:`~alipay_middleware.ledger.guard.TransactionGuard` around the connection.

        Returns True when ``work`` ran and everything committed; False when the lease was not ``owner``'s
        (nothing ran, nothing was written). Raises :class:`~alipay_middleware.errors.HookFailed` (rolled
        back) when ``work`` raised, and :class:`~alipay_middleware.errors.LedgerUnavailable` when the
        transaction could not be begun or committed (nothing of ``work`` landed, unless the connection broke
        during COMMIT itself: then the row tells, which is why a release is guarded by owner and status).
        """
        raise NotImplementedError(self.transactions_unsupported())

    # -- the operator's tools: not abstract, so that ledgers written before them keep working --------

    def prune(self, before: datetime, *, dry_run: bool = False, batch: int = PRUNE_BATCH,
              progress: Callable[[int], None] | None = None) -> int:
        """Drop the raw body and all fields but :data:`PRUNE_KEEP` of ``done`` events last updated before
        ``before`` (an aware datetime); their rows, keys and statuses stay, so dedupe holds forever.

        Returns how many events were pruned (with ``dry_run``: would be). Already pruned events do not
        count again. The built-in ledgers walk the done events in id order, ``batch`` of them per short
        transaction, from a cursor that only moves forward: a batch costs the same however large the ledger
        is or how much of it was pruned already. ``progress(pruned_so_far)`` is called after each batch
        that pruned something, outside any transaction.
        """
        raise _lacks(self, "prune", "prune")

    def export(self, batch: int = 500) -> Iterator[StoredEvent]:
        """Every row, oldest first, with all its columns (leases included), read ``batch`` rows per
        transaction: no long transaction is held on a live ledger."""
        raise _lacks(self, "export", "migrate")

    def import_events(self, events: Iterable[StoredEvent], batch: int = 500) -> tuple[int, int]:
        """Insert rows as they are (as given by :meth:`export`), ``batch`` rows per transaction; a row whose
        key is already here is skipped and left untouched. Returns ``(inserted, skipped)``."""
        raise _lacks(self, "import_events", "migrate")

    def close(self) -> None:  # noqa: B027 - optional for ledgers that hold nothing
        """Release connections. The ledger must not be used afterwards."""


def _lacks(ledger: Ledger, method: str, command: str) -> NotImplementedError:
    return NotImplementedError(f"{type(ledger).__name__} does not implement {method}(), which "
                               f"'alipay-middleware {command}' needs")


def check_aware(moment: datetime) -> datetime:
    """``moment`` if it carries a time zone; a naive datetime would be read in the server's zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {moment!r}")
    return moment


def chunks(items: Iterable[StoredEvent], size: int) -> Iterator[list[StoredEvent]]:
    """``items`` in lists of at most ``size`` (itertools.batched is Python 3.12+)."""
    if size < 1:
        raise ValueError(f"batch must be at least 1, got {size!r}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
