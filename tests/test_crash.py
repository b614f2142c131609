"""A worker killed (SIGKILL) in the middle of a hook: the event is not lost and not done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware import Alipay
from alipay_middleware.ledger import DONE, RECEIVED
from conftest import WSGIClient, make_config, notify_fields, signed_body

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from conftest import WSGIClient
    from alipay_middleware import Alipay, OpenApiConfig

    config = OpenApiConfig(app_id="2021000000000001", app_private_key=os.environ["APP_KEY"],
                           alipay_public_key=os.environ["ALIPAY_PUBLIC"], seller_id="2088000000000001")
    if os.environ.get("POSTGRES"):
        from alipay_middleware.ledger.postgres import PostgresLedger
        ledger = PostgresLedger(os.environ["POSTGRES"], table=os.environ["TABLE"])
    else:
        ledger = "sqlite:///" + os.environ["LEDGER"]
    alipay = Alipay(config, ledger=ledger, lease_seconds=1)
    marker = Path(os.environ["MARKER"])

    @alipay.on_paid
    def paid(event):
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # killed here

    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    client.request("POST", "/alipay/notify", Path(os.environ["BODY"]).read_bytes())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_during_hook_then_resend_after_the_lease(keys, tmp_path: Path, backend, request):
    ledger = tmp_path / "ledger.sqlite3"
    postgres: dict[str, str] = {}
    if backend == "postgres":
        from conftest import drop_postgres_table

        postgres = {"POSTGRES": request.getfixturevalue("postgres_url"), "TABLE": f"alipay_crash_{os.getpid()}"}
        request.addfinalizer(lambda: drop_postgres_table(postgres["TABLE"]))
    body = signed_body(notify_fields("K1"), keys.alipay)
    (tmp_path / "body").write_bytes(body)
    marker = tmp_path / "hook-started"
    env = dict(os.environ, TESTS_DIR=str(Path(__file__).parent), APP_KEY=keys.app_private_pem,
               ALIPAY_PUBLIC=keys.alipay_public_pem, LEDGER=str(ledger), MARKER=str(marker),
               BODY=str(tmp_path / "body"), **postgres)
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
    try:
        for _ in range(600):  # bounded wait for the hook to start (up to 60 s)
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the child never reached its hook"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()

    if postgres:
        from alipay_middleware.ledger.postgres import PostgresLedger

        store: Any = PostgresLedger(postgres["POSTGRES"], table=postgres["TABLE"])
    else:
        store = f"sqlite:///{ledger}"
    alipay = Alipay(make_config(keys), ledger=store, lease_seconds=1)
    calls = []
    alipay.on_paid(calls.append)
    client = WSGIClient(alipay.wsgi(lambda environ, start_response: []))
    [stored] = alipay.ledger.events()
    assert stored.status == RECEIVED and stored.raw_body == body  # recorded before the hook, kept by the crash
    response = client.request("POST", "/alipay/notify", body)
    if response.status == 503:  # the dead worker's lease had not run out yet
        time.sleep(1.1)
        response = client.request("POST", "/alipay/notify", body)
    assert (response.status, response.body) == (200, b"success")
    assert len(calls) == 1 and calls[0].attempt == 2
    resend = client.request("POST", "/alipay/notify", body)
    assert (resend.status, resend.body) == (200, b"success")
    assert len(calls) == 1
    assert alipay.ledger.events()[0].status == DONE
    alipay.close()
    alipay.close()
