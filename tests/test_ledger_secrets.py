"""A ledger setting is never echoed: not by ``open_ledger``, ``Alipay(ledger=...)``, ``PostgresLedger`` or the CLI.

A mistyped PostgreSQL setting still holds its password, and the error ends up in start-up logs and on the
operator's terminal. The errors used to quote the first 20 characters of an unrecognised setting
(``host=db password=...``, ``postgresql:/user:pw@...``), and a password with an unescaped ``@`` or ``/``
made libpq read its tail as the host, port or database, which messages and reprs name.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from alipay_middleware import Alipay
from alipay_middleware.cli import main
from alipay_middleware.ledger import Ledger, open_ledger
from conftest import make_config

# Every distinctive piece of the settings below; none may appear in any message.
PIECES = ("shopuser", "s3c", "retpw", "dbhost7", "shopdb")

BAD_SETTINGS = [
    pytest.param("postgresql:/shopuser:s3cretpw@dbhost7/shopdb", id="url-one-slash"),
    pytest.param("postgres//shopuser:s3cretpw@dbhost7/shopdb", id="url-no-colon"),
    pytest.param("postgresql:shopuser:s3cretpw@dbhost7/shopdb", id="url-no-slashes"),
    pytest.param("postgresq://shopuser:s3cretpw@dbhost7/shopdb", id="scheme-typo"),
    pytest.param(" postgresql://shopuser:s3cretpw@dbhost7/shopdb", id="leading-space"),
    pytest.param("mysql://shopuser:s3cretpw@dbhost7/shopdb", id="other-database"),
    pytest.param("sqlite://shopuser:s3cretpw@dbhost7/shopdb", id="sqlite-two-slashes"),
    pytest.param("s3cretpw", id="password-alone"),
    pytest.param("host=dbhost7 dbname=shopdb user=shopuser pasword=s3cretpw", id="keyword-typo"),
    pytest.param("host=dbhost7 dbname=shopdb password=s3c retpw", id="keyword-unquoted-space"),
    pytest.param("postgresql://shopuser:s3c@retpw@dbhost7/shopdb", id="url-at-in-password"),
    pytest.param("postgresql://shopuser:s3c/retpw@dbhost7/shopdb", id="url-slash-in-password"),
    pytest.param("postgresql://shopuser:s3c/retpw", id="url-slash-in-password-no-host"),
]


def assert_nothing_of_the_setting(text: str) -> None:
    lowered = text.lower()
    assert not [piece for piece in PIECES if piece in lowered], text


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_open_ledger_error_quotes_nothing_of_the_setting(setting: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as info:
        open_ledger(setting)
    assert_nothing_of_the_setting(str(info.value))
    assert_nothing_of_the_setting(repr(info.value))
    assert info.value.__cause__ is None or "s3c" not in str(info.value.__cause__)
    assert_nothing_of_the_setting(caplog.text)


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_alipay_construction_error_quotes_nothing_of_the_setting(setting: str, keys: Any) -> None:
    with pytest.raises(ValueError) as info:
        Alipay(make_config(keys), ledger=setting)
    assert_nothing_of_the_setting(str(info.value))


@pytest.mark.parametrize("command", [["list"], ["show", "paid:x"], ["prune", "--older-than-days", "3"],
                                     ["schema", "--apply"]], ids=["list", "show", "prune", "schema-apply"])
@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_cli_stderr_quotes_nothing_of_the_setting(setting: str, command: list[str],
                                                  capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    code = main([*command, "--ledger", setting])
    out, err = capsys.readouterr()
    assert code == 2
    assert "error:" in err
    assert_nothing_of_the_setting(out + err + caplog.text)


@pytest.mark.parametrize("setting", BAD_SETTINGS[:3] + BAD_SETTINGS[-3:])
def test_cli_from_the_environment_and_migrate(setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ALIPAY_LEDGER", setting)
    assert main(["list"]) == 2
    assert main(["migrate", "--to", f"sqlite:///{tmp_path / 'copy.sqlite3'}"]) == 2
    assert main(["migrate", "--from", f"sqlite:///{tmp_path / 'copy.sqlite3'}", "--to", setting]) == 2
    out, err = capsys.readouterr()
    assert_nothing_of_the_setting(out + err)


def test_a_mistyped_url_is_still_explained() -> None:
    with pytest.raises(ValueError, match=r"begins with postgresql://"):
        open_ledger("postgresql:/shopuser:s3cretpw@dbhost7/shopdb")
    with pytest.raises(ValueError, match=r"percent-encode"):
        open_ledger("postgresql://shopuser:s3c@retpw@dbhost7/shopdb")
    with pytest.raises(ValueError, match=r"begins with sqlite:///"):
        open_ledger("sqlite://alipay-ledger.sqlite3")


def test_keyword_form_reaches_postgresql_and_its_errors_hide_the_password() -> None:
    """libpq's keyword form, which PostgresLedger accepts, is accepted by open_ledger too; a server that
    cannot be reached is named (host, port) but the password is not."""
    pytest.importorskip("psycopg")
    with pytest.raises(ValueError, match="cannot use the PostgreSQL ledger") as info:
        open_ledger("host=127.0.0.1 port=1 dbname=shopdb user=shopuser password=s3cretpw")
    assert "s3c" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_keyword_form_opens_a_postgres_ledger(postgres_url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    keywords = make_conninfo("", **conninfo_to_dict(postgres_url))
    assert "://" not in keywords
    # create=False: the default table of the shared test database is not created here; either it is
    # there already (a ledger) or its absence is reported, which shows PostgreSQL was reached.
    try:
        ledger: Ledger = open_ledger(keywords, create=False)
    except ValueError as exc:
        assert "public.alipay_events" in str(exc) and "does not exist" in str(exc)
    else:
        assert type(ledger).__name__ == "PostgresLedger"
        ledger.close()
