"""The ledger interface: the durable record that makes "once" true.

Every verified event is written here before its hook runs and marked done only after the hook returned.
An event being processed carries a lease (owner and expiry); copies arriving meanwhile are told to come
back later, and a lease past its expiry is taken to be abandoned (a crashed worker) and retaken.

Statuses: ``received`` (claimed, hook running or abandoned), ``done`` (final: hook succeeded, or nothing
to call), ``failed`` (hook or order check raised; the next copy retries), ``rejected`` (not accepted:
another app/seller, unknown order, wrong amount; a resend of an own-order event is checked again).

All methods are blocking; the ASGI front calls them from a worker thread. Implementations raise
:class:`~alipay_middleware.errors.LedgerUnavailable` when the store cannot be used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from ..events import PaymentEvent

RECEIVED = "received"
DONE = "done"
FAILED = "failed"
REJECTED = "rejected"
STATUSES = (RECEIVED, DONE, FAILED, REJECTED)

CLAIMED = "claimed"
ALREADY_DONE = "done"
BUSY = "busy"


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Ledger.claim`."""

    state: str  # CLAIMED, ALREADY_DONE or BUSY
    attempt: int = 0  # for CLAIMED: 1 on the first call of the hook
    retry_after: float = 0.0  # for BUSY: seconds until the holder's lease runs out


@dataclass(frozen=True)
class StoredEvent:
    """One ledger row, for operators and tests."""

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

    def close(self) -> None:  # noqa: B027 - optional for ledgers that hold nothing
        """Release connections. The ledger must not be used afterwards."""
