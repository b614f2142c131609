"""What a flow may touch: the narrow, typed interface the callback core needs from its host (``Alipay``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ..ledger.base import Ledger
from ..protocols.base import Protocol as AlipayProtocol
from .memory import VerifiedIds


class RegisteredHook(Protocol):
    """A registered hook: ``fn(event)``, or ``fn(event, tx)`` when ``transactional``."""

    @property
    def fn(self) -> Callable[..., object]: ...

    @property
    def transactional(self) -> bool: ...


class Finisher(Protocol):
    """Writes done marks, retried until they land (``ledger.pending.PendingFinishes``)."""

    def finish(self, key: str, note: str | None = None) -> bool:
        """True once the mark landed; False: still retried in the background."""


class TradeAnswer(Protocol):
    """What the confirm flow reads of a verified trade query answer (``TradeQuery``)."""

    @property
    def exists(self) -> bool: ...

    @property
    def out_trade_no(self) -> str: ...

    @property
    def trade_no(self) -> str: ...

    @property
    def trade_status(self) -> str | None: ...

    @property
    def total_amount(self) -> Decimal | None: ...

    @property
    def send_pay_date(self) -> datetime | None: ...

    @property
    def raw(self) -> Mapping[str, Any]: ...

    @property
    def paid(self) -> bool: ...


class TradeQuerier(Protocol):
    """Asks Alipay about one trade (``alipay.trade.query``, the legacy ``single_trade_query``)."""

    def query(self, *, out_trade_no: str) -> TradeAnswer: ...


class FlowPort(Protocol):
    """Everything a flow may touch, and nothing else. ``Alipay`` provides it; a test's stand-in can too."""

    @property
    def protocol(self) -> AlipayProtocol: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def hooks(self) -> Mapping[str, RegisteredHook]:
        """The registered hooks by event kind."""

    @property
    def order_amount_fn(self) -> Callable[[str], object] | None:
        """``(out_trade_no) -> Decimal | None`` (sync or async), if registered."""

    @property
    def lease_seconds(self) -> float: ...

    def lease_owner(self) -> str:
        """A new owner name for one claim's lease."""

    @property
    def finishes(self) -> Finisher: ...

    @property
    def verified_notifications(self) -> VerifiedIds: ...

    @property
    def verified_returns(self) -> VerifiedIds: ...

    @property
    def return_gate(self) -> threading.Semaphore:
        """The ``return_checks`` slots a return's call to Alipay takes, never waiting for one."""

    @property
    def confirm_returns(self) -> bool: ...

    @property
    def client(self) -> TradeQuerier: ...

    def ask_origin(self, url: str, timeout: float) -> bytes:
        """The origin check's call to Alipay (the legacy ``notify_verify``): its raw answer. Raises
        :class:`~alipay_middleware.errors.GatewayUnavailable` when Alipay cannot be asked."""
