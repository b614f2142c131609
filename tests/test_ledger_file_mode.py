"""A new SQLite ledger is owner-only (0600), its -wal and -shm files too; an existing one that group or
others can read is named in a WARNING with the ``chmod 600`` that fixes it. The file holds raw
notification bodies with buyer ids; with the umask's usual 022 SQLite used to create it 0644.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alipay_middleware import Alipay
from alipay_middleware.cli import main
from alipay_middleware.ledger import SQLiteLedger, open_ledger
from conftest import make_config, notify_fields

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode_of(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under ``request.param`` as the process umask, restored afterwards."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o002, 0o277], indirect=True,
                         ids=["umask-022", "umask-000", "umask-002", "umask-277"])
def test_a_new_ledger_and_its_wal_and_shm_are_owner_only(tmp_path: Path, umask: int, keys: Any) -> None:
    path = tmp_path / "ledger.sqlite3"
    alipay = Alipay(make_config(keys), ledger=f"sqlite:///{path}")
    try:
        event = alipay.protocol.event(notify_fields("T1"))
        alipay.ledger.claim(event, b"raw body with buyer_id", "utf-8", "worker", 600)  # a write: WAL in use
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(mode_of(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        alipay.close()


def test_a_new_ledger_is_still_usable_and_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite3"
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        first = SQLiteLedger(str(path))
        first.close()
        again = SQLiteLedger(str(path))  # existing and 0600: nothing to say
        again.close()
    assert "chmod" not in caplog.text
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o666, 0o602, 0o620], ids=oct)  # 0o602, 0o620: writable
def test_an_existing_readable_ledger_is_warned_about(tmp_path: Path, loose: int,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite3"
    SQLiteLedger(str(path)).close()
    os.chmod(path, loose)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        open_ledger(f"sqlite:///{path}").close()
    [record] = [r for r in caplog.records if "chmod" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.name == "alipay_middleware"
    message = record.getMessage()
    assert str(path) in message and f"chmod 600 {path}" in message and f"mode {loose:04o}" in message
    assert mode_of(path) == loose  # warned, not changed behind the operator's back


def test_a_leftover_readable_wal_file_is_named_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite3"
    holder = SQLiteLedger(str(path))  # keeps -wal and -shm in place
    try:
        os.chmod(f"{path}-wal", 0o644)
        with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
            SQLiteLedger(str(path)).close()
        assert f"chmod 600 {path}-wal" in caplog.text
    finally:
        holder.close()


def test_the_cli_warns_the_operator_too(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.sqlite3"
    SQLiteLedger(str(path)).close()
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        assert main(["list", "--ledger", f"sqlite:///{path}"]) == 0
    assert f"chmod 600 {path}" in caplog.text


def test_memory_ledgers_touch_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        open_ledger(":memory:").close()
        open_ledger("sqlite:///:memory:").close()
    assert list(tmp_path.iterdir()) == []
    assert "chmod" not in caplog.text


def test_a_missing_directory_is_still_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot open the SQLite ledger"):
        SQLiteLedger(str(tmp_path / "no-such-dir" / "ledger.sqlite3"))
