"""The operator's commands never put a raw control character on the terminal.

Signed fields are chosen by whoever created the order or paid it: a ``subject`` carrying ``ESC[2J`` clears
the operator's screen, C1 ``0x9b`` is CSI on some terminals, and U+202E makes a line read backwards. The
events here are recorded through the real notify path (WSGI front, SQLite ledger), then shown with
``list``, ``list --json``, ``show``, ``show --raw``, ``replay`` and ``reconcile``: every such character is
shown as a visible escape, JSON stays valid and round-trips, Chinese text is printed as it is.
"""

from __future__ import annotations

import json
import logging
import sys
import types
import unicodedata
from typing import Any

import pytest

from alipay_middleware import Alipay
from alipay_middleware.callbacks.confirm import Confirmation
from alipay_middleware.cli import main
from conftest import APP_ID, Recorder, WSGIClient, inner_wsgi, notify_fields, signed_body

NOTIFY = "/alipay/notify"
HOSTILE = "绿茶\x1b[2J\x07\x9b31m\u202e反转\x7f\u2066x\u2069\r\n伪造: done"
ORDER = "E1\x1b]0;pwned\x07"  # an OSC window-title sequence in the order number itself
HOSTILE_ESCAPED = "绿茶\\x1b[2J\\x07\\x9b31m\\u202e反转\\x7f\\u2066x\\u2069\\r\\n伪造: done"
# A traceback keeps its line breaks, including those of the exception's message.
TRACEBACK_ESCAPED = "绿茶\\x1b[2J\\x07\\x9b31m\\u202e反转\\x7f\\u2066x\\u2069\\r\n"
ORDER_ESCAPED = "E1\\x1b]0;pwned\\x07"
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def raw_controls(text: str) -> list[str]:
    """Every control or format character in ``text`` other than the line feeds that end lines."""
    return [f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in UNSAFE]


@pytest.fixture
def recorded(make_alipay: Any, keys: Any, tmp_path: Any) -> dict[str, Any]:
    """A done event and a failed one (its hook raised, quoting the subject), both with the hostile
    subject and body, posted as Alipay would: percent-encoded, signed, through the WSGI front."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    alipay = make_alipay(ledger=ledger_url, orders={ORDER: "9.90", "E2": "9.90"})
    calls = Recorder()

    def paid(event: Any) -> None:
        if event.out_trade_no == "E2":
            raise RuntimeError(f"cannot ship {event.raw['subject']}")
        calls(event)

    alipay.on_paid(paid)
    client = WSGIClient(alipay.wsgi(inner_wsgi))
    done_body = signed_body(notify_fields(ORDER, subject=HOSTILE, body=HOSTILE), keys.alipay)
    failed_body = signed_body(notify_fields("E2", subject=HOSTILE, body=HOSTILE), keys.alipay)
    assert client.request("POST", NOTIFY, done_body).status == 200
    assert client.request("POST", NOTIFY, failed_body).status == 500
    assert len(calls.calls) == 1 and calls.calls[0].raw["subject"] == HOSTILE
    return {"url": ledger_url, "alipay": alipay, "done": f"paid:{APP_ID}:{ORDER}", "failed": f"paid:{APP_ID}:E2"}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(text: str) -> None:
    assert raw_controls(text) == [], text


def test_list_escapes_keys_and_order_numbers(recorded: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--ledger", recorded["url"])
    assert code == 0, err
    assert_clean(out + err)
    assert f"paid:{APP_ID}:{ORDER_ESCAPED}" in out and f"  {ORDER_ESCAPED}  " in out
    assert len(out.splitlines()) == 3  # header and two events: nothing forged a line


def test_show_escapes_fields_error_and_raw_body(recorded: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show", recorded["failed"], "--raw", "--ledger", recorded["url"])
    assert code == 0, err
    assert_clean(out + err)
    assert f"  subject = {HOSTILE_ESCAPED}\n" in out and f"  body = {HOSTILE_ESCAPED}\n" in out
    assert f"  RuntimeError: cannot ship {TRACEBACK_ESCAPED}  伪造: done\n" in out  # the hook's traceback
    assert "\n伪造: done" not in out and "绿茶" in out and "反转" in out  # Chinese intact, no forged line
    assert "raw body:" in out and "decoded as utf-8:" in out

    code, out, err = run(capsys, "show", recorded["done"], "--ledger", recorded["url"])
    assert code == 0, err
    assert_clean(out + err)
    assert f"key:          paid:{APP_ID}:{ORDER_ESCAPED}\n" in out
    assert f"out_trade_no: {ORDER_ESCAPED}\n" in out


def test_show_raw_escapes_control_bytes_in_the_body(recorded: dict[str, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A raw body holding the characters themselves, not percent-escaped (a ledger row as any sender
    could have had it stored, or written by hand)."""
    ledger = recorded["alipay"].ledger
    event = recorded["alipay"].protocol.event(notify_fields("E3", subject="x"))
    ledger.claim(event, f"subject={HOSTILE}&out_trade_no=E3\x9b".encode(), "utf-8", "worker", 600)
    code, out, err = run(capsys, "show", event.key, "--raw", "--ledger", recorded["url"])
    assert code == 0, err
    assert_clean(out + err)
    assert f"  subject={HOSTILE_ESCAPED}&out_trade_no=E3\\x9b\n" in out


