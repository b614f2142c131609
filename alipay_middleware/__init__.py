"""Verified Alipay callbacks and signed pay URLs for any WSGI or ASGI app.

    from alipay_middleware import Alipay, OpenApiConfig
    alipay = Alipay(OpenApiConfig(app_id=..., app_private_key=..., alipay_public_key=...))

    @alipay.on_paid
    def paid(event): ...

    flask_app.wsgi_app = alipay.wsgi(flask_app.wsgi_app)     # or: asgi_app = alipay.asgi(app)

See the README for the hook contract, the answers the notify path gives and the checks it performs.
"""

from typing import TYPE_CHECKING, Any

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
from .gateway.aio import AsyncAlipayClient
from .gateway.client import AlipayClient
from .gateway.legacy_client import LegacyClient
from .gateway.results import CloseResult, RefundQuery, RefundResult, TradeQuery
from .ledger import Ledger, SQLiteLedger, StoredEvent
from .protocols.legacy import LEGACY_GATEWAY, LegacyConfig
from .protocols.openapi import PRODUCTION_GATEWAY, SANDBOX_GATEWAY, OpenApiConfig

if TYPE_CHECKING:
    from .fronts.asgi import AlipayASGIMiddleware
    from .fronts.wsgi import AlipayWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "Alipay",
    "AlipayApiError",
    "AlipayASGIMiddleware",
    "AlipayClient",
    "AlipayError",
    "AlipayWSGIMiddleware",
    "AsyncAlipayClient",
    "CloseResult",
    "GatewayUnavailable",
    "LEGACY_GATEWAY",
    "Ledger",
    "LedgerUnavailable",
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
    "SQLiteLedger",
    "StoredEvent",
    "TradeQuery",
    "UnsupportedCall",
    "UntrustedHost",
]


def __getattr__(name: str) -> Any:
    # The fronts import werkzeug/asgiref; load them on first use so the core stays free of both.
    if name == "AlipayASGIMiddleware":
        from .fronts.asgi import AlipayASGIMiddleware

        return AlipayASGIMiddleware
    if name == "AlipayWSGIMiddleware":
        from .fronts.wsgi import AlipayWSGIMiddleware

        return AlipayWSGIMiddleware
    raise AttributeError(f"module 'alipay_middleware' has no attribute {name!r}")
