"""The async client: the same calls as coroutines, each run in a thread."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from ..protocols.legacy import LegacyConfig
from ..protocols.openapi import OpenApiConfig
from .base import Host
from .client import AlipayClient
from .factory import client_for
from .legacy_client import LegacyClient
from .results import CloseResult, RefundQuery, RefundResult, TradeQuery

__all__ = ["AsyncAlipayClient", "PooledHost"]

T = TypeVar("T")


class PooledHost(Host, Protocol):
    """An :class:`~alipay_middleware.Alipay` as the async client sees it: a :class:`Host` that also has the
    pool its calls run in, read at every call (``Alipay.close()`` drops the pool; the next use makes one)."""

    @property
    def executor(self) -> Executor: ...


class AsyncAlipayClient:
    """The same four calls as coroutines. Each runs the synchronous client in a thread, never on the event
    loop: in ``executor`` when given, else in the ``Alipay`` instance's pool when built from one
    (``alipay.aclient``; the pool is looked up at every call), else via :func:`asyncio.to_thread`. The
    synchronous client (``sync``) is an :class:`~alipay_middleware.gateway.client.AlipayClient`, or a
    :class:`~alipay_middleware.gateway.legacy_client.LegacyClient` for a ``LegacyConfig`` (only ``query`` works
    there).

    Cancelling the awaiting task does not stop a request already sent: a cancelled ``refund`` has an
    unknown outcome (ask ``refund_query``).
    """

    def __init__(
        self,
        alipay_or_config: PooledHost | OpenApiConfig | LegacyConfig,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_response: int = 1024 * 1024,
        executor: Executor | None = None,
    ) -> None:
        self.sync: AlipayClient | LegacyClient = client_for(
            alipay_or_config, timeout=timeout, retries=retries, backoff=backoff, max_response=max_response)
        # A bare config has no pool; anything else the client accepted is an Alipay (a PooledHost).
        self._alipay = None if isinstance(alipay_or_config, (OpenApiConfig, LegacyConfig)) else alipay_or_config
        self._executor = executor

    def __repr__(self) -> str:
        return f"<AsyncAlipayClient {self.sync.account} {self.sync.host}>"

    async def _run(self, fn: Callable[[], T]) -> T:
        # Looked up per call: Alipay.close() drops its pool and the next use makes a new one.
        executor = self._executor if self._executor is not None else (
            self._alipay.executor if self._alipay is not None else None)
        if executor is None:
            return await asyncio.to_thread(fn)
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def query(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> TradeQuery:
        """:meth:`AlipayClient.query`, in a thread."""
        return await self._run(functools.partial(self.sync.query, out_trade_no=out_trade_no, trade_no=trade_no))

    async def refund(
        self,
        *,
        out_trade_no: str | None = None,
        trade_no: str | None = None,
        refund_amount: Decimal | str,
        out_request_no: str,
        refund_reason: str | None = None,
    ) -> RefundResult:
        """:meth:`AlipayClient.refund`, in a thread."""
        return await self._run(functools.partial(
            self.sync.refund, out_trade_no=out_trade_no, trade_no=trade_no, refund_amount=refund_amount,
            out_request_no=out_request_no, refund_reason=refund_reason,
        ))

    async def close(self, *, out_trade_no: str | None = None, trade_no: str | None = None) -> CloseResult:
        """:meth:`AlipayClient.close`, in a thread."""
        return await self._run(functools.partial(self.sync.close, out_trade_no=out_trade_no, trade_no=trade_no))

    async def refund_query(
        self, *, out_trade_no: str | None = None, trade_no: str | None = None, out_request_no: str
    ) -> RefundQuery:
        """:meth:`AlipayClient.refund_query`, in a thread."""
        return await self._run(functools.partial(
            self.sync.refund_query, out_trade_no=out_trade_no, trade_no=trade_no, out_request_no=out_request_no,
        ))

    async def call(self, method: str, biz: Mapping[str, Any] | None = None, *, idempotent: bool = False,
                   timeout: float | None = None, **common_params: str) -> dict[str, Any]:
        """:meth:`AlipayClient.call`, in a thread."""
        return await self._run(functools.partial(
            self.sync.call, method, biz, idempotent=idempotent, timeout=timeout, **common_params))
