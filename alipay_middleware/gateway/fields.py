"""Request and response fields both clients read and write: trade numbers, identifiers, texts, amounts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..errors import ResponseError
from ..wire.form import parse_amount

__all__ = ["amount_field", "check_identifier", "text_field", "trade_biz"]

_ID = re.compile(r"[\x21-\x7e]{1,64}")


def check_identifier(value: object, name: str) -> str:
    """``value`` if it is a trade or request number Alipay accepts (1-64 printable ASCII), else ValueError."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{name} must be 1-64 printable ASCII characters without spaces, got {value!r:.80}")
    return value


def trade_biz(out_trade_no: str | None, trade_no: str | None) -> dict[str, Any]:
    """The trade a call is about, as request fields: ``out_trade_no`` and/or ``trade_no`` (at least one)."""
    if out_trade_no is None and trade_no is None:
        raise ValueError("give out_trade_no (your order number) or trade_no (Alipay's), or both")
    biz: dict[str, Any] = {}
    if out_trade_no is not None:
        biz["out_trade_no"] = check_identifier(out_trade_no, "out_trade_no")
    if trade_no is not None:
        biz["trade_no"] = check_identifier(trade_no, "trade_no")
    return biz


def text_field(payload: Mapping[str, Any], name: str) -> str:
    """The answer's field ``name`` if it is a string, else ``""``."""
    value = payload.get(name)
    return value if isinstance(value, str) else ""


def amount_field(method: str, payload: Mapping[str, Any], name: str) -> Decimal | None:
    """The answer's amount ``name`` as a Decimal, None when absent; a malformed one is a :class:`ResponseError`."""
    value = payload.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_amount(value if isinstance(value, str) else str(value))
    except ValueError:
        raise ResponseError("malformed_response", f"{method}: {name} is not an amount") from None
