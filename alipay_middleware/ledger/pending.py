"""Landing the done mark of a hook that succeeded, whatever the ledger is doing at that moment.

Once a plain hook has returned, its event must never be run again: marking it done is the only thing
left, and it must not be given up. :meth:`PendingFinishes.finish` retries the ledger's ``finish`` for a
few seconds (each try on a fresh connection: the ledgers drop a broken one). If it still cannot land, the
event stays ``received`` under this worker's lease (copies are answered 503 ``in_progress`` meanwhile), the
notify path answers 503 ``finish_pending``, and a background thread of this process keeps trying until it
lands; ``Alipay.close()`` and interpreter exit try once more. What is left uncovered: a process that dies
before its finish lands, and a ledger outage longer than ``lease_seconds`` (a copy then retakes the
expired lease and runs the hook again). Transactional hooks need none of this: their done mark commits
with their writes.

The thread is started on first use, in the process that needs it: a worker forked after the ``Alipay``
was built starts its own (threads do not survive a fork), and forgets what its parent had pending (the
parent keeps retrying its own).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from ..errors import LedgerUnavailable

log = logging.getLogger("alipay_middleware")

#: Seconds between background rounds: doubling from the first value up to the second.
BACKGROUND_BACKOFF = (0.5, 30.0)


class PendingFinishes:
    """``finish(key, note)`` with a bounded retry, then a per-process background retrier."""

    def __init__(self, finish: Callable[[str, str | None], None], retry_seconds: float = 3.0) -> None:
        self._finish = finish
        self.retry_seconds = retry_seconds
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[str, tuple[str | None, float]] = {}  # key -> (note, since)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._at_exit = False

    def pending(self) -> list[str]:
        """The keys whose done mark has not landed yet, in this process."""
        self._forked()
        with self._lock:
            return list(self._pending)

    def finish(self, key: str, note: str | None = None) -> bool:
        """Mark ``key`` done; True once it landed. False: it could not land within ``retry_seconds`` and is
        now retried in the background (the caller answers 503 ``finish_pending``)."""
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.05
        while True:
            try:
                self._finish(key, note)
                return True
            except LedgerUnavailable as exc:
                error = exc
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)
        log.error("alipay finish pending reason=finish_pending key=%s error=%s: the hook succeeded but its done "
                  "mark could not be written; retrying in the background (copies get 503 until it lands)",
                  key, error)
        self._add(key, note)
        return False

    def flush(self) -> int:
        """Try every pending done mark once now; how many are still pending."""
        self._forked()
        with self._lock:
            items = list(self._pending.items())
        for key, (note, since) in items:
            try:
                self._finish(key, note)
            except LedgerUnavailable:
                continue
            with self._lock:
                self._pending.pop(key, None)
            log.warning("alipay finish landed key=%s after %.1f s pending", key, time.monotonic() - since)
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """One last try for everything pending (``Alipay.close()``), then stop the thread."""
        left = self.flush()
        with self._lock:
            keys = list(self._pending)
            self._stopped = True
        self._wake.set()
        if left:
            log.error("alipay finish still pending at close keys=%s: their hooks succeeded but are not marked "
                      "done; a copy arriving after the lease (lease_seconds) runs them again", ",".join(keys))

    # -- the background thread -----------------------------------------------------------------------

    def _forked(self) -> None:
        if self._pid != os.getpid():  # a forked worker: the parent's thread and lock stayed behind
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._wake = threading.Event()
            self._pending = {}
            self._thread = None
            self._at_exit = False

    def _add(self, key: str, note: str | None) -> None:
        self._forked()
        with self._lock:
            self._pending.setdefault(key, (note, time.monotonic()))
            self._stopped = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="alipay-finish", daemon=True)
                self._thread.start()
            if not self._at_exit:
                self._at_exit = True
                atexit.register(_flush_at_exit, weakref.ref(self))

    def _run(self) -> None:
        pause = BACKGROUND_BACKOFF[0]
        while True:
            self._wake.wait(pause)
            self._wake.clear()
            with self._lock:
                if self._stopped or not self._pending:
                    self._thread = None
                    return
            if self.flush():
                pause = min(pause * 2, BACKGROUND_BACKOFF[1])
            else:
                pause = BACKGROUND_BACKOFF[0]


def _flush_at_exit(ref: weakref.ReferenceType[PendingFinishes]) -> None:
    pending = ref()
    if pending is not None and pending._pid == os.getpid():
        pending.close()
