"""The notify path's answer table and hook contract, through both fronts (the behavioural suite)."""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from alipay_middleware.ledger import DONE, FAILED, RECEIVED, REJECTED, SQLiteLedger
from conftest import APP_ID, Recorder, encode_form, notify_fields, sign_fields, signed_body

NOTIFY = "/alipay/notify"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """This behavioural suite runs against both ledgers (PostgreSQL: see conftest's postgres_url)."""
    return str(request.param)


def assert_success(response: Any) -> None:
    assert response.status == 200
    assert response.body == b"success"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["content-length"] == "7"


def assert_fail(response: Any, status: int) -> None:
    assert response.status == status, response.body
    assert response.body == b"fail"


@pytest.fixture
def shop(make_alipay, mount, keys):
    """An Alipay with one order T1 of 9.90, every hook recorded, mounted on the current front."""

    class Shop:
        pass

    s = Shop()
    s.alipay = make_alipay(orders={"T1": "9.90", "T2": "20.00"})
    s.paid, s.closed, s.refunded = Recorder(), Recorder(), Recorder()
    s.alipay.on_paid(s.paid)
    s.alipay.on_closed(s.closed)
    s.alipay.on_refunded(s.refunded)
    s.client = mount(s.alipay)
    s.keys = keys
    s.post = lambda body, **kw: s.client.request("POST", NOTIFY, body, **kw)
    return s


# -- the happy path and the resends --------------------------------------------------------------------

def test_paid_notification_calls_on_paid_once_and_answers_success(shop):
    fields = notify_fields("T1", "9.90")
    response = shop.post(signed_body(fields, shop.keys.alipay))
    assert_success(response)
    assert len(shop.paid.calls) == 1
    event = shop.paid.calls[0]
    assert event.kind == "paid" and event.out_trade_no == "T1" and event.total_amount == Decimal("9.90")
    assert event.gmt_payment is not None and event.gmt_payment.utcoffset().total_seconds() == 8 * 3600
    assert event.raw["notify_id"] == fields["notify_id"] and "sign" in event.raw
    assert event.attempt == 1
    stored = shop.alipay.ledger.get(event.key)
    assert stored.status == DONE and stored.raw_body.startswith(b"notify_time=")
    assert (event.buyer_id, event.buyer_open_id) == (fields["buyer_id"], None)


def test_an_open_id_buyer_is_named_on_the_event(shop):
    """Apps created since 2023 name the buyer by buyer_open_id, with no buyer_id."""
    fields = {k: v for k, v in notify_fields("T1", "9.90").items() if k != "buyer_id"}
    fields["buyer_open_id"] = "074a1CcTG1LelxKe4xQC0zgNdId0nxi95b5lsNpazWYoCo5"
    assert_success(shop.post(signed_body(fields, shop.keys.alipay)))
    event = shop.paid.calls[0]
    assert (event.buyer_id, event.buyer_open_id) == (None, fields["buyer_open_id"])


def test_resend_is_acknowledged_without_calling_the_hook_again(shop):
    body = signed_body(notify_fields("T1"), shop.keys.alipay)
    for _ in range(3):
        assert_success(shop.post(body))
    assert len(shop.paid.calls) == 1


def test_finished_after_success_does_not_pay_twice(shop):
    assert_success(shop.post(signed_body(notify_fields("T1", trade_status="TRADE_SUCCESS"), shop.keys.alipay)))
    assert_success(shop.post(signed_body(notify_fields("T1", trade_status="TRADE_FINISHED"), shop.keys.alipay)))
    assert len(shop.paid.calls) == 1


def test_refund_is_not_a_payment_and_fires_once_per_out_biz_no(shop):
    assert_success(shop.post(signed_body(notify_fields("T1"), shop.keys.alipay)))
    partial = notify_fields("T1", refund_fee="1.00", gmt_refund="2024-01-02 10:00:00.123", out_biz_no="R1")
    assert_success(shop.post(signed_body(partial, shop.keys.alipay)))
    assert_success(shop.post(signed_body(partial, shop.keys.alipay)))
    full = notify_fields("T1", trade_status="TRADE_CLOSED", refund_fee="9.90",
                         gmt_refund="2024-01-03 10:00:00", out_biz_no="R2")
    assert_success(shop.post(signed_body(full, shop.keys.alipay)))
    assert len(shop.paid.calls) == 1
    assert [e.out_biz_no for e in shop.refunded.calls] == ["R1", "R2"]
    assert shop.refunded.calls[0].refund_fee == Decimal("1.00")
    assert shop.refunded.calls[0].gmt_refund.microsecond == 123000
    assert shop.closed.calls == []  # a full refund closes the trade, but it is a refund event


