"""Helpers shared by the benchmark scripts: keys, signed notifications, timing and tables.

Not a test fixture module: the scripts import it as a sibling (``python benchmarks/bench_core.py`` puts
this directory first on ``sys.path``).
"""

from __future__ import annotations

import base64
import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from alipay_middleware import Alipay, OpenApiConfig, sign_string

APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


@dataclass(frozen=True)
class Keys:
    app: RSA.RsaKey  # the shop's key pair: signs pay requests
    alipay: RSA.RsaKey  # stands in for Alipay's key pair: signs notifications

    @property
    def app_private_pem(self) -> str:
        return str(self.app.export_key().decode())

    @property
    def alipay_public_pem(self) -> str:
        return str(self.alipay.public_key().export_key().decode())


def fresh_keys(bits: int = 2048) -> Keys:
    return Keys(app=RSA.generate(bits), alipay=RSA.generate(bits))


def make_alipay(keys: Keys, ledger: str, **settings: Any) -> Alipay:
    config = OpenApiConfig(app_id=APP_ID, app_private_key=keys.app_private_pem,
                           alipay_public_key=keys.alipay_public_pem, seller_id=SELLER_ID)
    return Alipay(config, ledger=ledger, **settings)


def typical_notify_fields(n: int, amount: str = "88.88") -> dict[str, str]:
    """The 27 fields of a page-pay TRADE_SUCCESS notification, shaped like the UTF-8 test vector
    (CJK and ``+&=%`` in the subject, a JSON fund_bill_list, an encoded passback_params, one empty
    value); ``n`` makes notify_id, trade_no and out_trade_no unique."""
    return {
        "gmt_create": "2024-01-01 12:00:05",
        "charset": "utf-8",
        "seller_email": "seller@example.com",
        "subject": "测试订单 Test+1&a=b 100%",
        "buyer_id": "2088102000000001",
        "invoice_amount": amount,
        "notify_id": f"2024010100222120006{n:015d}",
        "fund_bill_list": f'[{{"amount":"{amount}","fundChannel":"ALIPAYACCOUNT"}}]',
        "notify_type": "trade_status_sync",
        "trade_status": "TRADE_SUCCESS",
        "receipt_amount": amount,
        "app_id": APP_ID,
        "buyer_pay_amount": amount,
        "sign_type": "RSA2",
        "seller_id": SELLER_ID,
        "gmt_payment": "2024-01-01 12:00:06",
        "notify_time": "2024-01-01 12:00:07",
        "passback_params": "order%3D1%26u%3D2",
        "version": "1.0",
        "out_trade_no": f"2024010100{n:06d}",
        "total_amount": amount,
        "trade_no": f"2024010122001400{n:012d}",
        "auth_app_id": APP_ID,
        "buyer_logon_id": "tes***@example.com",
        "point_amount": "0.00",
        "body": "",
    }


def sign_fields(fields: Mapping[str, str], key: RSA.RsaKey) -> str:
    """RSA2 signature under rule V1 (``sign`` and ``sign_type`` left out), as Alipay signs callbacks."""
    message = sign_string(fields, ("sign", "sign_type")).encode("utf-8")
    return base64.b64encode(pkcs1_15.new(key).sign(SHA256.new(message))).decode("ascii")


def signed_body(fields: Mapping[str, str], key: RSA.RsaKey) -> bytes:
    signed = {**fields, "sign": sign_fields(fields, key)}
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in signed.items()).encode("ascii")


# -- timing ------------------------------------------------------------------------------------------

def best_interleaved(stmts: Mapping[str, str | Callable[[], object]], number: int, repeat: int = 9,
                     namespace: dict[str, Any] | None = None) -> dict[str, float]:
    """Seconds per call of each statement: the best of ``repeat`` runs of ``number`` calls (timeit.repeat
    style), the statements timed in turn within each round so that all of them see the same machine
    state (other processes, CPU frequency). A string statement is compiled into timeit's own loop, with
    no extra call layer; ``namespace`` holds its names."""
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in stmts.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number))
    return {name: total / number for name, total in best.items()}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f} us"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        right = (str(cell).rjust(width) for cell, width in zip(rest, widths[1:], strict=True))
        return "  ".join([str(first).ljust(widths[0]), *right])

    print(f"\n{title}")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
