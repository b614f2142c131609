"""Request and response fields both clients read and write: trade numbers, identifiers, texts, amounts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..errors import ResponseError
from ..wire.form import parse_amount

_ID = re.compile(r"[\x21-\x7e]{1,64}")


def _identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{name} must be 1-64 printable ASCII characters without spaces, got {value!r:.80}")
    return value


def _trade_biz(out_trade_no: str | None, trade_no: str | None) -> dict[str, Any]:
    if out_trade_no is None and trade_no is None:
        raise ValueError("give out_trade_no (your order number) or trade_no (Alipay's), or both")
    biz: dict[str, Any] = {}
    if out_trade_no is not None:
        biz["out_trade_no"] = _identifier(out_trade_no, "out_trade_no")
    if trade_no is not None:
        biz["trade_no"] = _identifier(trade_no, "trade_no")
    return biz


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    return value if isinstance(value, str) else ""


def _amount(method: str, payload: Mapping[str, Any], name: str) -> Decimal | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_amount(value if isinstance(value, str) else str(value))
    except ValueError:
        raise ResponseError("malformed_response", f"{method}: {name} is not an amount") from None
