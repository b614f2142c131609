"""PostgresLedger against a real PostgreSQL: what only it has (schema, grants, pools, lock_timeout, sessions),
and that it answers a script of calls exactly as SQLiteLedger does. The contract both keep, claims atomic
across threads and processes included, is in ``test_ledger_contract.py``.

The server is ``ALIPAY_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``). Without
psycopg or a reachable server these tests are skipped, unless ``CI`` is set: then that is a failure.
Every test works in its own table (or schema), dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware.errors import LedgerUnavailable
from alipay_middleware.ledger import ALREADY_DONE, BUSY, CLAIMED, DONE, FAILED, RECEIVED, REJECTED, Ledger, SQLiteLedger
from ledger_events import BODY, OTHER_TRADE, PAID, REFUND, event

POSTGRES = os.environ.get("ALIPAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.rows import dict_row

    from alipay_middleware.ledger.postgres import PostgresLedger, schema_sql
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise ImportError(f'CI is set, so the PostgreSQL ledger tests must run: pip install "psycopg[binary]" ({exc})'
                          ) from exc
    pytest.skip(f'psycopg 3 is not installed (pip install "psycopg[binary]"): {exc}', allow_module_level=True)


def _server() -> str:
    params = conninfo_to_dict(POSTGRES)  # never the password
    return f"{params.get('host', '(default host)')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


@pytest.fixture(scope="module", autouse=True)
def postgres_server() -> None:
    try:
        with psycopg.connect(POSTGRES, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        problem = f"no PostgreSQL at {_server()} (set ALIPAY_TEST_POSTGRES): {' '.join(str(exc).split())}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the PostgreSQL ledger tests must run: {problem}", pytrace=False)
        pytest.skip(problem)


def admin(query: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(POSTGRES, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def relation_exists(schema: str, name: str) -> bool:
    return bool(admin("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE n.nspname = %s AND c.relname = %s", (schema, name)))


@pytest.fixture
def table() -> Iterator[str]:
    name = f"alipay_test_{uuid.uuid4().hex[:12]}"
    yield name
    admin(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", name)))


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"alipay_test_{uuid.uuid4().hex[:12]}"
    yield name
    admin(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def ledger(table: str) -> Iterator[PostgresLedger]:
    ledger = PostgresLedger(POSTGRES, table=table)
    yield ledger
    ledger.close()


# -- PostgreSQL's own values and time zones ------------------------------------------------------------------------

def test_a_nul_character_in_a_field_is_ledger_unavailable_and_the_ledger_goes_on(ledger: PostgresLedger):
    # PostgreSQL text cannot hold U+0000 (SQLite's can): such an event is answered 503, never half-stored.
    with pytest.raises(LedgerUnavailable):
        ledger.claim(event(raw={"subject": "a\x00b"}), BODY, "gbk", "worker", 30)
    assert ledger.get(PAID.key) is None
    assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED


def test_timestamps_are_utc_whatever_the_session_time_zone(table: str):
    shanghai = PostgresLedger(make_conninfo(POSTGRES, options="-c TimeZone=Asia/Shanghai"), table=table)
    utc = PostgresLedger(POSTGRES, table=table)
    try:
        shanghai.claim(PAID, BODY, "gbk", "worker", 30)
        seen_in_shanghai, seen_in_utc = shanghai.get(PAID.key), utc.get(PAID.key)
        assert seen_in_shanghai is not None and seen_in_utc is not None
        assert seen_in_shanghai.received_at.tzinfo is timezone.utc
        assert seen_in_shanghai.received_at == seen_in_utc.received_at
    finally:
        shanghai.close()
        utc.close()


# -- schema, configuration, failures ---------------------------------------------------------------------------------

def test_the_table_and_its_indexes_are_created_on_construction(ledger: PostgresLedger, table: str):
    for name in (table, f"{table}_trade", f"{table}_status", f"{table}_order", f"{table}_received"):
        assert relation_exists("public", name), name


def test_create_schema_false_on_a_missing_table_fails_at_construction(table: str):
    with pytest.raises(ValueError, match=r"does not exist.*'alipay-middleware schema --apply --ledger .*"
                                         r"'alipay-middleware schema --schema .* --table .*' prints") as info:
        PostgresLedger(POSTGRES, table=table, create_schema=False)
    assert f"public.{table}" in str(info.value)
    assert not relation_exists("public", table)


def test_schema_sql_runs_by_hand_and_the_ledger_then_uses_it(schema: str):
    ddl = schema_sql(schema, "events")
    assert f'CREATE TABLE IF NOT EXISTS "{schema}"."events"' in ddl
    admin(ddl)
    admin(ddl)  # idempotent
    ledger = PostgresLedger(POSTGRES, schema=schema, table="events", create_schema=False)
    try:
        assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
    finally:
        ledger.close()
    assert "CREATE SCHEMA" not in schema_sql()  # public exists; creating it would need a database privilege


def test_a_table_without_the_claim_function_is_found_at_start_up(ledger: PostgresLedger, table: str):
    # A table created by hand from an incomplete script, or by a version before the function existed.
    admin(sql.SQL("DROP FUNCTION {}").format(sql.Identifier("public", f"{table}_claim_v1")))
    with pytest.raises(ValueError, match=r"does not exist.*schema_sql"):
        PostgresLedger(POSTGRES, table=table, create_schema=False)
    restored = PostgresLedger(POSTGRES, table=table)  # create_schema=True puts it back
    try:
        assert restored.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
    finally:
        restored.close()


def test_create_schema_method_restores_a_missing_index(ledger: PostgresLedger, table: str):
    admin(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", f"{table}_order")))
    with pytest.raises(ValueError, match="does not exist"):
        PostgresLedger(POSTGRES, table=table, create_schema=False)
    ledger.create_schema()
    assert relation_exists("public", f"{table}_order")


def test_an_app_user_without_ddl_rights_uses_an_existing_table(schema: str):
    role = f"alipay_app_{uuid.uuid4().hex[:8]}"
    try:
        admin(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a test role here: {exc}")
    try:
        admin(schema_sql(schema, "events"))
        admin(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        admin(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
            sql.Identifier(schema, "events"), sql.Identifier(role)))
        as_app = make_conninfo(POSTGRES, user=role)
        try:
            psycopg.connect(as_app).close()
        except psycopg.Error as exc:
            pytest.skip(f"cannot log in as a fresh role (the server does not trust it): {exc}")
        ledger = PostgresLedger(as_app, schema=schema, table="events")  # create_schema=True: nothing to create
        try:
            assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
            with pytest.raises(LedgerUnavailable, match="permission denied"):
                ledger.create_schema()
        finally:
            ledger.close()
        admin(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "events_order")))
        with pytest.raises(ValueError, match="permission denied"):  # something to create, and no right to
            PostgresLedger(as_app, schema=schema, table="events")
        admin(schema_sql(schema, "events"))
        claim_function = sql.SQL("FUNCTION {}").format(sql.Identifier(schema, "events_claim_v1"))
        admin(sql.SQL("REVOKE EXECUTE ON {} FROM PUBLIC").format(claim_function))
        with pytest.raises(ValueError, match="EXECUTE its function.*grant"):
            PostgresLedger(as_app, schema=schema, table="events")
        admin(sql.SQL("GRANT EXECUTE ON {} TO {}").format(claim_function, sql.Identifier(role)))
        PostgresLedger(as_app, schema=schema, table="events").close()
        admin(sql.SQL("REVOKE UPDATE ON {} FROM {}").format(sql.Identifier(schema, "events"), sql.Identifier(role)))
        with pytest.raises(ValueError, match="grant"):
            PostgresLedger(as_app, schema=schema, table="events")
    finally:
        admin(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_unreachable_server_fails_at_construction_without_showing_the_password():
    # Decision: like SQLiteLedger's unopenable file, a ledger that cannot be reached at start-up is a
    # configuration error (ValueError), so the app fails to start instead of answering 503 to every payment.
    with pytest.raises(ValueError, match=r"cannot use the PostgreSQL ledger.*127\.0\.0\.1.*'1'") as info:
        PostgresLedger("postgresql://postgres:s3cret-pw@127.0.0.1:1/test", connect_timeout=2)
    assert "s3cret-pw" not in str(info.value)


def test_repr_shows_host_and_database_but_no_password(ledger: PostgresLedger):
    url = make_conninfo(POSTGRES, password="s3cret-pw")
    with_password = PostgresLedger(url, table=ledger.table)
    try:
        text = repr(with_password)
        assert "s3cret-pw" not in text and "host=" in text and "dbname=" in text
    finally:
        with_password.close()


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    pytest.param((), {}, "either", id="no-conninfo-no-pool"),
    pytest.param((POSTGRES,), {"pool": object()}, "either", id="conninfo-and-pool"),
    pytest.param((), {"pool": object()}, "connection()", id="pool-without-connection"),
    pytest.param(("mysql://root@localhost/shop",), {}, "postgresql://", id="other-scheme"),
    pytest.param(("password=s3cret-pw oops",), {}, "not shown", id="malformed-conninfo"),
    pytest.param((POSTGRES,), {"table": "alipay-events"}, "identifier", id="table-dash"),
    pytest.param((POSTGRES,), {"table": "events\n"}, "identifier", id="table-newline"),
    pytest.param((POSTGRES,), {"table": "x" * 55}, "54", id="table-too-long"),
    pytest.param((POSTGRES,), {"schema": "a.b"}, "identifier", id="schema-dot"),
    pytest.param((POSTGRES,), {"lock_timeout": 0}, "lock_timeout", id="lock-timeout-zero"),
    pytest.param((POSTGRES,), {"connect_timeout": -1}, "connect_timeout", id="connect-timeout-negative"),
])
def test_bad_configuration_is_a_value_error(args: tuple[Any, ...], kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message) as info:
        PostgresLedger(*args, **kwargs)
    assert "s3cret-pw" not in str(info.value)


def test_a_held_lock_becomes_ledger_unavailable_not_a_hang(table: str):
    ledger = PostgresLedger(POSTGRES, table=table, lock_timeout=0.2)
    try:
        ledger.claim(PAID, BODY, "gbk", "worker-1", 30)
        ledger.fail(PAID.key, "worker-1", "boom")
        with psycopg.connect(POSTGRES) as blocker:  # a stuck session holding the event's row
            blocker.execute(sql.SQL("SELECT 1 FROM {} WHERE dedupe_key = %s FOR UPDATE").format(
                sql.Identifier("public", table)), (PAID.key,))
            with pytest.raises(LedgerUnavailable, match="lock timeout"):
                ledger.claim(PAID, BODY, "gbk", "worker-2", 30)
            with pytest.raises(LedgerUnavailable, match="lock timeout"):  # one statement, the session's timeout
                ledger.finish(PAID.key)
            blocker.rollback()
        claim = ledger.claim(PAID, BODY, "gbk", "worker-2", 30)
        assert (claim.state, claim.attempt) == (CLAIMED, 2)  # the timed-out attempt left nothing behind
    finally:
        ledger.close()


def test_a_broken_connection_is_discarded_and_reopened(table: str):
    name = f"alipay-test-{uuid.uuid4().hex[:8]}"
    ledger = PostgresLedger(make_conninfo(POSTGRES, application_name=name), table=table)
    try:
        ledger.claim(PAID, BODY, "gbk", "worker", 30)
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
        for _ in range(500):  # bounded wait until the server has dropped the session
            if not admin("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)):
                break
            time.sleep(0.01)
        with pytest.raises(LedgerUnavailable):
            ledger.get(PAID.key)
        stored = ledger.get(PAID.key)  # a new connection
        assert stored is not None and stored.status == RECEIVED
    finally:
        ledger.close()


def test_connections_of_ended_threads_are_closed(table: str):
    # A thread-per-request server (werkzeug's dev server) must not leave one session per request behind.
    name = f"alipay-test-{uuid.uuid4().hex[:8]}"
    ledger = PostgresLedger(make_conninfo(POSTGRES, application_name=name), table=table)

    def sessions() -> int:
        return len(admin("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)))

    try:
        for i in range(6):
            thread = threading.Thread(target=ledger.claim, args=(event(f"T{i}"), BODY, "gbk", "worker", 30))
            thread.start()
            thread.join(30)
        for _ in range(500):  # bounded wait: a closed session leaves pg_stat_activity a moment later
            if sessions() <= 1:
                break
            time.sleep(0.01)
        assert sessions() <= 1
        assert len(ledger.events()) == 6
    finally:
        ledger.close()


def test_importing_the_package_does_not_import_psycopg():
    code = ("import sys, alipay_middleware, alipay_middleware.ledger, alipay_middleware.ledger.sqlite; "
            "print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- pools -----------------------------------------------------------------------------------------------------------

class OneConnectionPool:
    """The least ``pool=`` needs. Its connection is deliberately unlike the ledger's own: not autocommit,
    and rows as dicts."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(POSTGRES, row_factory=dict_row)
        self.borrowed = 0

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        self.borrowed += 1
        yield self.conn

    def close(self) -> None:
        self.conn.close()


