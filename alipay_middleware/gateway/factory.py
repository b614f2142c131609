"""The choice of client: an AlipayClient for the Open Platform, a LegacyClient for the legacy service."""

from __future__ import annotations

from ..protocols.legacy import LegacyConfig
from ..protocols.openapi import OpenApiConfig
from .base import Host, config_of
from .client import AlipayClient
from .legacy_client import LegacyClient

__all__ = ["client_for"]


def client_for(
    alipay_or_config: Host | OpenApiConfig | LegacyConfig,
    *,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.2,
    max_response: int = 1024 * 1024,
) -> AlipayClient | LegacyClient:
    """The synchronous client for this merchant: a :class:`LegacyClient` for a ``LegacyConfig`` (or an
    ``Alipay`` on one), else an :class:`AlipayClient` (which refuses anything that is not Open Platform)."""
    source = alipay_or_config
    if isinstance(source, LegacyConfig) or (
            not isinstance(source, OpenApiConfig) and isinstance(config_of(source), LegacyConfig)):
        return LegacyClient(source, timeout=timeout, retries=retries, backoff=backoff, max_response=max_response)
    return AlipayClient(source, timeout=timeout, retries=retries, backoff=backoff, max_response=max_response)
