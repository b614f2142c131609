"""Costs that must not grow with the work: the SQLite ledger under a thread-per-request server, and the
ledger reads of ``list`` and ``replay`` on a large ledger (issue 13, section 2)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from alipay_middleware import Alipay, cli
from alipay_middleware.cli import events as cli_events
from alipay_middleware.cli import output as cli_output
from alipay_middleware.ledger import DONE, FAILED, RECEIVED, REJECTED, Ledger, StoredEvent
from alipay_middleware.ledger.sqlite import SQLiteLedger
from conftest import POSTGRES, Recorder, drop_postgres_table, inner_wsgi, notify_fields, signed_body

NOTIFY = "/alipay/notify"
REQUESTS = 5_000
#: Open fds and ledger connections allowed above the start: the live request threads' connections (a few),
#: not one per request ever served.
SLACK = 24


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def post(port: int, body: bytes) -> bytes:
    """One request on a new TCP connection (so the threaded server runs it on a new thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST " + NOTIFY.encode() + b" HTTP/1.1\r\nHost: shop.example\r\n"
                     b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_thread_per_request_server_keeps_fds_and_connections_flat(make_alipay: Callable[..., Alipay],
                                                                  keys: Any) -> None:
    """5,000 notifications through werkzeug's threaded server, each request on a thread of its own: the
    ledger closes the connections of the threads that have ended, so neither the process's open fds nor the
    ledger's connections grow with the number of requests (before: 2 fds and one connection per request)."""
    orders = {f"T{n}": "9.90" for n in range(50)}
    alipay = make_alipay(orders=orders)
    hook = Recorder()
    alipay.on_paid(hook)
    ledger = alipay.ledger
    assert isinstance(ledger, SQLiteLedger)
    bodies = [signed_body(notify_fields(out_trade_no=order), keys.alipay) for order in orders]
    server = make_server("127.0.0.1", 0, alipay.wsgi(inner_wsgi), threaded=True)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    port = server.server_address[1]
    try:
        assert post(port, bodies[0]).endswith(b"\r\n\r\nsuccess")  # the ledger's first thread has connected
        start_fds, start_connections = open_fds(), len(ledger._connections)
        peak_fds = peak_connections = 0
        for n in range(1, REQUESTS):
            answer = post(port, bodies[n % len(bodies)])
            assert answer.endswith(b"\r\n\r\nsuccess"), answer[:300]
            if n % 250 == 0:  # fail early, before a leak runs into the fd limit
                peak_fds, peak_connections = max(peak_fds, open_fds()), max(peak_connections, len(ledger._connections))
                assert peak_fds <= start_fds + SLACK, f"{peak_fds} fds open after {n} requests (from {start_fds})"
                assert peak_connections <= start_connections + SLACK, f"{peak_connections} ledger connections"
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert len(hook.calls) == len(bodies)  # each notification's hook ran once; the rest were resends
    assert peak_fds <= start_fds + SLACK and peak_connections <= start_connections + SLACK


def test_a_forked_child_never_closes_its_parents_connections(tmp_path: Any) -> None:
    """A child forked while the parent holds connections of ended threads opens its own and leaves the
    parent's alone (closing them would break the parent's SQLite locks)."""
    ledger = SQLiteLedger(str(tmp_path / "ledger.sqlite3"))
    try:
        worker = threading.Thread(target=lambda: ledger.get("x"))
        worker.start()
        worker.join()
        parents = [db for _, _, db in ledger._connections]
        assert len(parents) == 2  # the constructor's thread and the ended worker's
        pid = os.fork()
        if pid == 0:  # the child: connect (which releases the ended threads' connections of ITS process only)
            code = 1
            try:
                ledger.get("x")
                threading.Thread(target=lambda: ledger.get("y")).start()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for db in parents:  # still open in the parent: a closed connection raises here
            db.execute("SELECT 1").fetchone()
        assert ledger.get("x") is None
    finally:
        ledger.close()


# -- 2.3: list --status on an index, list --limit 0 and replay read in pages ---------------------------------

N_ROWS = 1_200  # more than two of iter_events' default pages (500)


def stored_rows(n: int) -> list[StoredEvent]:
    """``n`` rows as export() gives them, oldest first: every status, reasons with control characters and
    of varied widths, a foreign row, a pruned one."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(n):
        status = (DONE, FAILED, RECEIVED, REJECTED)[i % 4]
        key = f"foreign:{i}" if i % 97 == 0 else f"paid:2021000000000001:T{i}"
        at = start + timedelta(seconds=i)
        rows.append(StoredEvent(
            key=key, trade_key=f"2021000000000001:T{i}", kind="paid", status=status, out_trade_no=f"T{i % 50}",
            trade_no=f"2024T{i}", trade_status="TRADE_SUCCESS", notify_id=f"n-{i}", charset="utf-8",
            raw_body=None if i % 11 == 0 else f"out_trade_no=T{i}&subject=测试".encode() * (1 + i % 3),
            fields={"out_trade_no": f"T{i}", "subject": "测试"},
            reason={REJECTED: "unknown_order" + "x" * (i % 7), DONE: None}.get(status, f"r\x1b[31m{i}"),
            error="RuntimeError: boom" if status == FAILED else None, attempts=1 + i % 5,
            received_at=at, updated_at=at + timedelta(seconds=1),
            lease_owner="w1" if status == RECEIVED else None,
            lease_until=at + timedelta(seconds=60) if status == RECEIVED else None))
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def big_ledger(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if backend == "sqlite":
        ledger: Ledger = SQLiteLedger(str(tmp_path / "big.sqlite3"))
    else:
        from alipay_middleware.ledger.postgres import PostgresLedger

        table = f"alipay_test_{uuid.uuid4().hex[:12]}"
        ledger = PostgresLedger(request.getfixturevalue("postgres_url"), table=table)
        request.addfinalizer(lambda: drop_postgres_table(table))
    assert ledger.import_events(stored_rows(N_ROWS)) == (N_ROWS, 0)
    yield ledger
    ledger.close()


def count_reads(target: Any, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each read (one query per page) the ledger ``target`` (an instance or a class) begins: SQLite's
    ``_tx(write=False)``, PostgreSQL's ``_tx(single=True)``; the constructor's schema transaction is not one."""
    began: list[object] = []
    original = target._tx

    def counted(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("write") is False or kwargs.get("single") is True:
            began.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, "_tx", counted)
    return began


@pytest.mark.parametrize("status", [None, FAILED])
def test_iter_events_reads_page_by_page_in_the_order_of_events(big_ledger: Ledger, status: str | None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    everything = big_ledger.events(status=status, limit=-1)
    reads = count_reads(big_ledger, monkeypatch)
    newest_first = big_ledger.iter_events(status=status, page=100)
    assert next(newest_first) == everything[0] and len(reads) == 1  # lazy: one page read so far
    assert [everything[0], *newest_first] == everything
    assert len(reads) == len(everything) // 100 + 1  # full pages, then a short (or empty) one
    assert list(big_ledger.iter_events(status=status, oldest_first=True, page=100)) == everything[::-1]
    order = list(big_ledger.iter_events(status=status, out_trade_no="T7", page=3))
    assert order == big_ledger.events(status=status, out_trade_no="T7", limit=-1) and order
    bare = list(big_ledger.iter_events(status=status, page=100, bodies=False))  # for listings: no body, no fields
    assert bare == [dataclasses.replace(e, raw_body=None, fields={}) for e in everything]


def test_list_by_status_uses_the_status_index_for_new_and_existing_sqlite_ledgers(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    SQLiteLedger(path).close()
    with sqlite3.connect(path) as db:  # a ledger made before the index existed
        db.execute("DROP INDEX alipay_events_status_id")
    ledger = SQLiteLedger(path)  # opening it again creates the index
    try:
        ledger.import_events(stored_rows(200))
        db = ledger._connection()
        seen: list[str] = []
        db.set_trace_callback(seen.append)
        ledger.events(status=DONE, limit=10)
        ledger.events(status=FAILED, limit=-1)
        list(ledger.iter_events(status=FAILED, page=20))
        list(ledger.iter_events(status=FAILED, oldest_first=True, page=20))
        db.set_trace_callback(None)
        selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 2 + 2 * 3  # 50 failed rows in pages of 20: 3 pages each way
        for sql in selects:
            plan = " | ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX alipay_events_status_id (status=?" in plan, (sql, plan)
            assert "TEMP B-TREE" not in plan, (sql, plan)  # no sort of every row of that status
    finally:
        ledger.close()


def render_old_list(events: list[StoredEvent]) -> str:
    """What `list` printed before it streamed: the table of every event, measured and printed at once."""
    header = ("KEY", "KIND", "STATUS", "OUT_TRADE_NO", "ATTEMPTS", "UPDATED_AT", "REASON")
    rows = [[cli_output.visible(cell) for cell in (e.key, e.kind, e.status, e.out_trade_no, str(e.attempts),
                                             cli_output.when(e.updated_at), cli_output.visible(cli_events.why(e)))]
            for e in events]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in (header, *rows))


def ledger_url(ledger: Ledger) -> str:
    if isinstance(ledger, SQLiteLedger):
        return f"sqlite:///{ledger.path}"
    return f"{POSTGRES}?table={ledger.table}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("options", [[], ["--status", "failed"], ["--order", "T3"], ["--json"],
                                     ["--status", "received", "--order", "T2", "--json"]])