def test_list_json_is_valid_has_no_raw_control_and_round_trips(recorded: dict[str, Any],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--json", "--ledger", recorded["url"])
    assert code == 0, err
    assert_clean(out + err)
    events = {e["key"]: e for e in map(json.loads, out.splitlines())}
    assert events[recorded["done"]]["fields"]["subject"] == HOSTILE  # the very characters, escaped as JSON
    assert events[recorded["done"]]["out_trade_no"] == ORDER
    assert "cannot ship " + HOSTILE in events[recorded["failed"]]["error"]
    assert "\\u009b" in out and "\\u202e" in out and "\\u007f" in out and "绿茶" in out


def test_json_escapes_characters_beyond_the_bmp_as_surrogate_pairs() -> None:
    from alipay_middleware.cli.output import json_line

    value = {"s": "tag\U000e0041 \u2028 茶 \x85"}
    line = json_line(value)
    assert_clean(line)
    assert "\\udb40\\udc41" in line and "\\u2028" in line and "\\u0085" in line and "茶" in line
    assert json.loads(line) == value


def test_replay_and_reconcile_lines_are_escaped(recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    alipay: Alipay = recorded["alipay"]
    monkeypatch.setitem(sys.modules, "escapes_shop", types.SimpleNamespace(alipay=alipay))
    code, out, err = run(capsys, "replay", "--app", "escapes_shop:alipay", "--key", recorded["done"],
                         "--key", f"paid:{ORDER}\u202e")
    assert code == 1  # the unknown key
    assert_clean(out + err)
    assert f"paid:{APP_ID}:{ORDER_ESCAPED}" in out and f"paid:{ORDER_ESCAPED}\\u202e" in out

    monkeypatch.setattr(alipay, "reconcile", lambda older_than_minutes, **options: [
        Confirmation(ORDER, "TRADE\x1b[2J", None, "not_paid")])
    code, out, err = run(capsys, "reconcile", "--app", "escapes_shop:alipay")
    assert code == 0, err
    assert_clean(out + err)
    assert f"{ORDER_ESCAPED}  trade_status=TRADE\\x1b[2J" in out


def test_log_lines_on_the_terminal_are_escaped() -> None:
    """The CLI's own log handler (replay and reconcile log refusals with out_trade_no)."""
    from alipay_middleware.cli.output import EscapingFormatter

    record = logging.LogRecord("alipay_middleware", logging.WARNING, __file__, 1,
                               "rejected out_trade_no=%s", (ORDER + "\n伪造",), None)
    text = EscapingFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert text == f"WARNING alipay_middleware: rejected out_trade_no={ORDER_ESCAPED}\\n伪造"
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        record.exc_info = sys.exc_info()
    lines = EscapingFormatter().format(record).split("\n")
    assert_clean("\n".join(lines))
    assert "\n".join(lines[-2:]) == f"RuntimeError: {TRACEBACK_ESCAPED}伪造: done"


def test_a_real_process_writes_no_control_byte(recorded: dict[str, Any]) -> None:
    """``python -m alipay_middleware`` as the operator runs it: the bytes written to stdout."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "ALIPAY_LEDGER"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    for args in (["list"], ["show", recorded["failed"], "--raw"], ["list", "--json"]):
        result = subprocess.run([sys.executable, "-m", "alipay_middleware", *args, "--ledger", recorded["url"]],
                                capture_output=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        text = result.stdout.decode("utf-8")
        assert_clean(text + result.stderr.decode("utf-8"))
        assert "绿茶" in text or "E1" in text
