"""The few error types the package raises.

A :class:`Rejection` is what the callback core produces for anything it will not accept: it carries a
stable machine-readable ``reason`` (it appears in log lines as ``reason=...``) and the HTTP status the
fronts answer with. The fronts never decide semantics themselves; they only turn a rejection into bytes.
"""

from __future__ import annotations


class AlipayError(Exception):
    """Base class of every error raised by alipay_middleware."""


class Rejection(AlipayError):
    """A callback that is not accepted. Never escapes the callback paths as a traceback."""

    def __init__(self, reason: str, status: int = 400, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.status = status
        self.detail = detail


class LedgerUnavailable(AlipayError):
    """The ledger could not be read or written (locked too long, disk error, server down).

    The notify path answers 503 so that Alipay resends later; nothing is acknowledged.
    """


class GatewayUnavailable(AlipayError):
    """Alipay's gateway could not be asked (network error, timeout, an HTTP error status).

    On the notify path this answers 503 so that Alipay resends; nothing is acknowledged.
    """


class ResponseError(AlipayError):
    """A synchronous gateway response that cannot be read or trusted (see :mod:`.response`).

    ``reason`` is stable and machine-readable (``malformed_response``, ``duplicate_key``,
    ``missing_response``, ``ambiguous_response``, ``missing_sign``, ``bad_signature``,
    ``cert_sn_mismatch``, ``bad_encoding``); ``detail`` is for people and never quotes the body.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
