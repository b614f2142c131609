"""What the fronts need of ``Alipay`` (a ``typing.Protocol``), and the check that a mounted ``alipay=`` has it.

The fronts sit below the composition root (``alipay.py``) and never import it: they name only this
interface, which ``Alipay`` satisfies (strict mypy checks that where ``Alipay.wsgi``/``Alipay.asgi`` mount a
front). It includes what the pay helper reads, since the fronts hand the same object to it.
"""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, cast

from ..callbacks.steps import Flow, Steps
from ..events import ReturnResult
from ..protocols.helper import HelperSettings


class FrontPort(HelperSettings, Protocol):
    """The ``Alipay`` instance as a front sees it."""

    @property
    def max_body(self) -> int: ...
    @property
    def executor(self) -> ThreadPoolExecutor: ...

    def start(self) -> None: ...  # at a front's first request; idempotent

    def notify_flow(self, raw: bytes, content_type: str | None) -> Flow: ...

    def return_flow(self, method: str, query: bytes) -> Steps[ReturnResult | None]: ...


#: The members a front touches. Looked up without running them: reading ``executor`` would start a pool.
_MEMBERS = ("config", "protocol", "notify_path", "return_path", "allowed_hosts", "trusted_proxies", "max_body",
            "executor", "start", "notify_flow", "return_flow")


def check_port(alipay: object, front: str) -> FrontPort:
    """``alipay`` itself if it has every member a front uses; else a TypeError naming what to pass."""
    missing = object()
    if any(inspect.getattr_static(alipay, name, missing) is missing for name in _MEMBERS):
        raise TypeError(f"{front} needs alipay=Alipay(...), not {type(alipay).__name__}")
    return cast(FrontPort, alipay)
