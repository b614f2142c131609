"""The operator's command line, run for real (``python -m alipay_middleware``) on ledgers filled by real
notifications through the middleware, over both ledger backends; and the ledger methods it needs.

PostgreSQL tests work in their own tables (conftest's ``new_ledger``, or ``spare_table`` here), named to
the CLI with ``?table=`` in the ledger URL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from alipay_middleware import Alipay
from alipay_middleware.events import PaymentEvent
from alipay_middleware.ledger import (
    CLAIMED,
    DONE,
    FAILED,
    PRUNE_KEEP,
    RECEIVED,
    REJECTED,
    Claim,
    Ledger,
    SQLiteLedger,
    StoredEvent,
    open_ledger,
    split_table_params,
)
from conftest import (
    APP_ID,
    POSTGRES,
    SELLER_ID,
    Recorder,
    WSGIClient,
    inner_wsgi,
    notify_fields,
    on_a_terminal,
    signed_body,
)

ROOT = Path(__file__).resolve().parents[1]
NOTIFY = "/alipay/notify"
ORDERS = {"T1": "9.90", "T2": "20.00", "T3": "5.00", "T4": "7.00"}


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """Every test here that touches a ledger runs against both (PostgreSQL: see conftest's postgres_url)."""
    return str(request.param)


# -- helpers ------------------------------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m alipay_middleware ARGS`` in a fresh process (ALIPAY_LEDGER only when ``env`` sets it)."""
    environment = {k: v for k, v in os.environ.items() if k != "ALIPAY_LEDGER"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment["PYTHONIOENCODING"] = "utf-8"
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "alipay_middleware", *args], capture_output=True, text=True,
                          encoding="utf-8", cwd=cwd, env=environment, timeout=120)


def pg_url(table: str) -> str:
    """The test server's URL, naming ``table`` as the CLI and ``Alipay(ledger=...)`` accept it."""
    return f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}table={table}"


def url_of(ledger: Ledger) -> str:
    """The ledger URL the CLI (and ``Alipay(ledger=...)``) would be given for this ledger."""
    if isinstance(ledger, SQLiteLedger):
        return f"sqlite:///{ledger.path}"
    return pg_url(ledger.table)  # type: ignore[attr-defined]


