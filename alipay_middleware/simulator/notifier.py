"""Delivery of asynchronous notifications, with Alipay's resend schedule, from one background thread.

Alipay POSTs a notification to ``notify_url`` and wants the exact body ``success``; anything else (another
body, an error status, no answer) and it sends the same message again (same ``notify_id``) about 4m, 10m,
10m, 1h, 2h, 6h and 15h later: 8 deliveries in about 25 hours. ``time_scale`` multiplies that schedule
(0.0005 turns 25 hours into 45 seconds). Attempts run in a small thread pool so that a slow shop never
holds up other notifications; :meth:`Notifier.close` waits for the attempts in flight (each bounded by a
timeout) and drops the resends still scheduled: with a journal (the state file) they stay written there,
and :meth:`Notifier.resume` picks them up at the next start.

The log of deliveries keeps the last ``keep_deliveries`` attempts (:meth:`Notifier.delivered` counts them all).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..wire.form import CST
from .model import Delivery, Faults

log = logging.getLogger("alipay_middleware.simulator")

#: Delay before each delivery, in seconds: the first at once, then Alipay's resend intervals.
SCHEDULE = (0.0, 4 * 60.0, 10 * 60.0, 10 * 60.0, 3600.0, 2 * 3600.0, 6 * 3600.0, 15 * 3600.0)
_ANSWER_LIMIT = 200
#: How many delivery attempts the log keeps by default (the oldest beyond are dropped).
KEEP_DELIVERIES = 1000


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class Notification:
    notify_id: str
    url: str
    body: bytes
    charset: str
    fields: dict[str, str]
    out_trade_no: str
    trade_key: str  # merchant id and out_trade_no: what out-of-order delivery is about
    copy: str = ""
    attempts: int = 0
    done: bool = False
    #: Held back (out-of-order fault) until a later notification of the same trade has gone first.
    then: list[Notification] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return {"notify_id": self.notify_id, "url": self.url, "body": self.body.decode("latin-1"),
                "charset": self.charset, "fields": self.fields, "out_trade_no": self.out_trade_no,
                "trade_key": self.trade_key, "copy": self.copy, "attempts": self.attempts}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Notification:
        return cls(record["notify_id"], record["url"], record["body"].encode("latin-1"), record["charset"],
                   dict(record["fields"]), record["out_trade_no"], record["trade_key"], record["copy"],
                   int(record["attempts"]))


class Journal(Protocol):
    """Where the notifications still to be sent are kept across restarts (the store, with a state file)."""

    def save_pending(self, notify_id: str, due: float, record: dict[str, Any]) -> None: ...

    def drop_pending(self, notify_id: str) -> None: ...

    def load_pending(self) -> list[tuple[float, dict[str, Any]]]: ...


class Notifier:
    def __init__(self, faults: Faults, *, time_scale: float, allow_remote: bool,
                 on_acknowledged: Callable[[Notification], None], timeout: float = 5.0,
                 journal: Journal | None = None, keep_deliveries: int = KEEP_DELIVERIES) -> None:
        if isinstance(keep_deliveries, bool) or not isinstance(keep_deliveries, int) or keep_deliveries < 1:
            raise ValueError(f"keep_deliveries must be a positive whole number, got {keep_deliveries!r}")
        self.faults = faults
        self.time_scale = time_scale
        self.allow_remote = allow_remote
        self.timeout = timeout
        self._on_acknowledged = on_acknowledged
        self._journal = journal
        self._deliveries: deque[Delivery] = deque(maxlen=keep_deliveries)
        self._delivered = 0
        self._queue: list[tuple[float, int, Notification]] = []
        self._held: dict[str, tuple[float, Notification]] = {}
        self._pending: set[Notification] = set()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sim-notify")
        # Direct connections only: an http_proxy from the environment must not see loopback callbacks.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._thread = threading.Thread(target=self._run, name="sim-notifier", daemon=True)
        self._thread.start()

    # -- queueing ------------------------------------------------------------------------------------

    def submit(self, note: Notification, *, delay: float = 0.0) -> None:
        """Deliver ``note`` (now, or after ``delay`` real seconds), then resend until acknowledged."""
        hold = self.faults.out_of_order and not note.copy
        with self._cond:
            if self._closed:
                return
        self._write(note, (SCHEDULE[1] * self.time_scale) if hold else delay)
        with self._cond:
            if self._closed:
                return
            self._pending.add(note)
            now = time.monotonic()
            if hold:
                held = self._held.pop(note.trade_key, None)
                if held is None:
                    # Hold the first one back; it goes after the next notification of this trade, or
                    # after the first resend interval if none comes.
                    self._held[note.trade_key] = (now + SCHEDULE[1] * self.time_scale, note)
                    self._cond.notify_all()
                    return
                note.then.append(held[1])
            heapq.heappush(self._queue, (now + delay, next(self._seq), note))
            self._cond.notify_all()

    def resume(self) -> int:
        """Schedule the notifications the journal kept from an earlier run, each at its due time (or now,
        when that has passed). Returns how many."""
        if self._journal is None:
            return 0
        records = self._journal.load_pending()
        with self._cond:
            if self._closed:
                return 0
            now, wall = time.monotonic(), time.time()
            for due, record in records:
                note = Notification.from_record(record)
                self._pending.add(note)
                heapq.heappush(self._queue, (now + max(due - wall, 0.0), next(self._seq), note))
            self._cond.notify_all()
        return len(records)

    def _write(self, note: Notification, delay: float) -> None:
        """Journal ``note`` as due in ``delay`` seconds, before it can be attempted (so writes stay in order)."""
        if self._journal is not None:
            self._journal.save_pending(note.notify_id, time.time() + delay, note.to_record())

    def deliver_now(self, note: Notification) -> bool:
        """The first delivery in the caller's thread (notify before return); resends go on in the background."""
        with self._cond:
            if self._closed:
                return False
        self._write(note, 0.0)
        with self._cond:
            self._pending.add(note)
        self._attempt(note)
        return note.done

    # -- observing -----------------------------------------------------------------------------------

    def deliveries(self) -> list[Delivery]:
        """The last ``keep_deliveries`` attempts, oldest first."""
        with self._cond:
            return list(self._deliveries)

    def newest_deliveries(self, skip: int, limit: int) -> tuple[list[Delivery], int]:
        """``limit`` attempts, newest first, after the ``skip`` newest; and how many the log keeps."""
        with self._cond:
            return list(itertools.islice(reversed(self._deliveries), skip, skip + limit)), len(self._deliveries)

    def delivered(self) -> int:
        """How many attempts were made, those dropped from the log included."""
        with self._cond:
            return self._delivered

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._held.clear()
            self._cond.notify_all()
        self._thread.join()
        self._pool.shutdown(wait=True)
        with self._cond:
            self._pending.clear()
            self._cond.notify_all()

    # -- the background thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    for key, (release, note) in list(self._held.items()):
                        if release <= now:
                            del self._held[key]
                            heapq.heappush(self._queue, (now, next(self._seq), note))
                    if self._queue and self._queue[0][0] <= now:
                        break
                    wakeups = [q[0] for q in self._queue[:1]] + [h[0] for h in self._held.values()]
                    self._cond.wait(min(wakeups) - now if wakeups else None)
                if self._closed:
                    return
                note = heapq.heappop(self._queue)[2]
            try:
                self._pool.submit(self._attempt, note)
            except RuntimeError:  # the pool is shutting down
                return

    def _attempt(self, note: Notification) -> None:
        note.attempts += 1
        copies = 2 if self.faults.duplicate_notify and not note.copy else 1
        if copies == 1:
            acknowledged = self._post(note, note.copy)
        else:  # the same delivery twice at once, as Alipay's retries sometimes overlap
            # A thread of its own, not the pool: eight attempts waiting for queued twins would deadlock it.
            results: list[bool] = []
            twin = threading.Thread(target=lambda: results.append(self._post(note, "duplicate")), daemon=True)
            twin.start()
            acknowledged = self._post(note, note.copy)
            twin.join()
            acknowledged = acknowledged or any(results)
        finished = acknowledged or note.attempts >= len(SCHEDULE)
        with self._cond:
            followers, note.then = note.then, []
            now = time.monotonic()
            for follower in followers:  # the earlier notification, now that the later one went first
                heapq.heappush(self._queue, (now, next(self._seq), follower))
            self._cond.notify_all()
        # The journal first, then the queue: the next attempt cannot overtake this one's write.
        delay = 0.0 if finished else SCHEDULE[note.attempts] * self.time_scale
        if self._journal is not None:
            if finished:
                self._journal.drop_pending(note.notify_id)
            else:  # kept even when closing: the next start resumes it
                self._write(note, delay)
        with self._cond:
            if finished or self._closed:
                note.done = True
                self._pending.discard(note)
            else:
                heapq.heappush(self._queue, (time.monotonic() + delay, next(self._seq), note))
            self._cond.notify_all()
        if acknowledged:
            self._on_acknowledged(note)

    def _post(self, note: Notification, copy: str) -> bool:
        status: int | None = None
        if not self.allow_remote and not is_loopback_url(note.url):
            answer = "not sent: notify_url is not a loopback URL (allow_remote_callbacks=False)"
        else:
            request = urllib.request.Request(note.url, data=note.body, method="POST", headers={
                "Content-Type": f"application/x-www-form-urlencoded; charset={note.charset}",
                "User-Agent": "Mozilla/4.0 (alipay-middleware simulator)",
            })
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    status = response.status
                    raw = response.read(_ANSWER_LIMIT)
            except urllib.error.HTTPError as exc:
                with exc:
                    status, raw = exc.code, exc.read(_ANSWER_LIMIT)
            except (OSError, ValueError) as exc:  # refused, reset, timed out: resent like any failure
                raw = f"{type(exc).__name__}: {exc}".encode()
            answer = raw.decode("utf-8", "replace")
        delivery = Delivery(note.notify_id, note.url, dict(note.fields), note.charset, note.attempts, status,
                            answer, datetime.now(CST), note.out_trade_no, copy)
        with self._cond:
            self._deliveries.append(delivery)
            self._delivered += 1
        log.info("simulator notify out_trade_no=%s attempt=%d status=%s acknowledged=%s", note.out_trade_no,
                 note.attempts, status, delivery.acknowledged)
        return delivery.acknowledged
