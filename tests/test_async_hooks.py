"""Async hooks (and an async ``order_amount``) on the ASGI front: awaited on the event loop, holding no thread of
the ``hook_threads`` pool while they wait; their contract is the sync hooks' (503 for copies meanwhile, 500
``hook_failed`` on an exception); a client going away does not stop them, and a loop shutting down in the middle
of one releases its event for the resend.

Every test mounts ``hook_threads=1``: with the old driver (the whole flow in a pool thread, waiting there for the
hook) the one thread was held while a hook waited, so nothing else could be answered. The hooks wait on events the
test sets; the bounded waits below only turn a hang on a broken version into a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from decimal import Decimal
from typing import Any

import pytest

from alipay_middleware.ledger import DONE, FAILED
from conftest import ASGIClient, inner_asgi, notify_fields, signed_body
from openapi_gateway import OpenApiGateway

NOTIFY = "/alipay/notify"
#: How long a test waits for a state before it fails (a hang on a broken version, never a timing assertion).
BOUND = 20


class Gates:
    """Per trade: a threading.Event set when its hook (or ``order_amount``) is entered, and an asyncio.Event on
    the client's loop that lets it go on. Trades without a gate pass straight through."""

    def __init__(self, client: ASGIClient, *held: str) -> None:
        self.client = client
        self.entered = {trade: threading.Event() for trade in held}
        self.release_events = {trade: asyncio.Event() for trade in held}
        self.ran: list[str] = []
        self.where: list[tuple[int, asyncio.AbstractEventLoop]] = []

    async def __call__(self, event: Any) -> None:
        await self.wait(event.out_trade_no)
        self.ran.append(event.out_trade_no)

    async def wait(self, trade: str) -> None:
        self.where.append((threading.get_ident(), asyncio.get_running_loop()))
        if trade in self.entered:
            self.entered[trade].set()
            await self.release_events[trade].wait()

    def release(self, trade: str, first: concurrent.futures.Future[Any]) -> None:
        """Let ``trade``'s hook go on and wait for the request that runs it (so a failing test ends cleanly)."""
        self.client.loop.call_soon_threadsafe(self.release_events[trade].set)
        concurrent.futures.wait([first], timeout=BOUND)

    def wait_entered(self, trade: str) -> None:
        assert self.entered[trade].wait(BOUND), f"the hook for {trade} never started"


def answer(future: concurrent.futures.Future[Any]) -> Any:
    try:
        return future.result(timeout=BOUND)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"no answer within {BOUND}s while an async hook waits: the pool's one thread is held")


@pytest.fixture
def client_for():
    clients: list[ASGIClient] = []

    def _mount(alipay: Any) -> ASGIClient:
        clients.append(ASGIClient(alipay.asgi(inner_asgi)))
        return clients[-1]

    yield _mount
    for client in clients:
        client.close()


def test_a_copy_is_answered_503_while_an_async_hook_awaits(make_alipay, client_for, keys):
    alipay = make_alipay(hook_threads=1)
    client = client_for(alipay)
    gates = Gates(client, "T1")
    alipay.on_paid(gates)
    body = signed_body(notify_fields("T1"), keys.alipay)
    first = client.submit("POST", NOTIFY, body)
    try:
        gates.wait_entered("T1")
        copy = answer(client.submit("POST", NOTIFY, body))
        assert (copy.status, copy.body) == (503, b"fail") and copy.headers["retry-after"]
        assert gates.ran == []
    finally:
        gates.release("T1", first)
    assert answer(first).body == b"success"
    assert gates.ran == ["T1"] and alipay.ledger.get("paid:" + notify_fields()["app_id"] + ":T1").status == DONE


