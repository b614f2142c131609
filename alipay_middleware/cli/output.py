"""What the commands print: every character a stranger chose escaped, aligned tables, JSON lines."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from ..ledger import (
    StoredEvent,
)

#
# Everything printed comes from a stranger in the end (signed fields, raw bodies, out_trade_no in keys,
# tracebacks quoting them), and the operator reads it on a terminal: an ESC sequence in a subject could
# clear the screen, retitle the window or rewrite earlier lines, and a bidi override could make a line
# read differently from what it holds. So every control character is shown as a Python-style escape:
# C0 (ESC, BEL, CR, LF, TAB, ...), DEL, C1 (0x80-0x9f, which some terminals take as CSI and friends),
# and the invisible format characters (category Cf: bidi overrides, embeddings and isolates, zero-width
# characters, the BOM, tag characters), line and paragraph separators and lone surrogates. Everything
# else, Chinese text included, is printed as it is. Literal backslashes are not doubled (as for the raw
# body's undecodable bytes), so a shown escape is not proof that the character was there.

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every control and format character escaped (line breaks included)."""
    if text.isprintable():  # the common case; also False for some harmless spaces, sorted out below
        return text
    return "".join(_escape(char) if _unsafe(char) else char for char in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(data: Any) -> str:
    """One JSON object on one line, still valid JSON, with no raw control or format character in it.

    ``json.dumps`` escapes C0 only; DEL, C1 and the rest can only occur inside strings there, where
    their ``\\uXXXX`` escape means the same character.
    """
    text = json.dumps(data, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(_json_escape(char) if _unsafe(char) else char for char in text)


def emit(text: str = "", *, file: Any = None) -> None:
    """Print ``text``, keeping its own line breaks and escaping every other control character."""
    print("\n".join(visible(line) for line in text.split("\n")), file=file)


class EscapingFormatter(logging.Formatter):
    """Log lines on the operator's terminal (replay and reconcile log what they refuse, with
    out_trade_no and ids): the message with everything escaped, line breaks too, so that no field can
    forge a line; a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return "\n".join(visible(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join(visible(line) for line in super().formatStack(stack_info).split("\n"))


def when(moment: datetime | None, *, precise: bool = False) -> str:
    if moment is None:
        return "-"
    text = moment.astimezone(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")
    return text.replace("+00:00", "Z")


def describe_lease(event: StoredEvent) -> str:
    if event.lease_until is None:
        return "-"
    state = "live" if event.lease_until > datetime.now(timezone.utc) else "expired"
    return f"{event.lease_owner} until {when(event.lease_until)} ({state})"


def decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset, errors="backslashreplace")
    except LookupError:  # a charset name Python does not know: show the bytes, escaped
        return raw.decode("ascii", errors="backslashreplace")


def as_json(event: StoredEvent) -> dict[str, Any]:
    data: dict[str, Any] = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    raw = data.pop("raw_body")
    data["raw_body_size"] = None if raw is None else len(raw)  # None: pruned
    for name in ("received_at", "updated_at", "lease_until"):
        data[name] = data[name].isoformat() if data[name] is not None else None
    return data


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not print_rows_read_twice(header, lambda: rows):
        emit("  ".join(header).rstrip())


def print_rows_read_twice(header: Sequence[str], rows: Callable[[], Iterable[Sequence[str]]]) -> bool:
    """Print ``rows()`` under ``header`` in aligned columns; False (nothing printed) when there are none.

    ``rows()`` is read twice, once to measure the columns and once to print them, so that no more than
    a page of a large ledger is ever held. A row that changed in between may come out misaligned."""
    widths = [len(cell) for cell in header]
    count = 0
    for row in rows():
        count += 1
        widths = [max(width, len(visible(cell))) for width, cell in zip(widths, row, strict=True)]
    if not count:
        return False
    lines = itertools.chain([header], ([visible(cell) for cell in row] for row in rows()))  # escaped as measured
    for row in lines:
        emit("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return True

