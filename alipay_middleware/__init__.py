"""Verified Alipay callbacks and signed pay URLs for any WSGI or ASGI app.

    from alipay_middleware import Alipay, OpenApiConfig
    alipay = Alipay(OpenApiConfig(app_id=..., app_private_key=..., alipay_public_key=...))

    @alipay.on_paid
    def paid(event): ...

    flask_app.wsgi_app = alipay.wsgi(flask_app.wsgi_app)     # or: asgi_app = alipay.asgi(app)

See the README for the hook contract, the answers the notify path gives and the checks it performs, and
"Public import paths" for what to import from where.

The map, top layer first. A module imports from its own folder (without cycles) and from the layers below
it, never from above (tests/test_architecture.py enforces this and prints the layers with their modules):

    cli/             the operator's command line (``alipay-middleware``)
    __main__.py      ``python -m alipay_middleware``: the same command line
    simulator/       a local Alipay gateway simulator, a test double (``python -m alipay_middleware.simulator``)
    alipay.py        ``Alipay``, the composition root: the only module that knows every layer below
    fronts/          WSGI and ASGI middleware and the driver of the flows: the only place werkzeug and asgiref are
                     imported
    callbacks/       the sans-I/O callback core: the notify, return, confirm and replay flows and their answers
    gateway/         talking to Alipay: one transport for every outbound call, the clients and their results
    protocols/       protocol knowledge: the Open Platform, the legacy service, certificates, the shared
                     validators and the pay helper
    ledger/          where verified events are recorded before their hooks run: the interface, SQLite,
                     PostgreSQL, the retrier of done marks
    wire/            bytes and crypto: form and charset decoding, amounts and times, signing, keys, the
                     gateway response scanner
    errors.py        the foundation: the error types, each rejection with its reason and status
    events.py        the foundation: what hooks and pages receive

This module itself is light: each public name below is imported from the module that defines it on first
use, so ``import alipay_middleware`` (or of any one module, such as ``alipay_middleware.wire.form``) loads
only what that needs; werkzeug and asgiref, for instance, arrive with the fronts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ below imports the same names on first use
    from .alipay import Alipay
    from .errors import (
        AlipayApiError,
        AlipayError,
        GatewayUnavailable,
        LedgerUnavailable,
        OutcomeUnknown,
        Rejection,
        ResponseError,
        ResponseMismatch,
        UnsupportedCall,
        UntrustedHost,
    )
    from .events import PaymentEvent, ReturnResult
    from .fronts.asgi import AlipayASGIMiddleware
    from .fronts.wsgi import AlipayWSGIMiddleware
    from .gateway.aio import AsyncAlipayClient
    from .gateway.client import AlipayClient
    from .gateway.legacy_client import LegacyClient
    from .gateway.results import CloseResult, RefundQuery, RefundResult, TradeQuery
    from .ledger import Ledger, SQLiteLedger, StoredEvent
    from .protocols.legacy import LEGACY_GATEWAY, LegacyConfig
    from .protocols.openapi import PRODUCTION_GATEWAY, SANDBOX_GATEWAY, OpenApiConfig
    from .wire.form import format_amount
    from .wire.signing import sign_string

__version__ = "0.1.0"

#: Each public name and the module (relative to this package) that defines it.
_EXPORTS = {
    "Alipay": ".alipay",
    "AlipayApiError": ".errors",
    "AlipayError": ".errors",
    "GatewayUnavailable": ".errors",
    "LedgerUnavailable": ".errors",
    "OutcomeUnknown": ".errors",
    "Rejection": ".errors",
    "ResponseError": ".errors",
    "ResponseMismatch": ".errors",
    "UnsupportedCall": ".errors",
    "UntrustedHost": ".errors",
    "PaymentEvent": ".events",
    "ReturnResult": ".events",
    "AlipayASGIMiddleware": ".fronts.asgi",
    "AlipayWSGIMiddleware": ".fronts.wsgi",
    "AsyncAlipayClient": ".gateway.aio",
    "AlipayClient": ".gateway.client",
    "CloseResult": ".gateway.results",
    "RefundQuery": ".gateway.results",
    "RefundResult": ".gateway.results",
    "TradeQuery": ".gateway.results",
    "LegacyClient": ".gateway.legacy_client",
    "Ledger": ".ledger",
    "SQLiteLedger": ".ledger",
    "StoredEvent": ".ledger",
    "LEGACY_GATEWAY": ".protocols.legacy",
    "LegacyConfig": ".protocols.legacy",
    "PRODUCTION_GATEWAY": ".protocols.openapi",
    "SANDBOX_GATEWAY": ".protocols.openapi",
    "OpenApiConfig": ".protocols.openapi",
    "format_amount": ".wire.form",
    "sign_string": ".wire.signing",
}

__all__ = [
    "Alipay",
    "AlipayApiError",
    "AlipayASGIMiddleware",
    "AlipayClient",
    "AlipayError",
    "AlipayWSGIMiddleware",
    "AsyncAlipayClient",
    "CloseResult",
    "format_amount",
    "GatewayUnavailable",
    "Ledger",
    "LedgerUnavailable",
    "LEGACY_GATEWAY",
    "LegacyClient",
    "LegacyConfig",
    "OpenApiConfig",
    "OutcomeUnknown",
    "PaymentEvent",
    "PRODUCTION_GATEWAY",
    "RefundQuery",
    "RefundResult",
    "Rejection",
    "ResponseError",
    "ResponseMismatch",
    "ReturnResult",
    "SANDBOX_GATEWAY",
    "sign_string",
    "SQLiteLedger",
    "StoredEvent",
    "TradeQuery",
    "UnsupportedCall",
    "UntrustedHost",
]


if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise accept any name as this one's result

    def __getattr__(name: str) -> Any:
        """A public name, imported from its module on first use (PEP 562) and kept here for the next."""
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