@pytest.mark.parametrize("waits_in", ["on_paid", "order_amount"])
def test_another_notification_completes_while_an_async_step_awaits(make_alipay, client_for, keys, waits_in):
    alipay = make_alipay(hook_threads=1)
    client = client_for(alipay)
    gates = Gates(client, "T1")
    if waits_in == "on_paid":
        alipay.on_paid(gates)
    else:
        @alipay.order_amount
        async def amount(out_trade_no: str) -> Decimal:
            await gates.wait(out_trade_no)
            return Decimal("9.90")

        alipay.on_paid(lambda event: gates.ran.append(event.out_trade_no))
    first = client.submit("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay))
    try:
        gates.wait_entered("T1")
        other = answer(client.submit("POST", NOTIFY, signed_body(notify_fields("T2"), keys.alipay)))
        assert other.body == b"success" and gates.ran == ["T2"]
    finally:
        gates.release("T1", first)
    assert answer(first).body == b"success" and gates.ran == ["T2", "T1"]


def test_async_hook_and_order_amount_run_on_the_event_loop_thread(make_alipay, client_for, keys):
    alipay = make_alipay(hook_threads=1)
    client = client_for(alipay)
    gates = Gates(client)

    @alipay.order_amount
    async def amount(out_trade_no: str) -> Decimal:
        await gates.wait(out_trade_no)
        return Decimal("9.90")

    alipay.on_paid(gates)
    assert answer(client.submit("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay))).body == b"success"
    assert gates.where == [(client.thread.ident, client.loop)] * 2


def test_an_async_hook_can_await_aclient_with_one_pool_thread(make_alipay, client_for, keys):
    """``alipay.aclient`` runs its calls in the same pool: an async hook awaiting it must not wait for itself."""
    stub = OpenApiGateway(keys.app.public_key(), keys.alipay, notify_fields()["app_id"])
    try:
        stub.add_trade("T1", "TRADE_SUCCESS")
        alipay = make_alipay(hook_threads=1, config={"gateway": stub.url})
        statuses = []

        @alipay.on_paid
        async def paid(event: Any) -> None:
            # Bounded so that a version where the hook holds the only thread fails instead of hanging.
            query = await asyncio.wait_for(alipay.aclient.query(out_trade_no=event.out_trade_no), BOUND / 2)
            statuses.append(query.trade_status)

        client = client_for(alipay)
        response = answer(client.submit("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)))
        assert (response.status, response.body, statuses) == (200, b"success", ["TRADE_SUCCESS"])
    finally:
        stub.close()


def test_an_async_hook_that_raises_is_recorded_and_answered_500(make_alipay, client_for, keys):
    alipay = make_alipay(hook_threads=1)
    client = client_for(alipay)

    @alipay.on_paid
    async def paid(event: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the shop's database is down")

    response = answer(client.submit("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)))
    assert (response.status, response.body) == (500, b"fail")
    stored = alipay.ledger.get("paid:" + notify_fields()["app_id"] + ":T1")
    assert stored.status == FAILED and "the shop's database is down" in stored.error


def test_a_client_going_away_does_not_stop_its_async_hook(make_alipay, client_for, keys):
    alipay = make_alipay(hook_threads=1)
    client = client_for(alipay)
    gates = Gates(client, "T1")
    alipay.on_paid(gates)
    first = client.submit("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay))
    gates.wait_entered("T1")
    first.cancel()  # cancels the request's task on the loop, as a server may when the client disconnects
    gates.release("T1", first)
    key = "paid:" + notify_fields()["app_id"] + ":T1"
    done = threading.Event()
    for _ in range(BOUND * 100):
        if alipay.ledger.get(key).status == DONE:
            done.set()
            break
        done.wait(0.01)
    assert alipay.ledger.get(key).status == DONE and gates.ran == ["T1"]


def test_a_loop_shutting_down_mid_hook_releases_the_event_for_the_resend(make_alipay, keys):
    """``asyncio.run`` ending (a server stopping) cancels the hook: the failure is recorded and the event released,
    so the resend runs the hook at once instead of waiting ``lease_seconds`` for the claim to run out."""
    alipay = make_alipay(hook_threads=1)
    app = alipay.asgi(inner_asgi)
    entered = asyncio.Event()
    body = signed_body(notify_fields("T1"), keys.alipay)

    @alipay.on_paid
    async def paid(event: Any) -> None:
        entered.set()
        await asyncio.Event().wait()  # never set: only the loop's shutdown ends it

    async def post() -> None:
        scope = {"type": "http", "method": "POST", "path": NOTIFY, "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"shop.example"), (b"content-length", str(len(body)).encode()),
                             (b"content-type", b"application/x-www-form-urlencoded; charset=utf-8")]}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else await asyncio.Event().wait()  # type: ignore[func-returns-value]

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    async def server() -> None:
        asyncio.get_running_loop().create_task(post())
        await asyncio.wait_for(entered.wait(), BOUND)
        # Returning now: asyncio.run cancels the request and everything it started, as at a server's shutdown.

    asyncio.run(server())
    stored = alipay.ledger.get("paid:" + notify_fields()["app_id"] + ":T1")
    assert stored.status == FAILED and "cancelled" in stored.error, (stored.status, stored.error)