def test_closed_unpaid_trade_fires_on_closed(shop):
    assert_success(shop.post(signed_body(notify_fields("T2", "20.00", "TRADE_CLOSED"), shop.keys.alipay)))
    assert [e.out_trade_no for e in shop.closed.calls] == ["T2"]


def test_stale_closed_after_paid_does_not_unpay(shop):
    assert_success(shop.post(signed_body(notify_fields("T1"), shop.keys.alipay)))
    closed = notify_fields("T1", trade_status="TRADE_CLOSED")
    assert_success(shop.post(signed_body(closed, shop.keys.alipay)))
    assert shop.closed.calls == []
    stored = shop.alipay.ledger.get(f"closed:{APP_ID}:T1")
    assert stored.status == DONE and "already paid" in stored.reason


def test_verified_event_without_a_hook_is_recorded_and_acknowledged(shop):
    fields = notify_fields("T1", trade_status="WAIT_BUYER_PAY")
    assert_success(shop.post(signed_body(fields, shop.keys.alipay)))
    assert shop.paid.calls == [] and shop.closed.calls == []
    assert shop.alipay.ledger.get(f"other:{APP_ID}:T1:WAIT_BUYER_PAY").status == DONE


def test_v2_signed_message_is_accepted(shop):
    assert_success(shop.post(signed_body(notify_fields("T1"), shop.keys.alipay, rule="V2")))
    assert len(shop.paid.calls) == 1


# -- rejections before anything is written --------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD", "DELETE"])
def test_not_post_is_405_with_allow(shop, method):
    response = shop.client.request(method, NOTIFY)
    assert response.status == 405 and response.headers["allow"] == "POST"
    if method != "HEAD":
        assert response.body == b"fail"


def test_body_over_max_body_is_413(shop):
    assert_fail(shop.post(b"a=" + b"x" * (64 * 1024)), 413)


def test_body_without_length_is_limited_while_streamed(make_alipay, keys):
    # ASGI delivers a chunked body piece by piece; the WSGI equivalent (wsgi.input_terminated) is in
    # test_frameworks.test_chunked_notify_over_max_body_is_413_on_both_fronts.
    from conftest import ASGIClient, inner_asgi

    client = ASGIClient(make_alipay().asgi(inner_asgi))
    try:
        big = [b"a=" + b"x" * 40000, b"y" * 40000]
        assert_fail(client.request("POST", NOTIFY, chunks=big), 413)
    finally:
        client.close()


def test_bad_content_length_is_400(shop):
    assert_fail(shop.post(b"a=b", headers={"Content-Length": "abc"}), 400)


def signed_then(shop, mutate):
    fields = notify_fields("T1")
    fields["sign"] = sign_fields(fields, shop.keys.alipay)
    mutate(fields)
    return encode_form(fields)