def test_list_limit_0_prints_what_it_did_and_reads_in_pages(big_ledger: Ledger, options: list[str],
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    status = options[options.index("--status") + 1] if "--status" in options else None
    order = options[options.index("--order") + 1] if "--order" in options else None
    events = big_ledger.events(status=status, out_trade_no=order, limit=-1)
    if "--json" in options:
        expected = "".join(cli_output.json_line(cli_output.as_json(e)) + "\n" for e in events)
    else:
        expected = render_old_list(events)
    reads = count_reads(type(big_ledger), monkeypatch)
    assert cli.main(["list", "--limit", "0", "--ledger", ledger_url(big_ledger), *options]) == 0
    assert capsys.readouterr().out == expected
    pages = len(events) // 500 + 1
    assert len(reads) == (pages if "--json" in options else 2 * pages)  # the table: measured, then printed


def test_list_of_nothing_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SQLiteLedger(str(tmp_path / "empty.sqlite3")).close()
    assert cli.main(["list", "--limit", "0", "--ledger", f"sqlite:///{tmp_path / 'empty.sqlite3'}"]) == 0
    assert capsys.readouterr().out == "no events\n"


@pytest.mark.parametrize("status", [None, FAILED, REJECTED])
def test_replay_selects_oldest_first_page_by_page(big_ledger: Ledger, status: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = [status] if status else [FAILED, RECEIVED]
    old = sorted((e for s in statuses for e in big_ledger.events(status=s, limit=-1)
                  if not e.key.startswith("foreign:")), key=lambda e: e.received_at)
    reads = count_reads(big_ledger, monkeypatch)
    selected, unknown = cli_events._select(big_ledger, argparse.Namespace(key=None, status=status))
    assert unknown == [] and next(selected) == old[0]
    assert len(reads) == len(statuses)  # one page of each status so far, not the whole ledger
    assert [old[0], *selected] == old
