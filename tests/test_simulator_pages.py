"""The simulator's pages and its bounded costs, through its WSGI app (werkzeug's test client): the checkout
of a paid or closed trade, the admin page (fault lines, the saved line, times, paging), the delivery log
and notify-id table that keep the newest only, and the SQLite state file (an old JSON one is imported).

The same pages in a real browser: ``test_browser.py``. Pending resends across a restart, which need a
real notify endpoint: ``test_simulator_delivery.py``. The costs themselves: ``benchmarks/bench_simulator.py``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus, urlencode

import pytest
from test_simulator import checkout, error_code, pay_params
from werkzeug.test import Client

from alipay_middleware.protocols.legacy import sign_request
from alipay_middleware.simulator import Faults, Simulator
from alipay_middleware.simulator.pages import PAGE_SIZE
from alipay_middleware.simulator.state import Store
from alipay_middleware.simulator.statefile import trade_to_dict
from alipay_middleware.wire.signing import Md5Signer
from conftest import MD5_KEY, PARTNER, Keys, make_sim

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+08:00"


@pytest.fixture
def sim(keys: Keys) -> Iterator[Simulator]:
    simulator = make_sim(keys)
    yield simulator
    simulator.close()


def legacy_order(client: Client, out_trade_no: str) -> str:
    """A legacy MD5 pay request (cheap to sign): the checkout location."""
    params = sign_request({"service": "create_direct_pay_by_user", "partner": PARTNER, "_input_charset": "utf-8",
                           "out_trade_no": out_trade_no, "subject": "Tea", "payment_type": "1",
                           "total_fee": "1.00", "seller_id": PARTNER,
                           "return_url": "http://127.0.0.1:9/shop/return"}, Md5Signer(MD5_KEY), "utf-8")
    response = client.get("/gateway.do?" + urlencode(params, quote_via=quote_plus))
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    return str(response.headers["Location"])


# -- the checkout of a trade that is paid or closed ------------------------------------------------------


def test_a_paid_trades_checkout_shows_its_state_and_refuses_a_second_pay(sim: Simulator, keys: Keys) -> None:
    client = Client(sim)
    location = checkout(client, pay_params(keys, "S1", "3.00", return_url="http://127.0.0.1:9/shop/return"))
    assert 'id="pay"' in client.get(location).get_data(as_text=True)
    assert client.post(location, data={"action": "pay"}).status_code == 303  # to the signed return_url
    page = client.get(location).get_data(as_text=True)
    assert 'id="pay"' not in page and 'id="cancel"' not in page and 'id="timeout"' not in page
    assert '<b id="trade-status">TRADE_SUCCESS</b>' in page and re.search(f"was paid on {TIME}", page)
    assert '<a id="back" href="http://127.0.0.1:9/">' in page
    for action in ("pay", "timeout", "cancel"):
        assert error_code(client.post(location, data={"action": action})) == "ACQ.TRADE_HAS_SUCCESS"
    trade = sim.trade("S1")
    assert trade is not None and trade.status == "TRADE_SUCCESS"  # "timeout" did not close a paid trade


def test_a_closed_trades_checkout_shows_its_state(sim: Simulator) -> None:
    client = Client(sim)
    location = legacy_order(client, "S2")
    client.post(location, data={"action": "timeout"})
    page = client.get(location).get_data(as_text=True)
    assert 'id="pay"' not in page and '<b id="trade-status">TRADE_CLOSED</b>' in page
    assert re.search(f"is closed since {TIME}", page)
    for action in ("pay", "cancel"):
        assert error_code(client.post(location, data={"action": action})) == "ACQ.TRADE_HAS_CLOSE"
    assert sim.trade("S2").status == "TRADE_CLOSED"  # type: ignore[union-attr]


# -- the admin page ------------------------------------------------------------------------------------


def test_admin_page_explains_each_fault_and_confirms_a_save(sim: Simulator) -> None:
    client = Client(sim)
    page = client.get("/").get_data(as_text=True)
    for name in Faults.names():
        line = re.search(f'<p class="help" id="fault-{name}-help">([^<]+)</p>', page)
        assert line is not None and len(line.group(1)) > 30, name
    assert "faults-saved" not in page
    response = client.post("/faults", data={"duplicate_notify": "on"})
    assert response.status_code == 303 and response.headers["Location"] == "/?saved=1"
    saved = client.get("/?saved=1").get_data(as_text=True)
    assert "Saved: duplicate notify is on; the others are off." in saved
    client.post("/faults", data={})
    assert "Saved: every fault is off." in client.get("/?saved=1").get_data(as_text=True)


def test_admin_page_times_carry_the_date_and_offset(sim: Simulator) -> None:
    client = Client(sim)
    legacy_order(client, "T1")
    orders = client.get("/").get_data(as_text=True).split('id="orders"')[1].split("</table>")[0]
    assert re.search(f"<td>{TIME}</td>", orders), orders


def test_admin_page_is_paged_newest_first_and_its_size_is_flat(sim: Simulator) -> None:
    client = Client(sim)
    for number in range(PAGE_SIZE + 10):
        legacy_order(client, f"G{number:03d}")
    first = client.get("/").get_data(as_text=True)
    shown = re.findall(r">(G\d{3})</a>", first)
    assert shown == [f"G{n:03d}" for n in range(PAGE_SIZE + 9, 9, -1)]  # the newest PAGE_SIZE, newest first
    assert 'id="orders-pages">Page 1 of 2' in first and 'href="/?page=2"' in first
    second = client.get("/?page=2").get_data(as_text=True)
    assert re.findall(r">(G\d{3})</a>", second) == [f"G{n:03d}" for n in range(9, -1, -1)]
    for number in range(PAGE_SIZE + 10, 3 * PAGE_SIZE):
        legacy_order(client, f"G{number:03d}")
    later = client.get("/").get_data(as_text=True)
    assert len(re.findall(r">(G\d{3})</a>", later)) == PAGE_SIZE
    assert abs(len(later) - len(first)) < 200  # the same rows' worth of HTML, whatever the number of orders
    assert client.get("/?page=9").status_code == 200  # past the end: an empty page
    for bad in ("0", "x", "-1", "²", "1" * 12):
        response = client.get(f"/?page={bad}")
        assert response.status_code == 400 and "page number" in response.get_data(as_text=True)


# -- bounded tables ------------------------------------------------------------------------------------


def test_the_delivery_log_keeps_the_newest(keys: Keys) -> None:
    from test_simulator_delivery import Answering, paid_with_notify_url

    sim = make_sim(keys, time_scale=0.00002, keep_deliveries=3)
    endpoint = Answering(b"fail")
    try:
        paid_with_notify_url(sim, keys, endpoint.url + "/notify")
        assert sim.wait_idle(20)
        assert [d.attempt for d in sim.deliveries()] == [6, 7, 8]
        page = Client(sim).get("/").get_data(as_text=True)
        assert "5 older attempts were dropped: the log keeps the last 3." in page
        assert "Notifications sent (8 attempts)" in page
    finally:
        sim.close()
        endpoint.server.close()
    with pytest.raises(ValueError, match="keep_deliveries"):
        make_sim(keys, keep_deliveries=0)


def test_notify_ids_are_forgotten_when_answered_expired_or_too_many(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", keep_notify_ids=3)
    answered = store.issue_notify_id(PARTNER, None)
    store.retire_notify_id(answered)
    assert not store.notify_id_valid(PARTNER, answered) and store.notify_id_count() == 0
    expired = store.issue_notify_id(PARTNER, 0.0)
    time.sleep(0.01)  # past its lifetime of 0 s
    assert not store.notify_id_valid(PARTNER, expired) and store.notify_id_count() == 0
    ids = [store.issue_notify_id(PARTNER, None) for _ in range(5)]
    assert [store.notify_id_valid(PARTNER, i) for i in ids] == [False, False, True, True, True]
    store.close()
    again = Store(tmp_path / "s.sqlite3", keep_notify_ids=3)  # the file forgot them too
    try:
        assert [again.notify_id_valid(PARTNER, i) for i in ids] == [False, False, True, True, True]
        assert again.notify_id_count() == 3
    finally:
        again.close()


# -- the state file ------------------------------------------------------------------------------------


def test_a_json_state_file_is_refused_with_the_fix_and_imported_once(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"state\.sqlite3"):
        make_sim(keys, state_path=tmp_path / "state.json")
    # What an older simulator wrote: one JSON document.
    sim = make_sim(keys)
    client = Client(sim)
    client.post(legacy_order(client, "J1"), data={"action": "pay"})
    trade = sim.trade("J1")
    sim.close()
    assert trade is not None
    (tmp_path / "state.json").write_text(json.dumps({
        "version": 1, "counter": 7, "trades": {f"{PARTNER}:J1": trade_to_dict(trade)},
        "notify_ids": {"abc": {"notify_id": "abc", "merchant_id": PARTNER, "expires": None, "alive": True}}}))
    for start in range(2):  # imported on the first start; the second reads the SQLite file alone
        sim = make_sim(keys, state_path=tmp_path / "state.sqlite3")
        try:
            assert sim.trades() == [trade]
            client = Client(sim)
            verify = client.get(f"/gateway.do?service=notify_verify&partner={PARTNER}&notify_id=abc").get_data()
            assert verify == b"true"
        finally:
            sim.close()
        if start == 0:
            (tmp_path / "state.json").unlink()
    sim = make_sim(keys, state_path=tmp_path / "state.sqlite3")
    try:
        assert checkout(Client(sim), pay_params(keys, "J2")).endswith("00000000000008")  # the counter went on
    finally:
        sim.close()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        make_sim(keys, state_path=tmp_path / "bad.sqlite3")
    assert not (tmp_path / "bad.sqlite3").exists()  # not left half-made: the next start tries again
