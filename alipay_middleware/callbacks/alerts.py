"""Rate-limited WARNINGs for rejections that usually mean a misconfiguration, not an attack.

A wrong Alipay public key (the sandbox's in production or the reverse, the app's own public key, another
app's key) or the wrong ``sign_type`` makes *every* notification fail its signature check: without a
WARNING the only trace is a 400 Alipay keeps retrying. Anyone can also post junk to the notify path, so
the WARNING is rate-limited per process and reason: at most one per ``interval`` (a minute), which
says how many rejections for that reason were logged at INFO only since the last one. A flood cannot
fill a disk with WARNINGs; each rejection still gets its one INFO line (usually not enabled in
production).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: What each alerted reason most likely means when it is not junk, and what to change.
LIKELY_CAUSES = {
    "bad_signature": (
        "the signature does not verify with the configured key. If every notification fails, check "
        "alipay_public_key (legacy MD5: key): it must be *Alipay's* public key for this app, from the same "
        "environment (the sandbox key in production, or the production key against the sandbox, fails), "
        "not your app's own public key nor another app's; and sign_type must be the one the app uses "
        "(RSA2 or RSA). A few of these among good ones are junk someone posted"
    ),
    "sign_type_mismatch": (
        "the message is signed with another sign_type than the configured one: set sign_type to the one "
        "your app uses in the console (RSA2 recommended); a downgrade is never accepted"
    ),
}


class RateLimitedWarnings:
    """Per reason: one admitted WARNING per ``interval`` seconds of ``clock``; the others are counted."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, reason: str) -> int | None:
        """None when this one is suppressed (and counted); else how many were suppressed before it."""
        with self._lock:
            now = self.clock()
            last = self._last.get(reason)
            if last is not None and now - last < self.interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return None
            self._last[reason] = now
            return self._suppressed.pop(reason, 0)


#: The process's limiter for notification rejections (tests replace it, or its clock).
REJECTIONS = RateLimitedWarnings()
