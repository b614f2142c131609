"""What the notify path answers: status, stable reason code and body, and the checks made before reading a body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import RejectionReason

#: Every reason code the notify path answers with (and the operator's ``replay``): the refusals of
#: :data:`~alipay_middleware.errors.RejectionReason` and the callback core's own. The README's table
#: "What the notify path answers" is checked against this list.
Reason = Literal[
    RejectionReason,
    # before the body is read, and while it is
    "method_not_allowed", "bad_content_length", "body_too_large", "incomplete_body",
    # accepted: processed now, or before
    "ok", "already_done",
    # come back later (503): the event or its trade is leased, the ledger is down, the done mark is pending
    "in_progress", "lease_lost", "ledger_unavailable", "finish_pending", "commit_failed",
    # failed (500): recorded with the traceback, and retried on the next copy
    "order_amount_failed", "hook_failed", "ledger_failed", "internal_error",
]

_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


@dataclass(frozen=True)
class Answer:
    """What the notify path sends back. Only a 200 carries the 7 bytes ``success``."""

    status: int
    reason: Reason
    body: bytes = b"fail"
    headers: tuple[tuple[str, str], ...] = _TEXT


SUCCESS = Answer(200, "ok", b"success")
DUPLICATE = Answer(200, "already_done", b"success")  # the same bytes on the wire; replay tells them apart
TOO_LARGE = Answer(413, "body_too_large")
INTERNAL_ERROR = Answer(500, "internal_error")


def precheck(method: str, content_length: str | None, max_body: int) -> Answer | None:
    """The checks made before a single body byte is read."""
    if method != "POST":
        return Answer(405, "method_not_allowed", headers=_TEXT + (("Allow", "POST"),))
    if content_length:
        # Only ASCII digits, and few of them: str.isdigit() alone also passes "²" (a latin-1 header byte
        # decodes to it), which int() refuses, and int() refuses more than 4,300 digits. 18 digits are
        # far beyond any body and still a plain machine integer.
        if not (content_length.isascii() and content_length.isdigit()) or len(content_length) > 18:
            return Answer(400, "bad_content_length")
        if int(content_length) > max_body:
            return TOO_LARGE
    return None

