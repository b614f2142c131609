"""``Alipay``, the composition root: one configuration, its hooks, its ledger, and the two ways to mount it."""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any, TypeVar, overload

from .callbacks.confirm import Confirmation, confirm_flow
from .callbacks.flow import notify_flow, return_flow
from .callbacks.memory import VerifiedIds
from .callbacks.steps import Flow, Steps
from .events import CLOSED, PAID, REFUNDED, ReturnResult
from .fronts.asgi import AlipayASGIMiddleware
from .fronts.drive import await_if_needed, run_flow
from .fronts.wsgi import AlipayWSGIMiddleware
from .gateway.aio import AsyncAlipayClient
from .gateway.client import AlipayClient
from .gateway.factory import client_for
from .gateway.legacy_client import LegacyClient
from .gateway.transport import notify_verify
from .ledger import Ledger, open_ledger
from .ledger.pending import PendingFinishes
from .protocols.base import check_type
from .protocols.helper import check_allowed_hosts, check_base_url
from .protocols.legacy import LegacyConfig
from .protocols.openapi import OpenApiConfig, OpenApiProtocol

log = logging.getLogger("alipay_middleware")
F = TypeVar("F", bound=Callable[..., Any])
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")
#: How many pending orders ``reconcile`` asks Alipay about at once, unless told otherwise.
RECONCILE_CONCURRENCY = 8


@dataclass(frozen=True)
class Hook:
    """A registered hook: ``fn(event)``, or ``fn(event, tx)`` when ``transactional``."""

    fn: Callable[..., Any]
    transactional: bool = False


