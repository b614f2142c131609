"""The origin checks Alipay confirmed, remembered per process for the life of their ``notify_id``."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class VerifiedIds:
    """Origin checks Alipay confirmed, remembered for the life of their ``notify_id`` (per process).

    Keyed by the message's ``notify_id`` *and* its signature: only a replay of the very message Alipay
    vouched for is answered from memory, never another message carrying the same id. Every entry has the
    same life, so the oldest is the first to expire: each call is O(1) (amortised), thread-safe, and at
    most ``capacity`` entries are kept (the oldest go first; forgetting one only costs a call to Alipay).
    """

    #: A return's ``notify_id`` lives about a minute at Alipay: remembered no longer, so a replay after
    #: that is asked again, and Alipay refuses it as it always did.
    RETURN_LIFE = 60.0
    #: Alipay answers ``true`` for a notification's id until it reads ``success``; a notification answered
    #: ``success`` is done in the ledger, which answers its resends before this memory is asked. An hour
    #: covers the resends of a notification whose hook failed (about 4, 10, 10 and 60 minutes apart).
    NOTIFY_LIFE = 3600.0
    CAPACITY = 4096

    def __init__(self, life: float, capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic) -> None:
        self.life = life
        self.capacity = capacity
        self.clock = clock
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def recall(self, key: tuple[str, str]) -> bool:
        now = self.clock()
        with self._lock:
            self._forget_expired(now)
            return key in self._expiry

    def remember(self, key: tuple[str, str]) -> None:
        now = self.clock()
        with self._lock:
            self._expiry[key] = now + self.life
            self._expiry.move_to_end(key)
            self._forget_expired(now)
            while len(self._expiry) > self.capacity:
                self._expiry.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and next(iter(expiry.values())) <= now:
            expiry.popitem(last=False)