BAD_BODIES = {
    "empty": b"",
    "garbage": b"\x00\xff\xfe not a form",
    "no_equals": b"abc&def",
    "bad_percent": b"a=%zz&sign=x",
    "no_sign": None,
    "bad_signature": None,
    "bad_base64_sign": None,
    "truncated_sign": None,
    "sha1_under_rsa2": None,
    "unknown_charset": None,
    "duplicate_keys": None,
    "gbk_bytes_declared_utf8": None,
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_unacceptable_bodies_are_400_and_write_nothing(shop, case):
    alipay_key = shop.keys.alipay
    if case == "no_sign":
        body = encode_form(notify_fields("T1"))
    elif case == "bad_signature":
        body = signed_then(shop, lambda f: f.update(sign=sign_fields({"x": "y"}, alipay_key)))
    elif case == "bad_base64_sign":
        body = signed_then(shop, lambda f: f.update(sign="!!!not-base64!!!"))
    elif case == "truncated_sign":
        body = signed_then(shop, lambda f: f.update(sign=f["sign"][:-8]))
    elif case == "sha1_under_rsa2":
        fields = notify_fields("T1", sign_type="RSA2")
        body = signed_body(fields, alipay_key, sign_type="RSA")
    elif case == "unknown_charset":
        body = signed_body(notify_fields("T1", charset="big5"), alipay_key)
    elif case == "duplicate_keys":
        body = signed_body(notify_fields("T1"), alipay_key) + b"&total_amount=0.01"
    elif case == "gbk_bytes_declared_utf8":
        body = signed_body(notify_fields("T1", subject="中文"), alipay_key, charset="gbk")
    else:
        body = BAD_BODIES[case]
    response = shop.post(body)
    assert_fail(response, 400)
    assert shop.paid.calls == []
    assert shop.alipay.ledger.events() == []


def test_declared_rsa_message_under_rsa2_is_refused_even_if_sha1_verifies(shop):
    body = signed_body(notify_fields("T1", sign_type="RSA"), shop.keys.alipay, sign_type="RSA")
    assert_fail(shop.post(body), 400)
    assert shop.paid.calls == []


# -- rejections after a valid signature --------------------------------------------------------------------

@pytest.mark.parametrize("override", [{"app_id": "2021999999999999"}, {"seller_id": "2088999999999999"},
                                      {"app_id": None}])
def test_other_app_or_seller_is_400_and_recorded_as_rejected(shop, override):
    fields = notify_fields("T1", **override)
    assert_fail(shop.post(signed_body(fields, shop.keys.alipay)), 400)
    assert shop.paid.calls == []
    [stored] = shop.alipay.ledger.events()
    assert stored.status == REJECTED and stored.reason in ("app_id_mismatch", "seller_id_mismatch")
    # a foreign message never takes our dedupe key: the real payment still goes through
    assert_success(shop.post(signed_body(notify_fields("T1"), shop.keys.alipay)))
    assert len(shop.paid.calls) == 1


@pytest.mark.parametrize("out_trade_no,amount,reason", [("NOPE", "9.90", "unknown_order"),
                                                        ("T1", "0.01", "amount_mismatch"),
                                                        ("T1", "99.00", "amount_mismatch")])
def test_unknown_order_or_wrong_amount_is_409_recorded_and_logged(shop, caplog, out_trade_no, amount, reason):
    fields = notify_fields(out_trade_no, amount)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        assert_fail(shop.post(signed_body(fields, shop.keys.alipay)), 409)
    assert shop.paid.calls == []
    stored = shop.alipay.ledger.get(f"paid:{APP_ID}:{out_trade_no}")
    assert stored.status == REJECTED and stored.reason == reason
    assert any(f"reason={reason}" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_amount_equal_with_other_scale_is_accepted(make_alipay, mount, keys):
    alipay = make_alipay(orders={"T9": "9.9"})
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    assert_success(client.request("POST", NOTIFY, signed_body(notify_fields("T9", "9.90"), keys.alipay)))
    assert len(calls.calls) == 1


def test_rejected_order_is_checked_again_on_resend(make_alipay, mount, keys):
    orders: dict[str, Decimal] = {}
    alipay = make_alipay()
    alipay.order_amount(orders.get)
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    body = signed_body(notify_fields("LATE", "5.00"), keys.alipay)
    assert_fail(client.request("POST", NOTIFY, body), 409)
    orders["LATE"] = Decimal("5.00")  # e.g. the order's own transaction committed late
    assert_success(client.request("POST", NOTIFY, body))
    assert len(calls.calls) == 1


# -- failures and retries ------------------------------------------------------------------------------------

def test_hook_failure_is_500_recorded_then_retried_until_success(shop):
    shop.paid.fail_next = 2
    body = signed_body(notify_fields("T1"), shop.keys.alipay)
    assert_fail(shop.post(body), 500)
    stored = shop.alipay.ledger.events()[0]
    assert stored.status == FAILED and "hook failed on purpose" in stored.error and "Traceback" in stored.error
    assert_fail(shop.post(body), 500)
    assert_success(shop.post(body))
    assert_success(shop.post(body))
    assert len(shop.paid.calls) == 1 and shop.paid.calls[0].attempt == 3
    assert shop.alipay.ledger.events()[0].status == DONE


def test_order_amount_raising_is_500_and_retried(make_alipay, mount, keys):
    alipay = make_alipay()
    state = {"fail": True}

    def amount(out_trade_no):
        if state["fail"]:
            raise ConnectionError("orders database down")
        return Decimal("9.90")

    alipay.order_amount(amount)
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    body = signed_body(notify_fields("T1"), keys.alipay)
    assert_fail(client.request("POST", NOTIFY, body), 500)
    assert alipay.ledger.events()[0].error.count("orders database down") >= 1
    state["fail"] = False
    assert_success(client.request("POST", NOTIFY, body))
    assert len(calls.calls) == 1


def test_order_amount_returning_float_is_a_clear_failure(make_alipay, mount, keys):
    alipay = make_alipay()
    alipay.order_amount(lambda out_trade_no: 9.90)
    client = mount(alipay)
    assert_fail(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)), 500)
    assert "must return a Decimal or None, not float" in alipay.ledger.events()[0].error