class Alipay:
    """Verified Alipay callbacks and signed pay requests for one merchant configuration.

    ``lease_seconds``: how long a claimed event is protected from concurrent copies; after that an
    unfinished claim counts as abandoned (its worker died) and the next copy retakes it.
    ``hook_threads``: size of the pool that runs sync hooks and ledger calls on the ASGI front.
    ``trusted_proxies``: how many proxies in front of the app append to ``X-Forwarded-For``; the
    customer's address (the legacy ``exter_invoke_ip``) is read that many hops from the right. 0 (the
    default) ignores the header, which anyone can write.
    ``confirm_returns``: Open Platform only. On a verified return for a trade not yet known paid, ask
    Alipay (``alipay.trade.query``); a paid answer runs ``on_paid`` through the same ledger and dedupe as
    the notify, so the page can say "paid" at once and the hook still runs once.
    ``return_checks``: how many calls to Alipay for browser returns (the legacy origin check, the
    ``confirm_returns`` query) may be in flight at once in this process; a return arriving when all are
    taken is not made to wait: its page gets a result with ``confirmed=False``. Below ``hook_threads``,
    so that on the ASGI front, where returns and notifications share that pool, returns can never take
    every thread. Default: ``min(4, hook_threads - 1)``.
    ``allowed_hosts``: the host names (case-insensitive; ``.shop.example`` is that name and every name
    under it) whose Host header may be used to derive ``notify_url``/``return_url`` when the config has
    none. Loopback is always allowed; any other Host makes the pay helper raise ``UntrustedHost``.
    """

    def __init__(
        self,
        config: OpenApiConfig | LegacyConfig,
        *,
        notify_path: str = "/alipay/notify",
        return_path: str = "/alipay/return",
        ledger: str | Ledger = "sqlite:///alipay-ledger.sqlite3",
        max_body: int = 64 * 1024,
        lease_seconds: float = 600.0,
        hook_threads: int = 8,
        trusted_proxies: int = 0,
        confirm_returns: bool = False,
        return_checks: int | None = None,
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        protocol_factory = getattr(config, "protocol", None)
        if protocol_factory is None:
            raise TypeError(f"config must be an OpenApiConfig or a LegacyConfig, not {type(config).__name__}")
        for name, value, types, optional, form in (
            ("notify_path", notify_path, str, False, "a URL path starting with '/'"),
            ("return_path", return_path, str, False, "a URL path starting with '/'"),
            ("max_body", max_body, int, False, "a size between 1024 and 16 MiB"),
            ("lease_seconds", lease_seconds, (int, float), False, "between 1 and 86400 seconds"),
            ("hook_threads", hook_threads, int, False, "between 1 and 256"),
            ("trusted_proxies", trusted_proxies, int, False, "the number of proxy hops (0-16)"),
            ("confirm_returns", confirm_returns, bool, False, ""),
            ("return_checks", return_checks, int, True, "a count from 0 to hook_threads - 1"),
        ):
            check_type(name, value, types, form, optional=optional)
        for name, path in (("notify_path", notify_path), ("return_path", return_path)):
            if not _PATH.fullmatch(path):
                raise ValueError(f"{name} must be a URL path starting with '/', got {path!r}")
        if notify_path == return_path:
            raise ValueError("notify_path and return_path must differ")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or not 1024 <= max_body <= 16 * 2**20:
            raise ValueError(f"max_body must be an int between 1024 and 16 MiB, got {max_body!r}")
        if not 1 <= lease_seconds <= 86400:
            raise ValueError(f"lease_seconds must be between 1 and 86400, got {lease_seconds!r}")
        if not 1 <= hook_threads <= 256:
            raise ValueError(f"hook_threads must be between 1 and 256, got {hook_threads!r}")
        if isinstance(trusted_proxies, bool) or not isinstance(trusted_proxies, int) or not 0 <= trusted_proxies <= 16:
            raise ValueError(f"trusted_proxies must be the number of proxy hops (0-16), got {trusted_proxies!r}")
        if not isinstance(confirm_returns, bool):
            raise TypeError("confirm_returns must be True or False")
        if return_checks is None:
            return_checks = min(4, hook_threads - 1)
        elif isinstance(return_checks, bool) or not isinstance(return_checks, int) \
                or not 0 <= return_checks < hook_threads:
            raise ValueError(f"return_checks must be an int from 0 to hook_threads - 1 ({hook_threads - 1}), got "
                             f"{return_checks!r}: on ASGI returns share the hook_threads pool with notifications "
                             "and must leave them a thread; raise hook_threads or lower return_checks")
        if confirm_returns and return_checks == 0:
            raise ValueError("confirm_returns needs return_checks >= 1 (and hook_threads >= 2): with 0 no return "
                             "is ever confirmed")
        self.config = config
        self.protocol = protocol_factory()
        if confirm_returns and not _is_open_platform(self.protocol):
            raise ValueError("confirm_returns is for the Open Platform: a legacy return carries its trade "
                             "status and already runs on_paid when it says paid")
        self.confirm_returns = confirm_returns
        self.return_checks = return_checks
        # Per process: the bound on returns' calls to Alipay, and the origin checks Alipay has confirmed.
        self.return_gate = threading.BoundedSemaphore(return_checks)
        self.verified_returns = VerifiedIds(VerifiedIds.RETURN_LIFE)
        self.verified_notifications = VerifiedIds(VerifiedIds.NOTIFY_LIFE)
        self.notify_path = notify_path
        self.return_path = return_path
        self.max_body = max_body
        self.lease_seconds = float(lease_seconds)
        self.hook_threads = hook_threads
        self.trusted_proxies = trusted_proxies
        self.allowed_hosts = check_allowed_hosts(allowed_hosts)
        self.ledger = open_ledger(ledger)
        self.hooks: dict[str, Hook] = {}
        self.finishes = PendingFinishes(self.ledger.finish)
        self.order_amount_fn: Callable[..., Any] | None = None
        self.pending_orders_fn: Callable[..., Any] | None = None
        self._started = False
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        if return_checks == 0 and getattr(config, "verify_notify_id", False) is True:
            log.warning("alipay: return_checks=0 (hook_threads=%d): browser returns are never origin-checked; "
                        "their pages get confirmed=False unless the ledger already has the payment", hook_threads)
        if getattr(config, "verify_notify_id", True) is False:
            log.warning("alipay: verify_notify_id=False: callbacks are NOT origin-checked with Alipay "
                        "(notify_verify); a leaked key or a replayed message would be accepted. "
                        "Use this only against a local simulator")
        unset = [name for name in ("notify_url", "return_url") if getattr(config, name, None) is None]
        if unset and self.allowed_hosts is None:
            names = " and ".join(unset)
            log.warning("alipay: no %s configured and no allowed_hosts: the pay helper derives %s from the "
                        "request's Host only when it is loopback (localhost, 127.0.0.0/8, ::1) and raises "
                        "UntrustedHost for any other Host. Set %s in the config, or Alipay(allowed_hosts=[...])",
                        names, names, names)

    def __repr__(self) -> str:
        return f"<Alipay {type(self.protocol).__name__} {self.protocol.account} notify={self.notify_path}>"

    # -- registration ------------------------------------------------------------------------------

    def order_amount(self, fn: F) -> F:
        """Register ``(out_trade_no) -> Decimal | None``: the amount of our order, None if not ours."""
        _check_callable(fn, "order_amount")
        if self.order_amount_fn is not None:
            raise ValueError("order_amount is already registered; one function answers for all orders")
        self.order_amount_fn = fn
        return fn

    def pending_orders(self, fn: F) -> F:
        """Register ``(created_before: datetime) -> Iterable[str]``: out_trade_nos of your orders still
        awaiting payment that were created before that (aware, UTC) moment, for :meth:`reconcile`.
        Sync, or ``async def`` returning a list."""
        _check_callable(fn, "pending_orders")
        if self.pending_orders_fn is not None:
            raise ValueError("pending_orders is already registered")
        self.pending_orders_fn = fn
        return fn

    @overload
    def on_paid(self, fn: F) -> F: ...
    @overload
    def on_paid(self, fn: None = None, *, transactional: bool = False) -> Callable[[F], F]: ...

    def on_paid(self, fn: Callable[..., Any] | None = None, *, transactional: bool = False) -> Any:
        """Called once per trade on its first TRADE_SUCCESS or TRADE_FINISHED notification (or, for
        the legacy service, on a paid return if that comes first). ``@alipay.on_paid`` or
        ``@alipay.on_paid(transactional=True)``: see :meth:`_register`."""
        return self._register(PAID, fn, transactional)

    @overload
    def on_closed(self, fn: F) -> F: ...
    @overload
    def on_closed(self, fn: None = None, *, transactional: bool = False) -> Callable[[F], F]: ...

    def on_closed(self, fn: Callable[..., Any] | None = None, *, transactional: bool = False) -> Any:
        """Called once per trade when it closes unpaid (TRADE_CLOSED without a refund)."""
        return self._register(CLOSED, fn, transactional)

    @overload
    def on_refunded(self, fn: F) -> F: ...
    @overload
    def on_refunded(self, fn: None = None, *, transactional: bool = False) -> Callable[[F], F]: ...

    def on_refunded(self, fn: Callable[..., Any] | None = None, *, transactional: bool = False) -> Any:
        """Called once per refund (``out_biz_no``; legacy: trade and ``gmt_refund``)."""
        return self._register(REFUNDED, fn, transactional)

    def _register(self, kind: str, fn: Callable[..., Any] | None, transactional: bool) -> Any:
        """Both decorator forms of every hook: ``@alipay.on_<kind>`` and ``@alipay.on_<kind>(transactional=True)``.

        A plain hook is called as ``fn(event)``, sync or ``async def``. A transactional hook is called as
        ``fn(event, tx)``, sync only, inside the ledger transaction that marks the event done: ``tx`` is the
        ledger's own connection (guarded: it cannot commit, roll back or close), so the hook's writes to
        tables in the ledger's database commit together with the done mark, or not at all.
        """
        if not isinstance(transactional, bool):
            raise TypeError(f"on_{kind}(transactional=...) must be True or False, got {transactional!r}")

        def register(hook: F) -> F:
            if transactional:
                self._check_transactional(kind, hook)
            else:
                _check_callable(hook, f"on_{kind}")
            if kind in self.hooks:
                raise ValueError(f"on_{kind} is already registered ({_name(self.hooks[kind].fn)}); "
                                 "call both from one function")
            self.hooks[kind] = Hook(hook, transactional)
            return hook

        return register if fn is None else register(fn)

    def _check_transactional(self, kind: str, fn: Any) -> None:
        what = f"on_{kind}(transactional=True)"
        _check_callable(fn, what, arguments=2)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
            raise TypeError(f"{what} needs a plain (def) function: {_name(fn)} is async. The transaction lives "
                            "on the ledger's connection in a worker thread; an async hook would run on the event "
                            "loop, away from it. Make it sync (it runs in the Alipay thread pool on ASGI), or "
                            "drop transactional=True")
        reason = self.ledger.transactions_unsupported()
        if reason is not None:
            raise ValueError(f"{what} needs a ledger that can run the hook in its own transaction: SQLiteLedger "
                             "on a file (ledger='sqlite:///path.sqlite3') or PostgresLedger "
                             f"(ledger='postgresql://...'); this one cannot ({reason})")

    # -- mounting ----------------------------------------------------------------------------------

    def wsgi(self, app: Any) -> AlipayWSGIMiddleware:
        return AlipayWSGIMiddleware(app, alipay=self)

    def asgi(self, app: Any) -> AlipayASGIMiddleware:
        return AlipayASGIMiddleware(app, alipay=self)

    def helper(self, base_url: str) -> Any:
        """A pay helper outside any request (a job, a shell), with callback URLs under ``base_url``
        (an absolute http(s) URL such as ``"https://shop.example"``) unless configured.

        The same object as ``environ["alipay"]`` (pay URLs and forms for this protocol); there is no
        customer here, so the legacy ``exter_invoke_ip`` is left out unless passed. ``base_url`` is
        the caller's word: ``allowed_hosts`` does not apply to it."""
        return self.protocol.helper_class(self, check_base_url(base_url), str)

    # -- used by the fronts ------------------------------------------------------------------------

    def notify_flow(self, raw: bytes, content_type: str | None) -> Flow:
        return notify_flow(self, raw, content_type)

    def return_flow(self, method: str, query: bytes) -> Steps[ReturnResult | None]:
        return return_flow(self, method, query)

    def lease_owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def ask_origin(self, url: str, timeout: float) -> bytes:
        """The origin check's call (the legacy ``notify_verify``), through the configured proxy: Alipay's answer."""
        return notify_verify(url, timeout, self.config.proxy)

    def start(self) -> None:
        """Once, at the first request: say what is not configured that a shop would regret."""
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.order_amount_fn is None:
            log.warning("alipay: no @alipay.order_amount registered: out_trade_no and total_amount of "
                        "notifications are NOT checked against your orders")
        if PAID not in self.hooks:
            log.warning("alipay: no @alipay.on_paid hook registered: payments are recorded and "
                        "acknowledged without calling your code")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool for sync hooks and ledger calls on the ASGI front (not asgiref's single thread)."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.hook_threads, thread_name_prefix="alipay")
        return self._executor

    @cached_property
    def client(self) -> AlipayClient | LegacyClient:
        """Query, refund and close trades (an :class:`~alipay_middleware.gateway.client.AlipayClient`, made on
        first use). For a ``LegacyConfig``: a :class:`~alipay_middleware.gateway.legacy_client.LegacyClient`,
        which can only ``query`` (``single_trade_query``)."""
        return client_for(self)

    @cached_property
    def aclient(self) -> AsyncAlipayClient:
        """The same calls as coroutines, run in :attr:`executor`, never on the event loop."""
        return AsyncAlipayClient(self)

    def reconcile(self, older_than_minutes: float = 15.0, *, concurrency: int = RECONCILE_CONCURRENCY,
                  progress: Callable[[int, int], None] | None = None) -> list[Confirmation]:
        """Ask Alipay about every order ``pending_orders`` lists as older than ``older_than_minutes``, and
        feed confirmed payments and unpaid closes through the same hooks and dedupe as the notify.

        For notifications that never arrived (a notify_url down for a day misses every resend). Safe to
        run from cron on every host at once: the ledger lets one worker run each hook, once. Blocking;
        returns one :class:`~alipay_middleware.callbacks.confirm.Confirmation` per order, in the order
        ``pending_orders`` listed them.

        Up to ``concurrency`` orders are asked about at once (each query waits on the network; one at a
        time, 10,000 orders at 50 ms each take over 8 minutes), so hooks may run in several threads at
        once, as they do under a threaded server; ``concurrency=1`` asks one after another. An order whose
        confirmation fails is reported (``error``, ``internal_error``, ...) and does not stop the others.
        ``progress(done, total)``, if given, is called in the calling thread after each order.
        """
        if self.pending_orders_fn is None:
            raise RuntimeError("reconcile needs @alipay.pending_orders: a function listing your unpaid orders")
        if not 0 <= older_than_minutes <= 60 * 24 * 365:
            raise ValueError(f"older_than_minutes must be between 0 and a year, got {older_than_minutes!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number of at least 1, got {concurrency!r}")
        cutoff = datetime.now(timezone.utc) - timedelta(minutes=older_than_minutes)
        pending = [str(out_trade_no) for out_trade_no in await_if_needed(self.pending_orders_fn(cutoff))]
        self.client  # noqa: B018 - made once here, not raced for by the workers (a cached property)

        def confirm(out_trade_no: str) -> Confirmation:
            fallback = Confirmation(out_trade_no, None, None, "internal_error")
            return run_flow(confirm_flow(self, out_trade_no, "reconcile"), fallback)

        if concurrency == 1 or len(pending) < 2:
            results = []
            for out_trade_no in pending:
                results.append(confirm(out_trade_no))
                if progress is not None:
                    progress(len(results), len(pending))
            return results
        with ThreadPoolExecutor(min(concurrency, len(pending)), thread_name_prefix="alipay-reconcile") as pool:
            futures = [pool.submit(confirm, out_trade_no) for out_trade_no in pending]
            for done, _ in enumerate(as_completed(futures), start=1):
                if progress is not None:
                    progress(done, len(pending))
        return [future.result() for future in futures]  # run_flow answers every failure: no exception here

    def close(self) -> None:
        """Wait for running hooks, try pending done marks once more, release the ledger's connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.finishes.close()
        self.ledger.close()


def _is_open_platform(protocol: object) -> bool:
    # Named, not duck-typed: every protocol can turn a trade query into an event (for reconcile), but legacy returns
    # carry their status, so confirm_returns stays an Open Platform setting.
    return isinstance(protocol, OpenApiProtocol)


def _check_callable(fn: Any, what: str, arguments: int = 1) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must decorate a function, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(*[object()] * arguments)
    except TypeError:
        expected = "exactly one argument" if arguments == 1 else "two arguments (event, tx)"
        raise TypeError(f"{what} must accept {expected}: {_name(fn)} does not") from None
    except ValueError:  # pragma: no cover - builtins without a signature
        pass


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
