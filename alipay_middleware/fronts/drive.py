"""The one driver of the core's flows (notify and return), shared by both fronts.

A flow (``callbacks/``) yields each blocking or user-supplied step; this runs them in order in the
calling thread. Coroutine functions (async hooks, an async ``order_amount``) go through asgiref's
``async_to_sync``: under WSGI that runs them to completion on a private loop; under ASGI, where the
whole flow runs in a worker thread via ``sync_to_async``, asgiref hands them back to the server's event
loop. So on ASGI a notification costs one thread hop, its parsing and RSA work stay off the event loop,
and async hooks still run on the loop.
"""

from __future__ import annotations

import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import async_to_sync, sync_to_async

from ..callbacks.steps import Steps

T = TypeVar("T")

log = logging.getLogger("alipay_middleware")


async def _await(awaitable: Any) -> Any:
    return await awaitable


def await_if_needed(result: Any) -> Any:
    """A user function's result, run to completion if it is awaitable (an ``async def`` function)."""
    return async_to_sync(_await)(result) if inspect.isawaitable(result) else result


def run_flow(flow: Steps[T], fallback: T) -> T:
    """Drive the flow with blocking calls (the WSGI request thread, or a worker thread under ASGI).

    The flow answers every failure it knows of itself; anything that still escapes is a bug, which is
    logged with its traceback and answered with ``fallback`` (a 500 for the notify; never a traceback
    on the wire).
    """
    try:
        return _drive(flow)
    except Exception:
        log.exception("alipay internal error reason=internal_error")
        return fallback


def _drive(flow: Steps[T]) -> T:
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(result)
        except StopIteration as stop:
            outcome: T = stop.value
            return outcome
        result, error = None, None
        try:
            result = await_if_needed(call.fn(*call.args))
        except Exception as exc:
            error = exc


async def run_flow_in_thread(flow: Steps[T], fallback: T, executor: ThreadPoolExecutor) -> T:
    """Drive the flow from an event loop: one hop to ``executor``, never blocking the loop."""
    outcome: T = await sync_to_async(run_flow, thread_sensitive=False, executor=executor)(flow, fallback)
    return outcome