def test_copy_arriving_while_hook_runs_gets_503_retry_after(make_alipay, mount, keys):
    alipay = make_alipay(orders={"T1": "9.90"})
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow_paid(event):
        calls.append(event)
        entered.set()
        release.wait(30)

    alipay.on_paid(slow_paid)
    client = mount(alipay)
    body = signed_body(notify_fields("T1"), keys.alipay)
    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(client.request("POST", NOTIFY, body)))
    worker.start()
    assert entered.wait(30)
    copy = client.request("POST", NOTIFY, body)
    assert_fail(copy, 503)
    assert int(copy.headers["retry-after"]) >= 1
    # another event of the same trade also waits: hooks of one trade never overlap
    refund = signed_body(notify_fields("T1", refund_fee="1.00", out_biz_no="R1"), keys.alipay)
    assert_fail(client.request("POST", NOTIFY, refund), 503)
    release.set()
    worker.join(30)
    assert_success(first[0])
    assert_success(client.request("POST", NOTIFY, body))
    assert len(calls) == 1


def test_abandoned_lease_is_retaken_after_it_expires(make_alipay, mount, keys, tmp_path):
    path = tmp_path / "lease.sqlite3"
    alipay = make_alipay(ledger=f"sqlite:///{path}", lease_seconds=1)
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    fields = notify_fields("T1")
    body = signed_body(fields, keys.alipay)
    # A worker that claimed the event and died: its claim is in the ledger, nothing else happened.
    event = alipay.protocol.event(alipay.protocol.parse(body, None)[0])
    assert alipay.ledger.claim(event, body, "utf-8", "dead-worker", 1.0).state == "claimed"
    assert_fail(client.request("POST", NOTIFY, body), 503)
    time.sleep(1.2)
    assert_success(client.request("POST", NOTIFY, body))
    assert len(calls.calls) == 1 and calls.calls[0].attempt == 2


def test_ledger_unavailable_is_503_and_nothing_is_acknowledged(make_alipay, mount, keys):
    class BrokenLedger(SQLiteLedger):
        def claim(self, *args, **kwargs):
            from alipay_middleware import LedgerUnavailable
            raise LedgerUnavailable("disk on fire")

    alipay = make_alipay(ledger=BrokenLedger(":memory:"))
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    assert_fail(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)), 503)
    assert calls.calls == []


def test_locked_sqlite_ledger_is_503_not_500(make_alipay, mount, keys, tmp_path):
    import sqlite3

    path = tmp_path / "locked.sqlite3"
    alipay = make_alipay(ledger=SQLiteLedger(str(path), busy_timeout=0.2))
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert_fail(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)), 503)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert calls.calls == []
    assert_success(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)))
    assert len(calls.calls) == 1


def test_event_is_recorded_before_the_hook_runs(make_alipay, mount, keys):
    alipay = make_alipay()
    seen = []
    alipay.on_paid(lambda event: seen.append(alipay.ledger.get(event.key)))
    client = mount(alipay)
    assert_success(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)))
    assert seen[0].status == RECEIVED and seen[0].raw_body


# -- async hooks on both fronts --------------------------------------------------------------------------------

def test_async_hooks_and_async_order_amount_work_on_both_fronts(make_alipay, mount, keys):
    alipay = make_alipay()
    calls = []

    @alipay.order_amount
    async def amount(out_trade_no):
        return Decimal("9.90")

    @alipay.on_paid
    async def paid(event):
        calls.append(event.out_trade_no)

    client = mount(alipay)
    assert_success(client.request("POST", NOTIFY, signed_body(notify_fields("A1"), keys.alipay)))
    assert calls == ["A1"]


def test_sync_hook_on_asgi_runs_off_the_event_loop(make_alipay, keys):
    import asyncio

    from conftest import ASGIClient, inner_asgi

    alipay = make_alipay()
    where = []

    @alipay.on_paid
    def paid(event):
        try:
            asyncio.get_running_loop()
            where.append("loop")
        except RuntimeError:
            where.append(threading.current_thread().name)

    client = ASGIClient(alipay.asgi(inner_asgi))
    try:
        assert_success(client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay)))
    finally:
        client.close()
    assert where[0].startswith("alipay")


