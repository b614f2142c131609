"""Mistakes a newcomer makes that used to get silence or a misleading message (issue 13, section 1)."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import RSA
from werkzeug.test import EnvironBuilder, run_wsgi_app

from alipay_middleware import Alipay, LegacyConfig, cli
from alipay_middleware.callbacks import alerts
from alipay_middleware.wire.keys import load_private_key, load_public_key
from conftest import (
    MD5_KEY,
    PARTNER,
    ASGIClient,
    Keys,
    inner_asgi,
    inner_wsgi,
    make_config,
    notify_fields,
    signed_body,
)

# -- 1.4: a gateway URL without its path -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "http://127.0.0.1:8001/", "https://openapi.alipay.com"])
def test_gateway_without_path_is_refused_naming_the_form(keys: Keys, url: str) -> None:
    with pytest.raises(ValueError, match="no path") as raised:
        make_config(keys, gateway=url)
    assert "https://openapi.alipay.com/gateway.do" in str(raised.value)
    assert "http://127.0.0.1:8001/gateway.do" in str(raised.value)
    with pytest.raises(ValueError, match="no path"):
        LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001/gateway.do", "https://openapi.alipay.com/gateway.do",
                                 "https://mapi.alipay.com/gateway.do?_input_charset=utf-8"])
def test_gateway_with_path_is_accepted(keys: Keys, url: str) -> None:
    assert make_config(keys, gateway=url).gateway == url
    assert LegacyConfig(partner=PARTNER, key=MD5_KEY, gateway=url).gateway == url


# -- 1.6: a setting of the wrong type says which type it wants and which it got ----------------------------

OPENAPI_WRONG_TYPES = [
    ("app_id", 2021000000000001, "a str", "int"),
    ("app_private_key", 12345, "a str or bytes", "int"),
    ("alipay_public_key", 12345, "a str or bytes or None", "int"),
    ("sign_type", 2, "a str", "int"),
    ("gateway", b"https://openapi.alipay.com/gateway.do", "a str", "bytes"),
    ("seller_id", 2088000000000001, "a str or None", "int"),
    ("notify_url", b"https://shop.example/alipay/notify", "a str or None", "bytes"),
    ("return_url", 1, "a str or None", "int"),
]


SECRET_SETTINGS = {"app_private_key", "alipay_public_key", "key", "private_key"}


def assert_names_both_types(message: str, setting: str, value: object, wanted: str, given: str) -> None:
    """Exactly the types wanted (``a str`` is not ``a str or None``), the type given, and the value unless
    the setting is a secret."""
    assert message.startswith(f"{setting} must be ")
    assert re.search(rf"(\(|must be ){re.escape(wanted)}\)?, got {re.escape(given)}\b", message), message
    assert (f": {value!r:.80}" in message) is (setting not in SECRET_SETTINGS), message


@pytest.mark.parametrize("setting,value,wanted,given", OPENAPI_WRONG_TYPES, ids=[row[0] for row in OPENAPI_WRONG_TYPES])
def test_openapi_setting_of_the_wrong_type_names_both_types(keys: Keys, setting: str, value: object,
                                                            wanted: str, given: str) -> None:
    with pytest.raises(TypeError) as raised:
        make_config(keys, **{setting: value})
    assert_names_both_types(str(raised.value), setting, value, wanted, given)
    assert isinstance(raised.value, ValueError)  # as every other bad setting


LEGACY_WRONG_TYPES = [
    ("partner", 2088000000000002, "a str", "int"),
    ("key", 12345, "a str or None", "int"),
    ("sign_type", 5, "a str", "int"),
    ("private_key", 1, "a str or bytes or None", "int"),
    ("alipay_public_key", 1, "a str or bytes or None", "int"),
    ("seller_id", 2088000000000002, "a str or None", "int"),
    ("seller_email", 1, "a str or None", "int"),
    ("gateway", 1, "a str", "int"),
    ("verify_notify_id", "false", "True or False", "str"),
    ("input_charset", 8, "a str", "int"),
    ("notify_url", 1, "a str or None", "int"),
    ("return_url", 1, "a str or None", "int"),
    ("coupon_policy", True, "a str", "bool"),
    ("verify_timeout", "10", "an int or a float", "str"),
]


@pytest.mark.parametrize("setting,value,wanted,given", LEGACY_WRONG_TYPES, ids=[row[0] for row in LEGACY_WRONG_TYPES])
def test_legacy_setting_of_the_wrong_type_names_both_types(setting: str, value: object, wanted: str,
                                                           given: str) -> None:
    settings: dict[str, Any] = {"partner": PARTNER, "key": MD5_KEY, setting: value}
    with pytest.raises(TypeError) as raised:
        LegacyConfig(**settings)
    assert_names_both_types(str(raised.value), setting, value, wanted, given)


ALIPAY_WRONG_TYPES = [
    ("notify_path", b"/alipay/notify", "a str", "bytes"),
    ("return_path", 1, "a str", "int"),
    ("max_body", "65536", "an int", "str"),
    ("max_body", 65536.0, "an int", "float"),
    ("lease_seconds", "600", "an int or a float", "str"),
    ("hook_threads", "8", "an int", "str"),
    ("hook_threads", True, "an int", "bool"),
    ("trusted_proxies", "1", "an int", "str"),
    ("confirm_returns", 1, "True or False", "int"),
    ("return_checks", "2", "an int or None", "str"),
    ("allowed_hosts", "shop.example", "a list or tuple", "str"),
    ("ledger", 5, "a URL string or a Ledger", "int"),
]


@pytest.mark.parametrize("setting,value,wanted,given", ALIPAY_WRONG_TYPES,
                         ids=[f"{row[0]}-{type(row[1]).__name__}" for row in ALIPAY_WRONG_TYPES])
def test_alipay_argument_of_the_wrong_type_names_both_types(keys: Keys, setting: str, value: object,
                                                            wanted: str, given: str) -> None:
    with pytest.raises(TypeError) as raised:
        Alipay(make_config(keys), **{"ledger": ":memory:", setting: value})
    message = str(raised.value)
    assert message.startswith(f"{setting} must be ") and wanted in message
    assert given in message


def test_a_secret_of_the_wrong_type_is_not_shown(keys: Keys) -> None:
    with pytest.raises(TypeError) as raised:
        LegacyConfig(partner=PARTNER, key=31415926535897932384626433832795)  # type: ignore[arg-type]
    assert "got int" in str(raised.value) and "31415926" not in str(raised.value)


# -- 1.5: a PEM on one line with literal \n (the .env form) ----------------------------------------------

def env_form(pem: str) -> str:
    """``pem`` as a .env file holds it: one line, each line break written as the two characters ``\\n``."""
    one_line = pem.strip().replace("\n", "\\n")
    assert "\n" not in one_line
    return one_line


@pytest.mark.parametrize("pkcs", [1, 8])
def test_one_line_private_key_with_literal_newlines_is_accepted(keys: Keys, pkcs: int) -> None:
    pem = keys.app.export_key(pkcs=pkcs).decode()
    config = make_config(keys, app_private_key=env_form(pem))
    assert config._private == keys.app
    assert make_config(keys, app_private_key=env_form(pem).replace("\\n", "\\r\\n"))._private == keys.app


def test_one_line_public_key_with_literal_newlines_is_accepted(keys: Keys) -> None:
    config = make_config(keys, alipay_public_key=env_form(keys.alipay_public_pem))
    assert config._public == keys.alipay.public_key()


def test_one_line_legacy_rsa_keys_are_accepted() -> None:
    own, alipay = RSA.generate(1024), RSA.generate(1024)
    config = LegacyConfig(partner=PARTNER, sign_type="RSA", private_key=env_form(own.export_key().decode()),
                          alipay_public_key=env_form(alipay.public_key().export_key().decode()))
    reference = LegacyConfig(partner=PARTNER, sign_type="RSA", private_key=own.export_key().decode(),
                             alipay_public_key=alipay.public_key().export_key().decode())
    assert config._signer.sign(b"x") == reference._signer.sign(b"x")


def test_a_damaged_one_line_key_still_gets_the_specific_error(keys: Keys) -> None:
    damaged = env_form(keys.app_private_pem)[:400] + "\\n-----END RSA PRIVATE KEY-----"
    with pytest.raises(ValueError, match="app_private_key is not an RSA key") as raised:
        make_config(keys, app_private_key=damaged)
    assert keys.app_private_pem.splitlines()[1] not in str(raised.value)


# -- 1.1: a wrong key or sign_type gets a WARNING with the likely causes, rate-limited ---------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(alerts, "REJECTIONS", alerts.RateLimitedWarnings(clock=fake))
    return fake


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("alipay notify rejected")]


def test_wrong_alipay_key_gets_a_warning_with_the_likely_causes(keys: Keys, make_alipay: Callable[..., Alipay],
                                                                 mount: Callable[..., Any], clock: FakeClock,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = mount(make_alipay(orders={"T1": "9.90"}))
    stranger = RSA.generate(2048)  # the sandbox's key, say, while the config has production's
    with caplog.at_level(logging.INFO, logger="alipay_middleware"):
        response = client.request("POST", "/alipay/notify", signed_body(notify_fields(), stranger))
    assert response.status == 400
    [warning] = warnings_of(caplog)
    assert "reason=bad_signature" in warning
    for cause in ("alipay_public_key", "sandbox", "own public key", "sign_type"):
        assert cause in warning


def test_another_sign_type_gets_a_warning(keys: Keys, make_alipay: Callable[..., Alipay],
                                          mount: Callable[..., Any], clock: FakeClock,
                                          caplog: pytest.LogCaptureFixture) -> None:
    client = mount(make_alipay(orders={"T1": "9.90"}))
    body = signed_body(notify_fields(sign_type="RSA"), keys.alipay, sign_type="RSA")
    with caplog.at_level(logging.INFO, logger="alipay_middleware"):
        response = client.request("POST", "/alipay/notify", body)
    assert response.status == 400
    [warning] = warnings_of(caplog)
    assert "reason=sign_type_mismatch" in warning and "set sign_type" in warning


def test_a_flood_of_bad_notifications_gives_a_bounded_number_of_warnings(
        keys: Keys, make_alipay: Callable[..., Alipay], mount: Callable[..., Any], clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    client = mount(make_alipay(orders={"T1": "9.90"}))
    stranger = RSA.generate(1024)
    body = signed_body(notify_fields(), stranger)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        for _ in range(1000):
            assert client.request("POST", "/alipay/notify", body).status == 400
        assert len(warnings_of(caplog)) == 1  # the clock stands still: one WARNING for the reason
        clock.now += 59.0
        client.request("POST", "/alipay/notify", body)
        assert len(warnings_of(caplog)) == 1
        clock.now += 1.0  # a minute after the first: the next WARNING counts the suppressed ones
        client.request("POST", "/alipay/notify", body)
    first, second = warnings_of(caplog)
    assert "more since the last" not in first and "; 1000 more since the last were logged at INFO" in second


# -- 1.2: notify_url/return_url whose path is not where the middleware answers ----------------------------

def first_requests(alipay: Alipay, front_kind: str, prefix: str, count: int = 2) -> None:
    """``count`` GET requests to the app under the mount ``prefix`` (SCRIPT_NAME / root_path)."""
    if front_kind == "wsgi":
        app = alipay.wsgi(inner_wsgi)
        for _ in range(count):
            builder = EnvironBuilder(path="/", base_url=f"http://shop.example{prefix}/")
            environ = builder.get_environ()
            builder.close()
            assert environ["SCRIPT_NAME"] == prefix
            assert run_wsgi_app(app, environ, buffered=True)[1].startswith("200")
    else:
        client = ASGIClient(alipay.asgi(inner_asgi))
        try:
            for _ in range(count):
                assert client.request("GET", "/", root_path=prefix).status == 200
        finally:
            client.close()


def mount_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "this middleware answers at" in r.getMessage()]


@pytest.mark.parametrize("prefix", ["", "/shop"])
def test_callback_urls_at_the_mounted_paths_give_no_warning(keys: Keys, make_alipay: Callable[..., Alipay],
                                                            front_kind: str, prefix: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    alipay = make_alipay(config={"notify_url": f"https://shop.example{prefix}/alipay/notify",
                                 "return_url": f"https://shop.example{prefix}/alipay/return"})
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        first_requests(alipay, front_kind, prefix)
    assert mount_warnings(caplog) == []


@pytest.mark.parametrize("prefix,notify_url,configured,mounted", [
    ("", "https://shop.example/pay/notify", "/pay/notify", "/alipay/notify"),
    ("/shop", "https://shop.example/alipay/notify", "/alipay/notify", "/shop/alipay/notify"),
])
def test_notify_url_elsewhere_than_the_mounted_path_warns_once(keys: Keys, make_alipay: Callable[..., Alipay],
                                                               front_kind: str, prefix: str, notify_url: str,
                                                               configured: str, mounted: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    alipay = make_alipay(config={"notify_url": notify_url,
                                 "return_url": f"https://shop.example{prefix}/alipay/return"})
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        first_requests(alipay, front_kind, prefix)
    [warning] = mount_warnings(caplog)  # once, at the first request
    assert f"notify_url's path is {configured!r} but this middleware answers at {mounted!r}" in warning
    assert "Change notify_url" in warning and "notify_path" in warning
    if prefix:
        assert f"mount prefix {prefix!r}" in warning


@pytest.mark.parametrize("prefix", ["", "/shop"])
def test_return_url_elsewhere_than_the_mounted_path_warns(keys: Keys, make_alipay: Callable[..., Alipay],
                                                          front_kind: str, prefix: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    alipay = make_alipay(config={"notify_url": f"https://shop.example{prefix}/alipay/notify",
                                 "return_url": "https://shop.example/thanks"})
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        first_requests(alipay, front_kind, prefix)
    [warning] = mount_warnings(caplog)
    assert f"return_url's path is '/thanks' but this middleware answers at '{prefix}/alipay/return'" in warning
    assert "Change return_url" in warning and "return_path" in warning


# -- 1.11: what the tests import on demand is in the test extra, so no test skips for want of it -----------

def test_every_module_a_test_imports_on_demand_is_in_the_test_extra() -> None:
    tests = Path(__file__).parent
    wanted = set()
    for path in tests.glob("test_*.py"):
        for module in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text(encoding="utf-8")):
            wanted.add(module.split(".")[0].replace("_", "-"))
    assert "cryptography" in wanted  # test_cert_mode.py's cross-check of the certificate parser
    pyproject = (tests.parent / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on Python 3.10
    block = re.search(r"^test = \[(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    assert block is not None
    listed = {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
              for requirement in re.findall(r"^\s*\"([^\"]+)\"", block.group(1), re.MULTILINE)}
    assert {"pytest", "psycopg", "setuptools"} <= listed  # the block was read
    assert wanted <= listed, f"add {sorted(wanted - listed)} to the test extra in pyproject.toml"


# -- 1.3: alipay-middleware keygen DIR ---------------------------------------------------------------------

def test_keygen_writes_a_2048_bit_pair_the_configs_accept(keys: Keys, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "keys"
    old_umask = os.umask(0)  # even with a umask that lets everyone read, the private key is the owner's only
    try:
        assert cli.main(["keygen", str(directory)]) == 0
    finally:
        os.umask(old_umask)
    private_pem = (directory / "app_private_key.pem").read_text()
    public_pem = (directory / "app_public_key.pem").read_text()
    line = (directory / "app_public_key.txt").read_text().strip()
    assert stat.S_IMODE((directory / "app_private_key.pem").stat().st_mode) == 0o600
    private = load_private_key(private_pem)
    assert private.size_in_bits() == 2048
    assert load_public_key(public_pem) == private.public_key() == load_public_key(line)
    assert "\n" not in line and "-----" not in line
    assert line in capsys.readouterr().out.splitlines()  # printed too, on a line of its own
    config = make_config(keys, app_private_key=private_pem)
    assert config._private == private


def test_keygen_1024_bits_for_a_legacy_rsa_partner(tmp_path: Path) -> None:
    assert cli.main(["keygen", str(tmp_path), "--bits", "1024"]) == 0
    private_pem = (tmp_path / "app_private_key.pem").read_text()
    assert load_private_key(private_pem).size_in_bits() == 1024
    LegacyConfig(partner=PARTNER, sign_type="RSA", private_key=private_pem)


@pytest.mark.parametrize("existing", ["app_private_key.pem", "app_public_key.txt"])
def test_keygen_never_overwrites(tmp_path: Path, existing: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / existing).write_text("the old key\n")
    assert cli.main(["keygen", str(tmp_path)]) == 2
    assert (tmp_path / existing).read_text() == "the old key\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing else written either
    assert "never overwritten" in capsys.readouterr().err
