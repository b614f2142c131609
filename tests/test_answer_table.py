"""The README's "What the notify path answers" names exactly the reason codes the package defines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from alipay_middleware.callbacks.answers import Reason

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## What the notify path answers\n", 1)[1].split("\n## ", 1)[0]
CODE = re.compile(r"`([^`]+)`")


def table_reasons() -> list[str]:
    """Every code in the table's ``reason`` column."""
    rows = [line for line in SECTION.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index("reason")
    codes = []
    for row in rows[2:]:
        cell = row.strip("|").split("|")[column]
        assert cell.strip(), f"a row with no reason code: {row}"
        codes += CODE.findall(cell)
    return codes


def listed_reasons() -> list[str]:
    """Every code in the list below the table: ``reason=...`` and the codes after it, up to the closing parenthesis."""
    listing = re.search(r"\(`reason=(.*?)\)", SECTION, re.S)
    assert listing is not None, "the reason list below the table is gone"
    return CODE.findall("`" + listing.group(1))


def test_the_answer_table_and_its_list_name_only_defined_reasons() -> None:
    defined = set(get_args(Reason))
    assert set(table_reasons()) - defined == set()
    assert set(listed_reasons()) - defined == set()


def test_every_defined_reason_is_in_the_answer_table_or_its_list() -> None:
    documented = set(table_reasons()) | set(listed_reasons())
    assert set(get_args(Reason)) - documented == set()