def execute(ledger: Ledger, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Run SQL on the ledger's table behind its back (``{t}`` is the table, ``?`` the placeholders)."""
    if isinstance(ledger, SQLiteLedger):
        with closing(sqlite3.connect(ledger.path)) as db, db:
            db.execute(statement.format(t=ledger.table), params)
        return
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(statement.format(t=f'"{ledger.table}"').replace("?", "%s"), params)  # type: ignore[attr-defined]


def moment(ledger: Ledger, when: datetime) -> Any:
    """A time as the ledger's table stores it: epoch seconds in SQLite, timestamptz in PostgreSQL."""
    return when.timestamp() if isinstance(ledger, SQLiteLedger) else when


def days_ago(days: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)


def lines(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.strip()]


def gbk_raw_body(keys: Any, out_trade_no: str) -> tuple[bytes, str]:
    """A GBK notification whose subject travels as raw GBK bytes, not percent-escaped (both are accepted)."""
    fields = notify_fields(out_trade_no, ORDERS[out_trade_no], charset="gbk", subject="绿茶 测试")
    body = signed_body(fields, keys.alipay, charset="gbk")
    escaped = quote_plus("绿茶 测试", encoding="gbk").encode()
    assert escaped in body
    return body.replace(escaped, "绿茶+测试".encode("gbk")), f"paid:{APP_ID}:{out_trade_no}"


class Shop:
    """An Alipay on this test's ledger, its hooks recorded, mounted on the WSGI front."""

    def __init__(self, alipay: Alipay, keys: Any) -> None:
        self.alipay, self.keys = alipay, keys
        self.ledger: Ledger = alipay.ledger
        self.paid, self.refunded = Recorder(), Recorder()
        alipay.on_paid(self.paid)
        alipay.on_refunded(self.refunded)
        self.client = WSGIClient(alipay.wsgi(inner_wsgi))

    def post(self, body: bytes) -> int:
        response = self.client.request("POST", NOTIFY, body, content_type="application/x-www-form-urlencoded")
        return response.status

    def pay(self, out_trade_no: str, *, fail: bool = False, **overrides: str) -> tuple[bytes, str]:
        """One paid notification through the middleware; ``fail``: the hook raises this time."""
        body = signed_body(notify_fields(out_trade_no, ORDERS.get(out_trade_no, "1.00"), **overrides),
                           self.keys.alipay)
        self.paid.fail_next = 1 if fail else 0
        status = self.post(body)
        assert status == (500 if fail else 200)
        return body, f"paid:{APP_ID}:{out_trade_no}"

    @property
    def url(self) -> str:
        return url_of(self.ledger)


@pytest.fixture
def shop(make_alipay: Any, keys: Any) -> Shop:
    return Shop(make_alipay(orders=ORDERS), keys)


@pytest.fixture
def spare_table(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL table name for this test, dropped afterwards."""
    import psycopg

    name = f"alipay_cli_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


# -- list and show ------------------------------------------------------------------------------------------

def test_list_prints_events_newest_first_and_filters(shop: Shop):
    _, done = shop.pay("T1")
    _, failed = shop.pay("T2", fail=True)
    assert shop.post(signed_body(notify_fields("NOPE", "1.00"), shop.keys.alipay)) == 409

    result = run_cli("list", "--ledger", shop.url)
    assert result.returncode == 0, result.stderr
    header, *rows = lines(result.stdout)
    assert header == ["KEY", "KIND", "STATUS", "OUT_TRADE_NO", "ATTEMPTS", "UPDATED_AT", "REASON"]
    assert [row[:5] for row in rows] == [
        [f"paid:{APP_ID}:NOPE", "paid", REJECTED, "NOPE", "1"],
        [failed, "paid", FAILED, "T2", "1"],
        [done, "paid", DONE, "T1", "1"],
    ]
    assert rows[0][6] == "unknown_order" and rows[0][5].endswith("Z")
    assert rows[1][6:] == ["RuntimeError:", "hook", "failed", "on", "purpose"]  # a failed event: its exception

    assert [row[0] for row in lines(run_cli("list", "--ledger", shop.url, "--status", "failed").stdout)[1:]] == [failed]
    assert [row[0] for row in lines(run_cli("list", "--ledger", shop.url, "--order", "T1").stdout)[1:]] == [done]
    assert len(lines(run_cli("list", "--ledger", shop.url, "--limit", "1").stdout)) == 2
    assert run_cli("list", "--ledger", shop.url, "--status", "received").stdout == "no events\n"


def test_list_json_lines_carry_every_field_but_the_raw_body(shop: Shop):
    body, done = shop.pay("T1")
    result = run_cli("list", "--ledger", shop.url, "--json")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    event = json.loads(line)
    stored = shop.ledger.get(done)
    assert stored is not None
    assert event["key"] == done and event["status"] == DONE and event["attempts"] == 1
    assert event["fields"] == stored.fields and event["raw_body_size"] == len(body) and "raw_body" not in event
    assert datetime.fromisoformat(event["updated_at"]) == stored.updated_at
    assert event["lease_owner"] is None and event["lease_until"] is None


def test_show_prints_the_fields_the_traceback_and_the_raw_body(shop: Shop):
    body, failed = shop.pay("T2", fail=True)
    result = run_cli("show", failed, "--ledger", shop.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"key:          {failed}\n" in out and "status:       failed\n" in out and "attempts:     1\n" in out
    assert "  out_trade_no = T2\n" in out and "  total_amount = 20.00\n" in out
    assert "Traceback (most recent call last)" in out and "RuntimeError: hook failed on purpose" in out
    assert f"raw body:     {len(body)} bytes (--raw shows them)" in out and body.decode() not in out

    raw = run_cli("show", failed, "--raw", "--ledger", shop.url).stdout
    assert f"raw body:     {len(body)} bytes, decoded as utf-8:\n  {body.decode()}\n" in raw


def test_show_decodes_a_gbk_raw_body_in_its_charset(shop: Shop):
    body, key = gbk_raw_body(shop.keys, "T3")
    assert shop.post(body) == 200
    out = run_cli("show", key, "--raw", "--ledger", shop.url).stdout
    assert "charset:      gbk\n" in out and "  subject = 绿茶 测试\n" in out
    assert body.decode("gbk") in out and "subject=绿茶+测试" in out


def test_show_escapes_bytes_that_do_not_decode(shop: Shop):
    event = shop.alipay.protocol.event(notify_fields("T1"))
    shop.ledger.claim(event, b"subject=\xff\xfe&out_trade_no=T1", "utf-8", "worker", 600)
    out = run_cli("show", event.key, "--raw", "--ledger", shop.url).stdout
    assert "  subject=\\xff\\xfe&out_trade_no=T1\n" in out
    assert "status:       received\n" in out and "lease:        worker until " in out and "(live)" in out


def test_show_an_unknown_key_exits_1(shop: Shop):
    shop.pay("T1")
    result = run_cli("show", "paid:nope", "--ledger", shop.url)
    assert result.returncode == 1 and result.stdout == ""
    assert "no event with the key 'paid:nope'" in result.stderr and "no order with that out_trade_no" in result.stderr


def test_show_an_out_trade_no_prints_every_event_of_that_order_oldest_first(shop: Shop):
    _, paid = shop.pay("T1")
    refund = notify_fields("T1", ORDERS["T1"], refund_fee="1.00", gmt_refund="2024-01-02 10:00:00", out_biz_no="R1")
    assert shop.post(signed_body(refund, shop.keys.alipay)) == 200
    shop.pay("T2")
    result = run_cli("show", "T1", "--ledger", shop.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("order T1: 2 events, oldest first\n\n-- event 1 of 2\n")
    first, second = out.split("-- event 2 of 2\n")
    assert f"key:          {paid}\n" in first and "kind:         paid\n" in first
    assert "kind:         refunded\n" in second and "  refund_fee = 1.00\n" in second
    assert "out_trade_no: T2" not in out and out.count("raw body:") == 2
    assert run_cli("show", paid, "--ledger", shop.url).stdout.startswith(f"key:          {paid}\n")  # a key: one


def test_the_ledger_comes_from_alipay_ledger_when_not_given(shop: Shop):
    _, done = shop.pay("T1")
    result = run_cli("list", env={"ALIPAY_LEDGER": shop.url})
    assert result.returncode == 0 and done in result.stdout


def test_no_ledger_says_how_to_give_one(tmp_path: Path):
    result = run_cli("list", cwd=tmp_path)
    assert result.returncode == 2
    assert "--ledger URL" in result.stderr and "ALIPAY_LEDGER" in result.stderr


def test_a_missing_sqlite_file_is_an_error_not_a_new_empty_ledger(tmp_path: Path):
    result = run_cli("list", "--ledger", "sqlite:///typo.sqlite3", cwd=tmp_path)
    assert result.returncode == 2 and "no SQLite ledger at 'typo.sqlite3'" in result.stderr
    assert not (tmp_path / "typo.sqlite3").exists()


def test_a_missing_postgres_table_is_an_error_not_a_new_empty_table(spare_table: str):
    result = run_cli("list", "--ledger", pg_url(spare_table))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "'alipay-middleware schema --apply --ledger postgresql://USER@HOST/DBNAME?schema=public&table=" \
        in result.stderr and "--table " in result.stderr


# -- replay -------------------------------------------------------------------------------------------------

SHOP_HOOKS = textwrap.dedent(
    """
    from decimal import Decimal
    from pathlib import Path

    from alipay_middleware import Alipay, OpenApiConfig

    HERE = Path(__file__).parent
    config = OpenApiConfig(app_id=@APP_ID@, app_private_key=(HERE / "app.pem").read_text(),
                           alipay_public_key=(HERE / "alipay.pem").read_text(), seller_id=@SELLER_ID@)
    alipay = Alipay(config, ledger=@LEDGER@)
    alipay.order_amount({key: Decimal(value) for key, value in @ORDERS@.items()}.get)


    @alipay.on_paid
    def paid(event):
        if (HERE / "broken").exists():
            raise RuntimeError("still broken")
        with open(HERE / "calls.txt", "a", encoding="utf-8") as calls:
            calls.write(f"{event.key} attempt={event.attempt}\\n")
    """
)


def write_hooks(shop: Shop, directory: Path) -> Path:
    """``shop_hooks.py``: the shop's own Alipay (same config and ledger), whose on_paid appends to a file."""
    (directory / "app.pem").write_text(shop.keys.app_private_pem)
    (directory / "alipay.pem").write_text(shop.keys.alipay_public_pem)
    source = SHOP_HOOKS
    for name, value in {"@APP_ID@": APP_ID, "@SELLER_ID@": SELLER_ID, "@LEDGER@": shop.url, "@ORDERS@": ORDERS}.items():
        source = source.replace(name, repr(value))
    (directory / "shop_hooks.py").write_text(source)
    return directory / "calls.txt"


def calls_in(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_replay_runs_a_failed_event_once_and_never_a_done_one(shop: Shop, tmp_path: Path):
    _, done = shop.pay("T1")
    _, failed = shop.pay("T2", fail=True)
    calls = write_hooks(shop, tmp_path)

    first = run_cli("replay", "--app", "shop_hooks:alipay", "--ledger", shop.url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert lines(first.stdout) == [["replayed", failed, "attempt=2"], ["1", "replayed"]]
    assert calls_in(calls) == [f"{failed} attempt=2"]
    stored = shop.ledger.get(failed)
    assert stored is not None and (stored.status, stored.attempts, stored.error) == (DONE, 2, None)

    again = run_cli("replay", "--app", "shop_hooks:alipay", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, "nothing to replay\n")
    named = run_cli("replay", "--app", "shop_hooks:alipay", "--key", done, "--key", failed, cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert lines(named.stdout)[:2] == [["already_done", done, "done", "before:", "not", "run", "again"],
                                       ["already_done", failed, "done", "before:", "not", "run", "again"]]
    assert calls_in(calls) == [f"{failed} attempt=2"]  # neither the done event nor the replayed one again
    assert len(shop.paid.calls) == 1  # the in-process hook ran T1 only


def test_a_replay_that_fails_again_is_recorded_and_exits_1(shop: Shop, tmp_path: Path):
    _, failed = shop.pay("T2", fail=True)
    calls = write_hooks(shop, tmp_path)
    (tmp_path / "broken").touch()
    result = run_cli("replay", "--app", "shop_hooks:alipay", cwd=tmp_path)
    assert result.returncode == 1
    assert lines(result.stdout)[0][:4] == ["failed", failed, "reason=hook_failed", "attempt=2"]
    stored = shop.ledger.get(failed)
    assert stored is not None and (stored.status, stored.attempts) == (FAILED, 2)
    assert stored.error is not None and "RuntimeError: still broken" in stored.error
    assert stored.lease_owner is None and stored.lease_until is None  # the lease was released
    assert calls_in(calls) == []

    (tmp_path / "broken").unlink()
    fixed = run_cli("replay", "--app", "shop_hooks:alipay", "--status", "failed", cwd=tmp_path)
    assert fixed.returncode == 0 and calls_in(calls) == [f"{failed} attempt=3"]


def claim_as_a_worker(shop: Shop, out_trade_no: str, lease: float = 600) -> str:
    """A signed event claimed by another worker (who then holds or abandons the lease)."""
    body = signed_body(notify_fields(out_trade_no, ORDERS[out_trade_no]), shop.keys.alipay)
    fields, charset = shop.alipay.protocol.parse(body, None)
    event = shop.alipay.protocol.event(fields)
    assert shop.ledger.claim(event, body, charset, "host:1:worker", lease).state == CLAIMED
    return event.key


def test_replay_leaves_a_live_lease_alone_and_retakes_an_expired_one(shop: Shop, tmp_path: Path):
    abandoned = claim_as_a_worker(shop, "T2")
    live = claim_as_a_worker(shop, "T1")
    execute(shop.ledger, "UPDATE {t} SET lease_until = ? WHERE dedupe_key = ?",
            (moment(shop.ledger, days_ago(1)), abandoned))
    calls = write_hooks(shop, tmp_path)

    dry = run_cli("replay", "--app", "shop_hooks:alipay", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    [expired_line, live_line] = dry.stdout.splitlines()
    assert expired_line.startswith(f"would_replay {abandoned}  status=received attempts=1 lease=host:1:worker until ")
    assert expired_line.endswith("(expired)")
    assert live_line.startswith(f"busy         {live}  status=received") and live_line.endswith("(live)")

    result = run_cli("replay", "--app", "shop_hooks:alipay", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row[:2] for row in lines(result.stdout)[:2]] == [["replayed", abandoned], ["busy", live]]
    assert calls_in(calls) == [f"{abandoned} attempt=2"]
    held = shop.ledger.get(live)
    assert held is not None and (held.status, held.attempts, held.lease_owner) == (RECEIVED, 1, "host:1:worker")

    by_key = run_cli("replay", "--app", "shop_hooks:alipay", "--key", live, cwd=tmp_path)
    assert by_key.returncode == 0 and lines(by_key.stdout)[0][:2] == ["busy", live]
    assert calls_in(calls) == [f"{abandoned} attempt=2"]


def test_dry_run_lists_and_runs_nothing(shop: Shop, tmp_path: Path):
    _, failed = shop.pay("T2", fail=True)
    _, done = shop.pay("T1")
    calls = write_hooks(shop, tmp_path)
    result = run_cli("replay", "--app", "shop_hooks:alipay", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [["would_replay", failed, "status=failed", "attempts=1"]]
    named = run_cli("replay", "--app", "shop_hooks:alipay", "--dry-run", "--key", done, "--key", "paid:nope",
                    cwd=tmp_path)
    assert named.returncode == 1
    assert [row[:2] for row in lines(named.stdout)] == [["unknown", "paid:nope"], ["already_done", done]]
    assert calls_in(calls) == [] and shop.ledger.get(failed).status == FAILED  # type: ignore[union-attr]


def test_replay_refuses_stored_fields_that_no_longer_verify(shop: Shop, tmp_path: Path):
    # A row written into the database by hand must not run a hook: the stored signature is checked again.
    _, failed = shop.pay("T2", fail=True)
    stored = shop.ledger.get(failed)
    assert stored is not None
    forged_fields = dict(stored.fields, out_trade_no="T4", total_amount="7.00")
    forged = dataclasses.replace(stored, key=f"paid:{APP_ID}:T4", trade_key=f"{APP_ID}:T4", out_trade_no="T4",
                                 fields=forged_fields)
    assert shop.ledger.import_events([forged]) == (1, 0)
    assert shop.post(signed_body(notify_fields("T1", app_id="2021999999999999"), shop.keys.alipay)) == 400
    [foreign] = [e.key for e in shop.ledger.events(status=REJECTED) if e.key.startswith("foreign:")]
    calls = write_hooks(shop, tmp_path)

    result = run_cli("replay", "--app", "shop_hooks:alipay", "--key", forged.key, "--key", foreign, cwd=tmp_path)
    assert result.returncode == 1
    assert lines(result.stdout)[:2] == [["refused", forged.key, "reason=bad_signature"],
                                        ["refused", foreign, "reason=app_id_mismatch"]]
    assert calls_in(calls) == []
    assert shop.ledger.get(forged.key).status == FAILED  # type: ignore[union-attr]


def test_replay_by_status_never_selects_messages_for_another_app(shop: Shop, tmp_path: Path):
    assert shop.post(signed_body(notify_fields("T1", app_id="2021999999999999"), shop.keys.alipay)) == 400
    assert shop.post(signed_body(notify_fields("T4", "0.01"), shop.keys.alipay)) == 409  # 7.00 ordered
    calls = write_hooks(shop, tmp_path)
    result = run_cli("replay", "--app", "shop_hooks:alipay", "--status", "rejected", cwd=tmp_path)
    assert result.returncode == 1  # rejected again: the order check still fails
    assert lines(result.stdout) == [["rejected", f"paid:{APP_ID}:T4", "reason=amount_mismatch"], ["1", "rejected"]]
    assert calls_in(calls) == []


LEGACY_HOOKS = textwrap.dedent(
    """
    from pathlib import Path

    from alipay_middleware import Alipay, LegacyConfig

    HERE = Path(__file__).parent
    alipay = Alipay(LegacyConfig(partner=@PARTNER@, key=@MD5_KEY@, gateway=@GATEWAY@), ledger=@LEDGER@)


    @alipay.on_paid
    def paid(event):
        with open(HERE / "calls.txt", "a", encoding="utf-8") as calls:
            calls.write(f"{event.key} attempt={event.attempt}\\n")
    """
)


def test_a_legacy_event_is_replayed_without_asking_notify_verify_again(make_legacy: Any, gateway_stub: Any,
                                                                        tmp_path: Path):
    from conftest import MD5_KEY, PARTNER, legacy_body, legacy_fields

    alipay = make_legacy()
    paid = Recorder()
    paid.fail_next = 1
    alipay.on_paid(paid)
    fields = legacy_fields("L1", subject="绿茶")
    gateway_stub.issue(fields["notify_id"])
    body = legacy_body(fields, charset="gbk")
    response = WSGIClient(alipay.wsgi(inner_wsgi)).request(
        "POST", NOTIFY, body, content_type="application/x-www-form-urlencoded; charset=gbk")
    assert response.status == 500 and len(gateway_stub.requests) == 1
    source = LEGACY_HOOKS
    for name, value in {"@PARTNER@": PARTNER, "@MD5_KEY@": MD5_KEY, "@GATEWAY@": gateway_stub.url,
                        "@LEDGER@": url_of(alipay.ledger)}.items():
        source = source.replace(name, repr(value))
    (tmp_path / "legacy_hooks.py").write_text(source)

    result = run_cli("replay", "--app", "legacy_hooks:alipay", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = f"paid:{PARTNER}:L1"
    assert lines(result.stdout)[0] == ["replayed", key, "attempt=2"]
    assert calls_in(tmp_path / "calls.txt") == [f"{key} attempt=2"]
    assert len(gateway_stub.requests) == 1  # checked once, on arrival


def test_replay_runs_on_the_apps_own_ledger_only(shop: Shop, tmp_path: Path):
    shop.pay("T2", fail=True)
    calls = write_hooks(shop, tmp_path)
    other = SQLiteLedger(str(tmp_path / "other.sqlite3"))
    other.close()
    result = run_cli("replay", "--app", "shop_hooks:alipay", cwd=tmp_path,
                     env={"ALIPAY_LEDGER": f"sqlite:///{tmp_path / 'other.sqlite3'}"})
    assert result.returncode == 2 and "Replay runs on the app's own ledger" in result.stderr
    assert calls_in(calls) == []


@pytest.mark.parametrize("app,message", [
    ("shop_hooks", "must be MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE (got 'shop_hooks')"),
    ("shop_hooks.py", "Did you mean shop_hooks.py:alipay?"),
    ("no_such_module:alipay", "cannot import 'no_such_module'"),
    ("missing.py:alipay", "no Python file 'missing.py'"),
    ("sub/shop_hooks.py:alipay", "no Python file 'sub/shop_hooks.py'"),
    ("shop_hooks:nothing", "has no attribute 'nothing'; its Alipay objects: alipay"),
    ("shop_hooks:config", "is a OpenApiConfig, not the app's Alipay object"),
])
def test_a_bad_app_is_a_clear_error(shop: Shop, tmp_path: Path, app: str, message: str):
    write_hooks(shop, tmp_path)
    result = run_cli("replay", "--app", app, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    # Every one explains both forms, with an example of each.
    assert "MODULE:ATTRIBUTE, e.g. myshop.payments:alipay" in result.stderr, result.stderr
    assert "FILE.py:ATTRIBUTE, e.g. shop.py:alipay or path/to/shop.py:alipay" in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_app_may_be_a_file_path(shop: Shop, tmp_path: Path, where: str):
    _, failed = shop.pay("T2", fail=True)
    folder = tmp_path / "deploy" / "shop"
    folder.mkdir(parents=True)
    calls = write_hooks(shop, folder)
    cwd, app = (folder, "shop_hooks.py:alipay") if where == "here" else (tmp_path, "deploy/shop/shop_hooks.py:alipay")
    result = run_cli("replay", "--app", app, "--key", failed, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"replayed     {failed}") and calls_in(calls) == [f"{failed} attempt=2"]


# -- prune --------------------------------------------------------------------------------------------------

def test_prune_drops_old_raw_bodies_keeps_keys_and_a_resend_is_still_acknowledged(shop: Shop):
    old_body, old = shop.pay("T1")
    _, old_failed = shop.pay("T2", fail=True)
    _, recent = shop.pay("T3")
    for key in (old, old_failed):
        execute(shop.ledger, "UPDATE {t} SET updated_at = ? WHERE dedupe_key = ?",
                (moment(shop.ledger, days_ago(10)), key))
    before = {key: shop.ledger.get(key) for key in (old, old_failed, recent)}

    count = run_cli("prune", "--older-than-days", "7", "--ledger", shop.url)
    assert count.returncode == 0, count.stderr
    assert count.stdout.startswith("1 done events last updated before ") and "--yes" in count.stdout
    assert {key: shop.ledger.get(key) for key in before} == before

    pruned = run_cli("prune", "--older-than-days", "7", "--yes", "--ledger", shop.url)
    assert pruned.returncode == 0 and pruned.stdout.startswith("pruned 1 done events"), pruned.stderr
    stored = shop.ledger.get(old)
    assert stored is not None and stored.raw_body is None
    assert stored.fields == {k: v for k, v in before[old].fields.items() if k in PRUNE_KEEP}  # type: ignore[union-attr]
    assert stored.fields["total_amount"] == "9.90" and "buyer_id" not in stored.fields and "sign" not in stored.fields
    assert dataclasses.replace(stored, raw_body=before[old].raw_body, fields=before[old].fields) == before[old]
    assert shop.ledger.get(old_failed) == before[old_failed] and shop.ledger.get(recent) == before[recent]
    assert "raw body:     - (pruned)" in run_cli("show", old, "--raw", "--ledger", shop.url).stdout

    again = run_cli("prune", "--older-than-days", "7", "--yes", "--ledger", shop.url)
    assert again.stdout.startswith("pruned 0 done events")
    assert shop.post(old_body) == 200  # the key is still there: success, and no second hook call
    finished = signed_body(notify_fields("T1", ORDERS["T1"], trade_status="TRADE_FINISHED"), shop.keys.alipay)
    assert shop.post(finished) == 200
    assert [event.out_trade_no for event in shop.paid.calls] == ["T1", "T3"]


def test_prune_in_batches_counts_on_a_terminal_only(shop: Shop):
    keys = [shop.pay(out_trade_no)[1] for out_trade_no in ORDERS]
    for key in keys:
        execute(shop.ledger, "UPDATE {t} SET updated_at = ? WHERE dedupe_key = ?",
                (moment(shop.ledger, days_ago(10)), key))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    environment.pop("ALIPAY_LEDGER", None)
    child, terminal = on_a_terminal(lambda fd: subprocess.Popen(
        [sys.executable, "-m", "alipay_middleware", "prune", "--older-than-days", "7", "--yes", "--batch", "3",
         "--ledger", shop.url], stdout=subprocess.PIPE, stderr=fd, env=environment))
    out = child.communicate(timeout=120)[0].decode()
    assert child.returncode == 0 and out.startswith("pruned 4 done events"), (out, terminal)
    # Batches of 3: the count after each of the two batches, then the line ends.
    assert terminal == b"\rpruned 3 events so far\rpruned 4 events so far\r\n", terminal
    assert all(shop.ledger.get(key).raw_body is None for key in keys)  # type: ignore[union-attr]

    refused = run_cli("prune", "--older-than-days", "7", "--yes", "--batch", "0", "--ledger", shop.url)
    assert refused.returncode == 2 and "--batch must be at least 1" in refused.stderr


@pytest.mark.parametrize("days", ["1", "0", "-5"])
def test_prune_refuses_less_than_two_days(tmp_path: Path, days: str):
    SQLiteLedger(str(tmp_path / "ledger.sqlite3")).close()
    result = run_cli("prune", "--older-than-days", days, "--yes", "--ledger", f"sqlite:///{tmp_path}/ledger.sqlite3")
    assert result.returncode == 2 and "at least 2" in result.stderr and "25 hours" in result.stderr


# -- migrate ------------------------------------------------------------------------------------------------

def fill_every_kind(shop: Shop) -> None:
    """Done, failed, rejected, foreign, a refund, a GBK raw body and a live lease, via the middleware."""
    shop.pay("T1")
    shop.pay("T2", fail=True)
    assert shop.post(signed_body(notify_fields("NOPE", "1.00"), shop.keys.alipay)) == 409
    assert shop.post(signed_body(notify_fields("T1", app_id="2021999999999999"), shop.keys.alipay)) == 400
    refund = notify_fields("T1", ORDERS["T1"], refund_fee="1.00", gmt_refund="2024-01-02 10:00:00", out_biz_no="R1")
    assert shop.post(signed_body(refund, shop.keys.alipay)) == 200
    body, _ = gbk_raw_body(shop.keys, "T3")
    assert shop.post(body) == 200
    claim_as_a_worker(shop, "T4")


def test_migrate_copies_every_field_and_is_idempotent(shop: Shop, ledger_backend: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest):
    fill_every_kind(shop)
    source = list(shop.ledger.export())
    assert len(source) == 7 and {e.status for e in source} == {DONE, FAILED, REJECTED, RECEIVED}
    if ledger_backend == "sqlite":  # into the other backend
        target_url = pg_url(request.getfixturevalue("spare_table"))
    else:
        target_url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"

    first = run_cli("migrate", "--from", shop.url, "--to", target_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("copied 7 events from ") and "skipped 0 whose key" in first.stdout
    second = run_cli("migrate", "--to", target_url, env={"ALIPAY_LEDGER": shop.url})  # --from: ALIPAY_LEDGER
    assert second.returncode == 0 and second.stdout.startswith("copied 0 events") and "skipped 7" in second.stdout

    target = open_ledger(target_url, create=False)
    try:
        assert list(target.export()) == source  # every field: raw bytes, fields, times, leases, errors
        assert target.events(limit=-1) == shop.ledger.events(limit=-1)  # newest first, as before
        gbk = [e for e in source if e.charset == "gbk"]
        assert len(gbk) == 1 and "绿茶+测试".encode("gbk") in (gbk[0].raw_body or b"")
        failed = target.get(f"paid:{APP_ID}:T2")
        assert failed is not None and failed.error is not None and "hook failed on purpose" in failed.error
        leased = target.get(f"paid:{APP_ID}:T4")
        assert leased is not None and leased.lease_owner == "host:1:worker" and leased.lease_until is not None
    finally:
        target.close()


def test_migrate_refuses_the_same_ledger(shop: Shop):
    shop.pay("T1")
    result = run_cli("migrate", "--from", shop.url, "--to", shop.url)
    assert result.returncode == 2 and "the same ledger" in result.stderr


def test_an_app_on_the_migrated_ledger_keeps_deduplicating(shop: Shop, make_alipay: Any, keys: Any, tmp_path: Path):
    body, _ = shop.pay("T1")
    target_url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    assert run_cli("migrate", "--ledger", shop.url, "--to", target_url).returncode == 0
    moved = Shop(make_alipay(ledger=target_url, orders=ORDERS), keys)
    assert moved.post(body) == 200 and moved.paid.calls == []


# -- schema -------------------------------------------------------------------------------------------------

def test_schema_prints_the_postgres_ddl():
    pytest.importorskip("psycopg")
    from alipay_middleware.ledger.postgres import schema_sql

    result = run_cli("schema", "--schema", "shop", "--table", "payments")
    assert result.returncode == 0 and result.stdout == schema_sql("shop", "payments")
    assert run_cli("schema").stdout == schema_sql()


def test_schema_apply_creates_the_table_for_a_ledger_that_may_not(spare_table: str):
    from alipay_middleware.ledger.postgres import PostgresLedger

    assert run_cli("list", "--ledger", pg_url(spare_table)).returncode == 2
    result = run_cli("schema", "--apply", "--ledger", pg_url(spare_table))
    assert result.returncode == 0 and f"public.{spare_table}" in result.stdout, result.stderr
    PostgresLedger(POSTGRES, table=spare_table, create_schema=False).close()
    assert run_cli("list", "--ledger", pg_url(spare_table)).stdout == "no events\n"
    clash = run_cli("schema", "--apply", "--table", "other", "--ledger", pg_url(spare_table))
    assert clash.returncode == 2 and "disagree" in clash.stderr
    assert run_cli("schema", "--apply", "--ledger", "sqlite:///x.sqlite3").returncode == 2


# -- the ledger methods the tools use, on both backends -------------------------------------------------------

@pytest.fixture
def ledger(new_ledger: Any) -> Iterator[Ledger]:
    made = open_ledger(new_ledger())
    yield made
    made.close()


def event(n: int, kind: str = "paid", **raw: str) -> PaymentEvent:
    out_trade_no = f"U{n}"
    return PaymentEvent(
        kind=kind, key=f"{kind}:{APP_ID}:{out_trade_no}", trade_key=f"{APP_ID}:{out_trade_no}",
        out_trade_no=out_trade_no, trade_no=f"2024{n}", trade_status="TRADE_SUCCESS", total_amount=Decimal("9.90"),
        refund_fee=None, out_biz_no="", notify_id=f"n-{n}", gmt_payment=None, gmt_refund=None, app_id=APP_ID,
        seller_id=SELLER_ID,
        raw={"out_trade_no": out_trade_no, "total_amount": "9.90", "buyer_id": "2088102000000009",
             "subject": "测试", "sign": "c2lnbg==", **raw},
    )


def test_prune_unit(ledger: Ledger):
    for n in range(1, 5):
        ledger.claim(event(n), f"body {n}".encode(), "utf-8", "w", 600)
    for n in (1, 2, 3):
        ledger.finish(event(n).key)
    execute(ledger, "UPDATE {t} SET updated_at = ? WHERE dedupe_key <> ?", (moment(ledger, days_ago(3)), event(3).key))
    cutoff = days_ago(2)
    assert ledger.prune(cutoff, dry_run=True) == 2  # U1, U2: done and old; U3 recent; U4 not done
    assert ledger.get(event(1).key).raw_body == b"body 1"  # type: ignore[union-attr]
    assert ledger.prune(cutoff) == 2
    assert ledger.prune(cutoff) == 0 and ledger.prune(cutoff, dry_run=True) == 0
    pruned = ledger.get(event(1).key)
    assert pruned is not None and pruned.raw_body is None and pruned.status == DONE
    assert pruned.fields == {"out_trade_no": "U1", "total_amount": "9.90"}
    assert ledger.get(event(3).key).raw_body == b"body 3"  # type: ignore[union-attr]
    assert ledger.get(event(4).key).raw_body == b"body 4"  # type: ignore[union-attr]
    assert ledger.claim(event(1), b"again", "utf-8", "w", 600).state == "done"
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.prune(datetime(2024, 1, 1))


def test_prune_works_in_batches(ledger: Ledger):
    from alipay_middleware.ledger import sqlite as sqlite_module

    count = 501  # one more than a batch
    rows = [StoredEvent(key=f"paid:{APP_ID}:B{n}", trade_key=f"{APP_ID}:B{n}", kind="paid", status=DONE,
                        out_trade_no=f"B{n}", trade_no="", trade_status="TRADE_SUCCESS", notify_id="", charset="utf-8",
                        raw_body=b"x", fields={"subject": "s", "out_trade_no": f"B{n}"}, reason=None, error=None,
                        attempts=1, received_at=days_ago(9), updated_at=days_ago(9)) for n in range(count)]
    assert sqlite_module.PRUNE_BATCH == 500
    assert ledger.import_events(rows) == (count, 0)
    assert ledger.prune(days_ago(2)) == count
    assert all(e.raw_body is None and e.fields == {"out_trade_no": e.out_trade_no} for e in ledger.export())


def another_ledger(ledger: Ledger, new_ledger: Any, tmp_path: Path) -> Ledger:
    """A second fresh ledger of the same backend."""
    return open_ledger(new_ledger())


def test_export_then_import_copies_every_field(ledger: Ledger, new_ledger: Any, tmp_path: Path):
    raw_bodies = [bytes(range(256)), "subject=绿茶".encode("gbk"), b"", b"a", b"b"]
    for n, body in enumerate(raw_bodies):
        ledger.claim(event(n), body, "gbk", f"worker-{n}", 600)
    ledger.finish(event(0).key, "note")
    ledger.fail(event(1).key, "worker-1", "Traceback ...\nRuntimeError: x\n")
    ledger.reject(event(2).key, "worker-2", "amount_mismatch")
    ledger.record_foreign(event(5), b"foreign", "utf-8", "app_id_mismatch")
    exported = list(ledger.export(batch=2))
    assert [e.key for e in exported] == [e.key for e in reversed(ledger.events(limit=-1))]  # oldest first
    assert [e.raw_body for e in exported[:5]] == raw_bodies
    leased = exported[3]
    assert leased.status == RECEIVED and leased.lease_owner == "worker-3"
    assert leased.lease_until is not None and leased.lease_until > datetime.now(timezone.utc)

    target = another_ledger(ledger, new_ledger, tmp_path)
    try:
        assert target.import_events(iter(exported), batch=4) == (6, 0)
        assert list(target.export()) == exported
        assert target.import_events(exported) == (0, 6)
        assert target.claim(event(3), b"", "gbk", "worker-9", 600).state == "busy"  # the lease came along
        assert target.claim(event(0), b"", "gbk", "worker-9", 600).state == "done"
    finally:
        target.close()


def test_import_skips_existing_keys_and_leaves_them_untouched(ledger: Ledger):
    ledger.claim(event(1), b"mine", "utf-8", "w", 600)
    ledger.finish(event(1).key)
    mine = ledger.get(event(1).key)
    assert mine is not None
    theirs = dataclasses.replace(mine, status=FAILED, raw_body=b"theirs", attempts=7)
    new = dataclasses.replace(mine, key=f"paid:{APP_ID}:U2", trade_key=f"{APP_ID}:U2", out_trade_no="U2")
    assert ledger.import_events([theirs, new, new]) == (1, 2)
    assert ledger.get(event(1).key) == mine
    assert ledger.get(new.key) == new


def test_a_ledger_without_the_tools_still_works_and_says_what_it_lacks():
    class Minimal(Ledger):
        def claim(self, event: Any, raw_body: Any, charset: Any, owner: Any, lease: Any) -> Claim:
            return Claim(CLAIMED, attempt=1)

        def finish(self, key: Any, note: Any = None) -> None: ...
        def fail(self, key: Any, owner: Any, error: Any) -> None: ...
        def reject(self, key: Any, owner: Any, reason: Any) -> None: ...
        def record_foreign(self, event: Any, raw_body: Any, charset: Any, reason: Any) -> None: ...
        def is_done(self, key: Any) -> bool: return False
        def get(self, key: Any) -> None: return None
        def events(self, status: Any = None, out_trade_no: Any = None, limit: int = 100) -> list[Any]: return []

    minimal = Minimal()
    for call in (lambda: minimal.prune(days_ago(3)), lambda: list(minimal.export()),
                 lambda: minimal.import_events([])):
        with pytest.raises(NotImplementedError, match="Minimal does not implement"):
            call()


@pytest.mark.parametrize("url,expected", [
    ("postgresql://u@h/db", ("postgresql://u@h/db", {})),
    ("postgresql://u@h/db?table=t1", ("postgresql://u@h/db", {"table": "t1"})),
    ("postgresql://u:p%3Fw@h/db?sslmode=require&table=t1&schema=s&options=-c%20x%3Dy",
     ("postgresql://u:p%3Fw@h/db?sslmode=require&options=-c%20x%3Dy", {"table": "t1", "schema": "s"})),
])
def test_split_table_params_keeps_every_other_parameter_as_written(url: str, expected: tuple[str, dict[str, str]]):
    assert split_table_params(url) == expected


def test_a_postgres_url_names_its_table(spare_table: str):
    made = open_ledger(pg_url(spare_table))
    try:
        assert made.table == spare_table  # type: ignore[attr-defined]
        assert "alipay_events" not in repr(made)
    finally:
        made.close()
    with pytest.raises(ValueError, match="plain SQL identifier"):
        open_ledger(pg_url("bad-name"))
