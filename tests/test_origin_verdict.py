"""The legacy origin check's verdict, through both fronts: what ``notify_verify`` may answer.

Only ``true`` passes, once surrounding ASCII whitespace is stripped (a trailing CRLF, as Alipay's own demos
forgive); ``false`` and ``invalid`` are Alipay disowning the message (400 ``origin_refused``); anything
else is not a verdict (503 ``origin_unclear``, so that Alipay asks again): an HTML page around ``true``,
``truex``, ``untrue``, and ``TRUE`` (Alipay answers in lowercase).
"""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from conftest import MD5_KEY, PARTNER, Recorder, legacy_body, legacy_fields, md5_sign

NOTIFY = "/alipay/notify"
RETURN = "/alipay/return"

VERDICTS = [
    ("true", 200, "ok"),
    (" true\r\n", 200, "ok"),
    ("true\n", 200, "ok"),
    ("\t true \x0b\x0c", 200, "ok"),
    ("false", 400, "origin_refused"),
    ("false\r\n", 400, "origin_refused"),
    ("invalid", 400, "origin_refused"),
    (" invalid\n", 400, "origin_refused"),
    ("<html>true</html>", 503, "origin_unclear"),
    ("truex", 503, "origin_unclear"),
    ("untrue", 503, "origin_unclear"),
    ("TRUE", 503, "origin_unclear"),
    ("True", 503, "origin_unclear"),
    ("true true", 503, "origin_unclear"),
    ("t rue", 503, "origin_unclear"),
    ("\u00a0true", 503, "origin_unclear"),  # a no-break space is not ASCII whitespace
    ("true\x00", 503, "origin_unclear"),
    ("", 503, "origin_unclear"),
    ("FALSE", 503, "origin_unclear"),
]


@pytest.mark.parametrize(("answer", "status", "reason"), VERDICTS, ids=[repr(a) for a, _, _ in VERDICTS])
def test_the_notify_is_judged_on_the_verdict(make_legacy, mount, gateway_stub, caplog, answer, status, reason):
    alipay = make_legacy(orders={"L1": "9.90"})
    paid = Recorder()
    alipay.on_paid(paid)
    fields = legacy_fields("L1", "9.90")
    gateway_stub.set(fields["notify_id"], answer)
    response = mount(alipay).request("POST", NOTIFY, legacy_body(fields))
    assert (response.status, response.body) == (status, b"success" if status == 200 else b"fail")
    assert len(gateway_stub.requests) == 1
    if status == 200:
        assert len(paid.calls) == 1
    else:
        assert f"reason={reason} status={status}" in caplog.text
        assert paid.calls == [] and alipay.ledger.get(f"paid:{PARTNER}:L1") is None


def _return_query(notify_id: str) -> str:
    fields = {
        "is_success": "T", "sign_type": "MD5", "out_trade_no": "L1", "subject": "Tea", "payment_type": "1",
        "trade_no": "2024010121001004000000000001", "trade_status": "TRADE_SUCCESS", "notify_id": notify_id,
        "notify_time": "2024-01-01 12:00:07", "notify_type": "trade_status_sync", "seller_id": PARTNER,
        "total_fee": "9.90",
    }
    fields["sign"] = md5_sign(fields, MD5_KEY)
    return "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items())


@pytest.mark.parametrize(("answer", "verified"), [(" true\r\n", True), ("true", True), ("untrue", False),
                                                  ("<html>true</html>", False), ("false\n", False)])
def test_the_return_is_judged_on_the_same_verdict(make_legacy, mount, gateway_stub, answer, verified):
    alipay = make_legacy(orders={"L1": "9.90"})
    paid = Recorder()
    alipay.on_paid(paid)
    client = mount(alipay)  # the inner page shows environ["alipay.return"] / scope["alipay.return"]
    gateway_stub.set("RV1", answer)
    response = client.request("GET", RETURN, query=_return_query("RV1"))
    assert response.status == 200
    assert len(gateway_stub.requests) == 1
    if verified:
        assert "paid=True" in response.body.decode() and len(paid.calls) == 1
    else:
        assert "return=None" in response.body.decode() and paid.calls == []
