"""Mistakes a newcomer makes that used to get silence or a misleading message (issue 13, section 1)."""

from __future__ import annotations

import pytest

from alipay_middleware import LegacyConfig
from conftest import MD5_KEY, PARTNER, Keys, make_config

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