# -- charsets and awkward values ---------------------------------------------------------------------------------

AWKWARD = ["a+b", "100%", "x&y=z", "a=b", "中文订单", "emoji 🍵", " spaced  out ", "%E4%B8%AD", "q?r#s"]


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_values_round_trip_exactly(make_alipay, mount, keys, value):
    alipay = make_alipay()
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    fields = notify_fields("T1", subject=value, passback_params=value, body=value)
    assert_success(client.request("POST", NOTIFY, signed_body(fields, keys.alipay)))
    assert calls.calls[0].raw["subject"] == value and calls.calls[0].raw["passback_params"] == value


@pytest.mark.parametrize("declared", ["gbk", "GBK", "gb2312"])
def test_gbk_notification_verifies_on_its_own_bytes(make_alipay, mount, keys, declared):
    alipay = make_alipay()
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    fields = notify_fields("T1", charset=declared, subject="测试订单 绿茶", body="中文描述")
    body = signed_body(fields, keys.alipay, charset="gbk")
    response = client.request("POST", NOTIFY, body, content_type="application/x-www-form-urlencoded")
    assert_success(response)
    assert calls.calls[0].raw["subject"] == "测试订单 绿茶"
    assert alipay.ledger.get(calls.calls[0].key).raw_body == body


def test_gbk_declared_only_in_content_type(make_alipay, mount, keys):
    alipay = make_alipay()
    calls = Recorder()
    alipay.on_paid(calls)
    client = mount(alipay)
    fields = notify_fields("T1", charset=None, subject="绿茶")
    body = signed_body(fields, keys.alipay, charset="gbk")
    assert_success(client.request("POST", NOTIFY, body, content_type="application/x-www-form-urlencoded; charset=GBK"))
    assert calls.calls[0].raw["subject"] == "绿茶"


def test_malformed_real_world_content_type_is_tolerated(shop):
    body = signed_body(notify_fields("T1"), shop.keys.alipay)
    ct = "application/x-www-form-urlencoded; text/html; charset=UTF-8"
    assert_success(shop.post(body, content_type=ct))


# -- tamper: every signed field, in turn --------------------------------------------------------------------------

def test_changing_any_signed_field_is_rejected(shop):
    fields = notify_fields("T1", passback_params="p%3D1", body="desc")
    signed = dict(fields, sign=sign_fields(fields, shop.keys.alipay))
    for name in fields:
        if name in ("sign_type",):
            continue
        tampered = dict(signed)
        tampered[name] = fields[name] + "0" if fields[name] else "x"
        assert_fail(shop.post(encode_form(tampered)), 400)
        dropped = {k: v for k, v in signed.items() if k != name}
        assert_fail(shop.post(encode_form(dropped)), 400)
    added = dict(signed, extra_field="surprise")
    assert_fail(shop.post(encode_form(added)), 400)
    assert shop.paid.calls == []
    assert_success(shop.post(encode_form(signed)))


def test_a_blocked_sync_hook_does_not_block_the_event_loop(make_alipay, keys):
    from conftest import ASGIClient, inner_asgi

    alipay = make_alipay()
    entered, release = threading.Event(), threading.Event()

    @alipay.on_paid
    def slow(event):
        entered.set()
        release.wait(30)

    client = ASGIClient(alipay.asgi(inner_asgi))
    try:
        answers: list[Any] = []
        worker = threading.Thread(target=lambda: answers.append(
            client.request("POST", NOTIFY, signed_body(notify_fields("T1"), keys.alipay))))
        worker.start()
        assert entered.wait(30)
        # The hook is still blocked, yet the same event loop serves the shop's pages.
        page = client.request("GET", "/shop")
        assert page.status == 200 and page.body.startswith(b"inner path=/shop")
        release.set()
        worker.join(30)
        assert_success(answers[0])
    finally:
        release.set()
        client.close()


def test_an_internal_bug_is_logged_and_answered_500_without_a_traceback(shop, monkeypatch, caplog):
    def broken(fields):
        raise KeyError("a bug in the core")

    monkeypatch.setattr(shop.alipay.protocol, "event", broken)
    with caplog.at_level(logging.ERROR, logger="alipay_middleware"):
        response = shop.post(signed_body(notify_fields("T1"), shop.keys.alipay))
    assert_fail(response, 500)
    assert any("reason=internal_error" in r.getMessage() and r.exc_info for r in caplog.records)
    assert shop.paid.calls == []
