"""The one driver of the core's flows (notify and return), shared by both fronts.

A flow (``callbacks/``) yields each blocking or user-supplied step. :func:`run_flow` makes them in order in
the calling thread (the WSGI request thread, the CLI): coroutine functions (async hooks, an async
``order_amount``) run to completion on a private event loop via asgiref's ``async_to_sync``.

:func:`run_flow_async` drives a flow from the ASGI server's event loop, never blocking it and never holding a
pool thread while an async step waits: the flow's own work (parsing, RSA, ledger calls, sync hooks) runs in
the ``Alipay`` pool (asgiref ``sync_to_async``) up to its next async step (a call that gives an awaitable:
an ``async def`` hook's or ``order_amount``'s coroutine, created there but not started), which is awaited on
the loop itself; then the flow resumes in the pool. A flow of sync steps costs one thread hop, as before; one with an
async hook, two (before and after it). So slow async hooks do not use up ``hook_threads``, and a copy of
their event is answered 503 at once.

Cancellation: the ASGI request's task awaits the drive through :func:`asyncio.shield`, so a client going
away (a server cancelling the request) does not stop a hook midway; it runs to its end and the event is
marked done. If the drive itself is cancelled (the event loop shutting down) while an async step waits, the
step gets the cancellation, the flow records it as that step's failure (500, the event released for the
resend) and the cancellation goes on. One cancelled while the flow runs in a pool thread leaves that thread
to finish its steps; if it stops at an async step, the event stays claimed until ``lease_seconds`` run out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import async_to_sync, sync_to_async

from ..callbacks.steps import Steps

T = TypeVar("T")

log = logging.getLogger("alipay_middleware")


class StepCancelled(Exception):
    """Thrown into a flow whose async step was cancelled: the flow records it as that step's failure."""


async def _await(awaitable: Any) -> Any:
    return await awaitable


def await_if_needed(result: Any) -> Any:
    """A user function's result, run to completion if it is awaitable (an ``async def`` function)."""
    return async_to_sync(_await)(result) if inspect.isawaitable(result) else result


def run_flow(flow: Steps[T], fallback: T) -> T:
    """Drive the flow with blocking calls (the WSGI request thread, the CLI, ``reconcile``).

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


def _advance(flow: Steps[T], result: Any, error: BaseException | None) -> tuple[bool, Any]:
    """In a pool thread: resume the flow and make its steps until it ends, ``(True, outcome)``, or a step gives
    an awaitable (an ``async def`` function's coroutine, not yet started), ``(False, awaitable)``, for the
    loop to await. Exceptions other than a step's escape (a bug)."""
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(result)
        except StopIteration as stop:
            return True, stop.value
        result, error = None, None
        try:
            result = call.fn(*call.args)
        except Exception as exc:
            error = exc
        else:
            if inspect.isawaitable(result):
                return False, result


#: Drives under way: the event loop keeps only weak references to tasks, and the requests that started
#: these may have gone.
_RUNNING: set[asyncio.Task[Any]] = set()


async def run_flow_async(flow: Steps[T], fallback: T, pool: Callable[[], ThreadPoolExecutor]) -> T:
    """Drive the flow from an event loop: its sync steps in ``pool()`` (looked up at each hop: ``Alipay.close()``
    drops its pool), its async steps awaited on the loop. Cancelling the caller does not stop the flow."""
    task = asyncio.ensure_future(_drive_async(flow, fallback, pool))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    outcome: T = await asyncio.shield(task)
    return outcome


async def _drive_async(flow: Steps[T], fallback: T, pool: Callable[[], ThreadPoolExecutor]) -> T:
    result: Any = None
    error: BaseException | None = None
    cancelled: asyncio.CancelledError | None = None
    executor: ThreadPoolExecutor | None = None
    hop: Callable[..., Any] = _advance
    try:
        while True:
            if pool() is not executor:
                executor = pool()
                hop = sync_to_async(_advance, thread_sensitive=False, executor=executor)
            finished, value = await hop(flow, result, error)
            if finished:
                outcome: T = value
                break
            result, error = None, None
            if cancelled is not None:  # no new async step once cancelled: the flow records the failure
                if inspect.iscoroutine(value):
                    value.close()
                error = StepCancelled("cancelled before it started (the event loop is shutting down)")
                continue
            try:
                result = await value
            except asyncio.CancelledError as exc:
                cancelled = exc
                error = StepCancelled("cancelled while it ran (the event loop is shutting down)")
            except Exception as exc:
                error = exc
    except Exception:
        log.exception("alipay internal error reason=internal_error")
        outcome = fallback
    if cancelled is not None:
        raise cancelled
    return outcome
