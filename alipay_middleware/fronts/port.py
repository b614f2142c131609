"""What the fronts need of ``Alipay`` (a ``typing.Protocol``), and the check that a mounted ``alipay=`` has it.

The fronts sit below the composition root (``alipay.py``) and never import it: they name only this
interface, which ``Alipay`` satisfies (strict mypy checks that where ``Alipay.wsgi``/``Alipay.asgi`` mount a
front). It includes what the pay helper reads, since the fronts hand the same object to it.
"""

from __future__ import annotations

import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

from ..callbacks.steps import Flow, Steps
from ..events import ReturnResult
from ..protocols.helper import HelperSettings

log = logging.getLogger("alipay_middleware")


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


_WHAT_GOES_WRONG = {
    "notify_url": "Alipay's notifications will get your app's 404 and payments never confirm",
    "return_url": "buyers coming back from Alipay land on a page the middleware never verifies (or a 404)",
}


def warn_about_mount(alipay: FrontPort, root_path: str) -> None:
    """At a front's first request: a WARNING for each configured ``notify_url``/``return_url`` whose path is
    not where this front answers it, the mount prefix (``SCRIPT_NAME`` / ``root_path``) plus
    ``notify_path``/``return_path``, naming both paths and the setting to change."""
    prefix = unquote(root_path).rstrip("/")
    for setting, argument, path in (("notify_url", "notify_path", alipay.notify_path),
                                    ("return_url", "return_path", alipay.return_path)):
        url = getattr(alipay.config, setting, None)
        if not isinstance(url, str):
            continue
        configured = unquote(urlsplit(url).path)
        mounted = prefix + path
        if configured != mounted:
            mount = f"mount prefix {prefix!r} + {argument} {path!r}" if prefix else f"{argument} {path!r}"
            log.warning("alipay: %s's path is %r but this middleware answers at %r (%s): %s. Change %s in the "
                        "config to end in %r, or %s to match (behind a proxy that strips a path prefix, pass the "
                        "prefix on: werkzeug's ProxyFix(x_prefix=1), uvicorn's --root-path)", setting, configured,
                        mounted, mount, _WHAT_GOES_WRONG[setting], setting, mounted, argument)
