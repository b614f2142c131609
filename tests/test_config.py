"""Misconfiguration fails at start-up with a message that says how to fix it; keys never leak."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from alipay_middleware import Alipay, SQLiteLedger
from conftest import APP_ID, VECTORS, Keys, make_config

REQ = VECTORS / "synthetic-request-sign"


def test_config_repr_and_errors_never_show_key_material(keys: Keys):
    config = make_config(keys)
    body = keys.app_private_pem.splitlines()[1]
    assert body not in repr(config) and "PRIVATE" not in repr(config)
    alipay = Alipay(config, ledger=":memory:")
    assert body not in repr(alipay) and body not in repr(alipay.protocol.signer)
    with pytest.raises(ValueError) as caught:
        make_config(keys, app_private_key=keys.app_private_pem[:300] + "\n-----END RSA PRIVATE KEY-----\n")
    assert body not in str(caught.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"app_id": "abc"}, "16-digit app id"),
        ({"app_id": 2021000000000001}, "16-digit app id"),
        ({"sign_type": "RSA256"}, "sign_type must be 'RSA2'"),
        ({"sign_type": "MD5"}, "sign_type must be 'RSA2'"),
        ({"gateway": "openapi.alipay.com/gateway.do"}, r"gateway must be an absolute http\(s\) URL"),
        ({"seller_id": "12345"}, "seller_id must be the 16-digit 2088"),
        ({"notify_url": "/alipay/notify"}, r"notify_url must be an absolute http\(s\) URL"),
        ({"return_url": "https://shop.example/alipay/return?x=1"}, "must not carry a query string"),
        ({"app_private_key": ""}, "app_private_key is empty"),
        ({"app_private_key": "not a key at all!"}, "neither PEM nor base64"),
        ({"app_private_key": "QUJD"}, "app_private_key is not an RSA key"),
        ({"alipay_public_key": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAhL3pWP55B1fF"},
         "alipay_public_key is not valid base64|alipay_public_key is not an RSA key"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_bad_settings_are_value_errors_naming_the_setting(keys, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(keys, **overrides)


def test_public_key_where_the_private_key_belongs(keys):
    with pytest.raises(ValueError, match="app_private_key holds a public key"):
        make_config(keys, app_private_key=keys.alipay_public_pem)


def test_private_key_where_alipay_public_key_belongs(keys):
    with pytest.raises(ValueError, match="alipay_public_key holds a private key"):
        make_config(keys, alipay_public_key=keys.alipay.export_key().decode())


def test_own_public_key_configured_as_alipay_key_is_named(keys):
    own_public = keys.app.public_key().export_key().decode()
    with pytest.raises(ValueError, match="alipay_public_key is your app's own public key"):
        make_config(keys, alipay_public_key=own_public)
    bare = "".join(own_public.splitlines()[1:-1])
    with pytest.raises(ValueError, match="own public key"):
        make_config(keys, alipay_public_key=bare)


def test_key_file_path_instead_of_key_text(keys):
    with pytest.raises(ValueError, match="looks like a file path"):
        make_config(keys, app_private_key=str(REQ / "app-private-key.pem"))


@pytest.mark.parametrize("shape", ["app-private-key.pem", "app-private-key-pkcs8.pem",
                                   "app-private-key-no-wrapper.pem", "app-private-key-pkcs8-no-wrapper.pem"])
def test_all_four_private_key_shapes_are_accepted(keys, shape):
    text = (REQ / shape).read_text()
    assert make_config(keys, app_private_key=text)._private.has_private()
    # keys pasted with surrounding whitespace or Windows line ends still load
    assert make_config(keys, app_private_key="\n  " + text.replace("\n", "\r\n") + "  \n")._private.has_private()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"notify_path": "alipay/notify"}, "notify_path must be a URL path"),
        ({"return_path": "/a b"}, "return_path must be a URL path"),
        ({"notify_path": "/same", "return_path": "/same"}, "must differ"),
        ({"max_body": 10}, "max_body must be an int"),
        ({"max_body": 2**30}, "max_body must be an int"),
        ({"lease_seconds": 0}, "lease_seconds must be between"),
        ({"hook_threads": 0}, "hook_threads must be between"),
        ({"ledger": "mysql://shop:secret@localhost/test"}, "unsupported ledger setting"),
        ({"ledger": "sqlite:///"}, "names no file"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)),
)
def test_bad_alipay_arguments_fail_at_construction(keys, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Alipay(make_config(keys), **kwargs)


def test_config_of_the_wrong_type(keys):
    with pytest.raises(TypeError, match="must be an OpenApiConfig"):
        Alipay({"app_id": APP_ID})  # type: ignore[arg-type]


def test_unwritable_ledger_location_fails_at_start_up(keys, tmp_path):
    with pytest.raises(ValueError, match="cannot open the SQLite ledger"):
        Alipay(make_config(keys), ledger=f"sqlite:///{tmp_path}/missing-dir/ledger.sqlite3")


def test_ledger_table_name_is_checked():
    with pytest.raises(ValueError, match="plain SQL identifier"):
        SQLiteLedger(":memory:", table="events; DROP TABLE x")


def test_hook_registration_errors(keys):
    alipay = Alipay(make_config(keys), ledger=":memory:")

    @alipay.on_paid
    def first(event):
        pass

    with pytest.raises(ValueError, match="on_paid is already registered .*first"):
        alipay.on_paid(lambda event: None)
    with pytest.raises(TypeError, match="must accept exactly one argument"):
        alipay.on_closed(lambda: None)
    with pytest.raises(TypeError, match="must decorate a function"):
        alipay.on_refunded("paid")  # type: ignore[arg-type]
    alipay.order_amount(lambda out_trade_no: Decimal("1.00"))
    with pytest.raises(ValueError, match="order_amount is already registered"):
        alipay.order_amount(lambda out_trade_no: None)
    alipay.close()


def test_start_up_warns_when_orders_and_payments_are_unchecked(keys, caplog):
    alipay = Alipay(make_config(keys), ledger=":memory:")
    app = alipay.wsgi(lambda environ, start_response: [])
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        app({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http", "HTTP_HOST": "x"},
            lambda *a: None)
        app({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http", "HTTP_HOST": "x"},
            lambda *a: None)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("NOT checked" in m for m in messages) == 1
    assert sum("no @alipay.on_paid" in m for m in messages) == 1
    alipay.close()


def test_no_warning_when_everything_is_registered(keys, caplog):
    alipay = Alipay(make_config(keys), ledger=":memory:", allowed_hosts=["shop.example"])
    alipay.order_amount(lambda out_trade_no: None)
    alipay.on_paid(lambda event: None)
    with caplog.at_level(logging.WARNING, logger="alipay_middleware"):
        alipay.start()
    assert caplog.records == []
    alipay.close()


def test_sandbox_gateway_is_accepted(keys):
    from alipay_middleware import SANDBOX_GATEWAY

    assert make_config(keys, gateway=SANDBOX_GATEWAY).gateway == "https://openapi-sandbox.dl.alipaydev.com/gateway.do"


def test_ledger_urls_never_echo_a_password(keys):
    with pytest.raises(ValueError) as caught:
        Alipay(make_config(keys), ledger="mysql://shop:s3cret-pw@db.internal/shop")
    assert "s3cret-pw" not in str(caught.value)
    # An unreachable PostgreSQL fails at start-up, naming the server but not the password.
    pytest.importorskip("psycopg")
    with pytest.raises(ValueError) as caught:
        Alipay(make_config(keys), ledger="postgresql://shop:s3cret-pw@127.0.0.1:1/shop?connect_timeout=2")
    assert "127.0.0.1" in str(caught.value) and "s3cret-pw" not in str(caught.value)


def test_postgresql_url_opens_the_postgres_ledger(keys, postgres_url):
    from alipay_middleware.ledger.postgres import PostgresLedger

    alipay = Alipay(make_config(keys), ledger=postgres_url)
    try:
        assert isinstance(alipay.ledger, PostgresLedger)
        assert alipay.ledger.events(limit=1) is not None
    finally:
        alipay.close()