def test_a_pool_like_object_lends_the_connections(table: str):
    pool = OneConnectionPool()
    try:
        ledger = PostgresLedger(pool=pool, table=table)
        assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
        ledger.finish(PAID.key)
        assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == ALREADY_DONE
        assert [e.status for e in ledger.events()] == [DONE]
        assert "OneConnectionPool" in repr(ledger)
        ledger.close()
        assert pool.borrowed > 0 and not pool.conn.closed  # the pool is the app's: left open
        assert pool.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        row = pool.conn.execute("SHOW lock_timeout").fetchone()
        pool.conn.rollback()
        assert row == {"lock_timeout": "0"}  # SET LOCAL: no session state left on the app's connection
    finally:
        pool.close()


def test_a_pooled_connection_inside_a_transaction_is_refused(table: str):
    pool = OneConnectionPool()
    try:
        ledger = PostgresLedger(pool=pool, table=table)
        pool.conn.execute("SELECT 1")  # the app left a transaction open on it
        with pytest.raises(LedgerUnavailable, match="inside a transaction"):
            ledger.claim(PAID, BODY, "gbk", "worker", 30)
        pool.conn.rollback()
        assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
        ledger.close()
    finally:
        pool.close()


def test_psycopg_pool_works(table: str):
    psycopg_pool = pytest.importorskip("psycopg_pool")
    with psycopg_pool.ConnectionPool(POSTGRES, min_size=1, max_size=2, open=True) as pool:
        ledger = PostgresLedger(pool=pool, table=table)
        assert ledger.claim(PAID, BODY, "gbk", "worker", 30).state == CLAIMED
        assert ledger.claim(REFUND, BODY, "gbk", "worker", 30).state == BUSY
        ledger.close()


