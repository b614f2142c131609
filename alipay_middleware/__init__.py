"""Verified Alipay callbacks and signed pay URLs for any WSGI or ASGI app.

    from alipay_middleware import Alipay, OpenApiConfig
    alipay = Alipay(OpenApiConfig(app_id=..., app_private_key=..., alipay_public_key=...))

    @alipay.on_paid
    def paid(event): ...

    flask_app.wsgi_app = alipay.wsgi(flask_app.wsgi_app)     # or: asgi_app = alipay.asgi(app)

See the README for the hook contract, the answers the notify path gives and the checks it performs.
"""

from .asgi import AlipayASGIMiddleware
from .core import Alipay
from .errors import AlipayError, LedgerUnavailable, Rejection
from .events import PaymentEvent, ReturnResult
from .ledger import Ledger, SQLiteLedger, StoredEvent
from .openapi import PRODUCTION_GATEWAY, SANDBOX_GATEWAY, OpenApiConfig
from .wsgi import AlipayWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "Alipay",
    "AlipayASGIMiddleware",
    "AlipayError",
    "AlipayWSGIMiddleware",
    "Ledger",
    "LedgerUnavailable",
    "OpenApiConfig",
    "PaymentEvent",
    "PRODUCTION_GATEWAY",
    "Rejection",
    "ReturnResult",
    "SANDBOX_GATEWAY",
    "SQLiteLedger",
    "StoredEvent",
]
