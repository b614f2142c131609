"""The row mapping both built-in ledgers share: an event as a new row, a row as a :class:`StoredEvent`, and back.

:data:`COLUMNS` is the order of every statement's column list (``sql/*.sql``). Only the time columns differ
between the backends, so they are the parameters: SQLite keeps epoch seconds (``REAL``, :data:`EPOCH`),
PostgreSQL ``TIMESTAMPTZ`` (:data:`TIMESTAMPTZ`). Either way a time comes back as an aware UTC datetime.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..events import PaymentEvent
from .base import StoredEvent, check_aware

#: Every column but ``id``, in the order of the statements' column lists and of the tuples below; the
#: first eleven are those of :func:`event_row`.
COLUMNS = (
    "dedupe_key", "trade_key", "kind", "status", "out_trade_no", "trade_no", "trade_status", "notify_id",
    "charset", "raw_body", "fields", "reason", "error", "attempts", "received_at", "updated_at",
    "lease_owner", "lease_until",
)


def event_row(event: PaymentEvent, raw_body: bytes, charset: str, status: str) -> tuple[Any, ...]:
    """What a ledger stores of a new event: the values of the first eleven :data:`COLUMNS`."""
    return (
        event.key, event.trade_key, event.kind, status, event.out_trade_no, event.trade_no,
        event.trade_status, event.notify_id, charset, raw_body,
        json.dumps(event.raw, ensure_ascii=False, sort_keys=True),
    )


@dataclass(frozen=True)
class RowMapping:
    """A stored event as a backend's row and back: ``to_column`` turns an aware datetime into what the
    backend's time columns hold, ``from_column`` turns that back into an aware datetime in UTC."""

    to_column: Callable[[datetime], Any]
    from_column: Callable[[Any], datetime]

    def values(self, e: StoredEvent) -> tuple[Any, ...]:
        """``e`` as the values of :data:`COLUMNS` (its times must be aware)."""
        to_column = self.to_column
        return (
            e.key, e.trade_key, e.kind, e.status, e.out_trade_no, e.trade_no, e.trade_status, e.notify_id, e.charset,
            e.raw_body, json.dumps(e.fields, ensure_ascii=False, sort_keys=True), e.reason, e.error, e.attempts,
            to_column(check_aware(e.received_at)), to_column(check_aware(e.updated_at)), e.lease_owner,
            to_column(check_aware(e.lease_until)) if e.lease_until is not None else None,
        )

    def stored(self, row: Sequence[Any]) -> StoredEvent:
        """A row of :data:`COLUMNS` (``fields`` as JSON text) as a :class:`StoredEvent`."""
        from_column = self.from_column
        return StoredEvent(
            key=row[0], trade_key=row[1], kind=row[2], status=row[3], out_trade_no=row[4], trade_no=row[5],
            trade_status=row[6], notify_id=row[7], charset=row[8],
            raw_body=bytes(row[9]) if row[9] is not None else None, fields=json.loads(row[10]),
            reason=row[11], error=row[12], attempts=row[13], received_at=from_column(row[14]),
            updated_at=from_column(row[15]), lease_owner=row[16],
            lease_until=from_column(row[17]) if row[17] is not None else None,
        )


def _from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _to_epoch(moment: datetime) -> float:
    return moment.timestamp()


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def _as_is(moment: datetime) -> datetime:
    return moment


#: SQLite: times as epoch seconds.
EPOCH = RowMapping(to_column=_to_epoch, from_column=_from_epoch)
#: PostgreSQL: times as ``TIMESTAMPTZ``, which psycopg reads in the session's time zone.
TIMESTAMPTZ = RowMapping(to_column=_as_is, from_column=_to_utc)