# -- real concurrency ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents(table: str):
    name = f"alipay-test-{uuid.uuid4().hex[:8]}"
    ledger = PostgresLedger(make_conninfo(POSTGRES, application_name=name), table=table)
    try:
        ledger.claim(PAID, BODY, "gbk", "parent", 30)  # the parent's connection is open
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                state = ledger.claim(OTHER_TRADE, BODY, "gbk", "child", 30).state
                sessions = len(admin("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)))
                ledger.close()  # closes the child's connection only
                os.write(write_end, f"{state} {sessions}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            reported = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert reported == f"{CLAIMED} 2"  # the child claimed on a session of its own, beside the parent's
        stored = ledger.get(OTHER_TRADE.key)  # and the parent's connection still works
        assert stored is not None and stored.status == RECEIVED
    finally:
        ledger.close()


# -- the same script against SQLiteLedger and PostgresLedger ---------------------------------------------------------

SHORT = 0.05  # a lease that the "expire" step outlives
NAMED = {"paid": PAID, "refund": REFUND, "other": OTHER_TRADE, "anonymous": event("T9", notify_id="")}
SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "finish-then-resend": [("claim", "paid", "w1", 30), ("finish", "paid", None), ("claim", "paid", "w2", 30),
                           ("finish", "paid", "again"), ("claim", "refund", "w2", 30)],
    "busy-event-then-trade": [("claim", "paid", "w1", 30), ("claim", "paid", "w2", 30), ("claim", "refund", "w2", 30),
                              ("claim", "other", "w3", 30), ("finish", "paid", None), ("claim", "refund", "w2", 30)],
    "expired-lease": [("claim", "paid", "w1", SHORT), ("expire",), ("claim", "paid", "w2", 30),
                      ("fail", "paid", "w1", "late"), ("fail", "paid", "w2", "boom"), ("claim", "paid", "w3", 30)],
    "fail-after-own-lease-expired": [("claim", "paid", "w1", SHORT), ("expire",), ("fail", "paid", "w1", "slow"),
                                     ("claim", "paid", "w2", 30)],
    "fail-retry": [("claim", "paid", "w1", 30), ("fail", "paid", "w9", "no"), ("fail", "paid", "w1", "boom"),
                   ("claim", "refund", "w2", 30), ("claim", "paid", "w2", 30), ("finish", "paid", "ok")],
    "reject-resend": [("claim", "paid", "w1", 30), ("reject", "paid", "w1", "unknown_order"),
                      ("claim", "paid", "w2", 30), ("reject", "paid", "w1", "stale"), ("finish", "paid", None),
                      ("reject", "paid", "w2", "late"), ("claim", "paid", "w3", 30)],
    "foreign": [("foreign", "paid", "app_id_mismatch"), ("foreign", "paid", "app_id_mismatch"),
                ("foreign", "anonymous", "seller_id_mismatch"), ("claim", "paid", "w1", 30),
                ("claim", "refund", "w2", 30)],
    "finish-unknown-key": [("finish", "paid", "nothing"), ("fail", "paid", "w1", "x"), ("claim", "paid", "w1", 30)],
}


def run_script(ledger: Ledger, script: list[tuple[Any, ...]]) -> list[Any]:
    transcript: list[Any] = []
    for step in script:
        op, *args = step
        if op == "expire":
            time.sleep(SHORT * 4)
            continue
        e = NAMED[args[0]]
        if op == "claim":
            c = ledger.claim(e, BODY, "gbk", args[1], args[2])
            transcript.append((step, c.state, c.attempt, c.retry_after > 0))
        elif op == "finish":
            transcript.append((step, ledger.finish(e.key, args[1])))
        elif op == "fail":
            transcript.append((step, ledger.fail(e.key, args[1], args[2])))
        elif op == "reject":
            transcript.append((step, ledger.reject(e.key, args[1], args[2])))
        elif op == "foreign":
            transcript.append((step, ledger.record_foreign(e, BODY, "gbk", args[1])))
        transcript.append([(s.key, s.trade_key, s.kind, s.status, s.attempts, s.reason, s.error, s.raw_body, s.fields,
                            s.charset, s.out_trade_no, s.notify_id, s.received_at.tzinfo)
                           for s in ledger.events(limit=-1)])
        transcript.append({name: (ledger.is_done(e.key), ledger.get(e.key) is None) for name, e in NAMED.items()})
    for status in (RECEIVED, DONE, FAILED, REJECTED, None):
        transcript.append([s.key for s in ledger.events(status=status, out_trade_no="T1", limit=2)])
    return transcript


@pytest.mark.parametrize("script", list(SCRIPTS), ids=list(SCRIPTS))
def test_postgres_and_sqlite_answer_the_same_script_the_same(script: str, table: str, tmp_path: Path):
    ledgers: dict[str, Callable[[], Ledger]] = {
        "sqlite": lambda: SQLiteLedger(str(tmp_path / "ledger.sqlite3")),
        "postgres": lambda: PostgresLedger(POSTGRES, table=table),
    }
    transcripts = {}
    for name, make in ledgers.items():
        ledger = make()
        try:
            transcripts[name] = run_script(ledger, SCRIPTS[script])
        finally:
            ledger.close()
    assert transcripts["postgres"] == transcripts["sqlite"]
