"""The legacy service's costs (information; no goals were set for it).

    python benchmarks/bench_legacy.py [--n 500]

1. a signed ``create_direct_pay_by_user`` URL (MD5) and the same with SHA1withRSA (1024-bit);
2. parse + MD5 verify of a 22-field notification;
3. full notify requests through the WSGI front with the ``notify_verify`` origin check answered by a
   loopback HTTP server (the real gateway is a network round trip away: add your latency to mapi);
   first deliveries and resends, SQLite ledger, one hook call per trade checked.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from _shared import best_interleaved, print_table, us
from Crypto.PublicKey import RSA
from werkzeug.test import EnvironBuilder

from alipay_middleware import Alipay, LegacyConfig, sign_string

PARTNER = "2088000000000002"
MD5_KEY = "k3xq9z0m1n2b3v4c5x6z7l8k9j0h1g2f"
SHOP = "https://shop.example"


def notify_body(n: int) -> bytes:
    fields = {
        "notify_time": "2024-01-01 12:00:07", "notify_type": "trade_status_sync", "notify_id": f"{n:034x}",
        "sign_type": "MD5", "out_trade_no": f"L{n}", "subject": "龙井茶 一盒", "payment_type": "1",
        "trade_no": f"2024010121001004{n:012d}", "trade_status": "TRADE_SUCCESS",
        "gmt_create": "2024-01-01 12:00:05", "gmt_payment": "2024-01-01 12:00:06",
        "seller_email": "shop@example.com", "seller_id": PARTNER, "buyer_email": "buyer@example.com",
        "buyer_id": "2088102000000009", "price": "88.88", "total_fee": "88.88", "quantity": "1",
        "discount": "0.00", "is_total_fee_adjust": "N", "use_coupon": "N", "body": "特级",
    }
    fields["sign"] = hashlib.md5(sign_string(fields, ("sign", "sign_type")).encode() + MD5_KEY.encode()).hexdigest()
    return "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items()).encode()


class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: Any) -> None:
        pass


def bench_requests(alipay_md5: Alipay) -> list[list[str]]:
    helper = alipay_md5.helper(SHOP)
    rsa_key = RSA.generate(1024)
    with tempfile.TemporaryDirectory() as tmp:
        alipay_rsa = Alipay(LegacyConfig(partner=PARTNER, sign_type="RSA", private_key=rsa_key.export_key().decode()),
                            ledger=f"sqlite:///{Path(tmp) / 'l.sqlite3'}")
        rsa_helper = alipay_rsa.helper(SHOP)
        t = best_interleaved({
            "md5": lambda: helper.direct_pay_url(out_trade_no="20240101000001", total_fee=Decimal("9.90"),
                                                 subject="Tea"),
            "rsa": lambda: rsa_helper.direct_pay_url(out_trade_no="20240101000001", total_fee=Decimal("9.90"),
                                                     subject="Tea"),
        }, number=200, repeat=9)
        alipay_rsa.close()
    return [["direct_pay_url, MD5", us(t["md5"])], ["direct_pay_url, RSA (SHA1, 1024-bit)", us(t["rsa"])]]


def bench_verify(alipay: Alipay) -> list[list[str]]:
    protocol = alipay.protocol
    raw = notify_body(1)
    content_type = "application/x-www-form-urlencoded; charset=utf-8"
    fields, charset = protocol.parse(raw, content_type)
    protocol.verify_notify(fields, charset)

    def both() -> None:
        parsed, cs = protocol.parse(raw, content_type)
        protocol.verify_notify(parsed, cs)

    t = best_interleaved({"both": both, "verify": lambda: protocol.verify_notify(fields, charset)}, 2000, 9)
    return [[f"parse + MD5 verify, {len(fields)} fields, {len(raw)} B", us(t["both"])],
            ["  of which verify_notify", us(t["verify"])]]


def bench_flow(alipay: Alipay, n: int) -> list[list[str]]:
    calls: dict[str, int] = {}
    lock = threading.Lock()

    @alipay.on_paid
    def paid(event: Any) -> None:
        with lock:
            calls[event.out_trade_no] = calls.get(event.out_trade_no, 0) + 1

    app = alipay.wsgi(lambda environ, start_response: [])
    environs = []
    for i in range(n):
        builder = EnvironBuilder(path="/alipay/notify", method="POST", data=notify_body(1000 + i),
                                 content_type="application/x-www-form-urlencoded; charset=utf-8")
        environs.append(builder.get_environ())
        builder.close()
    statuses: list[str] = []

    def start_response(status: str, headers: Any) -> None:
        statuses.append(status)

    rows = []
    for label in ("first deliveries", "resends"):
        statuses.clear()
        start = time.perf_counter()
        for environ in environs:
            environ["wsgi.input"].seek(0)
            b"".join(app(environ, start_response))
        elapsed = time.perf_counter() - start
        ok = sum(status.startswith("200") for status in statuses)
        rows.append([f"WSGI notify with origin check, {label}", f"{n / elapsed:,.0f}/s", f"{ok}/{n} success"])
    once = sum(1 for count in calls.values() if count == 1)
    rows.append(["hook calls per trade", f"{once}/{n} trades called exactly once",
                 f"max {max(calls.values()) if calls else 0}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gateway = f"http://127.0.0.1:{server.server_address[1]}/gateway.do"
    print(f"Python {sys.version.split()[0]}; notify_verify answered by a loopback HTTP server")
    with tempfile.TemporaryDirectory() as tmp:
        alipay = Alipay(LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=gateway),
                        ledger=f"sqlite:///{Path(tmp) / 'ledger.sqlite3'}")
        alipay.order_amount(lambda out_trade_no: Decimal("88.88"))
        try:
            print_table("1. Signed pay URLs", ["operation", "per call"], bench_requests(alipay))
            print_table("2. Notification parse + verify", ["operation", "per call"], bench_verify(alipay))
            print_table(f"3. Full notify requests (n={args.n}, one thread)", ["what", "measured", "check"],
                        bench_flow(alipay, args.n))
        finally:
            alipay.close()
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
