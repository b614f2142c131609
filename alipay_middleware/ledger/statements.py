"""The ledgers' SQL: named statements read from the package data ``alipay_middleware/ledger/sql/*.sql``.

A file holds statements, each after a line ``-- name: NAME``. Comment lines right after that line describe
the statement and are not part of it, and neither is the ``;`` that ends it; everything else is kept as
written, comments inside a statement (PL/pgSQL's) included. Lines before the first name describe the file.

The statements are templates: ``{name}`` stands for a table name, a column list or a literal that the
ledger fills in (PostgreSQL's with :mod:`psycopg.sql`, so names are quoted identifiers), ``{{`` and ``}}``
for literal braces.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

_NAME = re.compile(r"^-- name: ([a-z_]+)[ \t]*$", re.MULTILINE)


@functools.cache
def load_statements(file: str) -> Mapping[str, str]:
    """``sql/<file>.sql`` as ``{name: statement}``, in the file's order."""
    text = resources.files(__package__).joinpath("sql", f"{file}.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.split("\n")
        while lines and (lines[0].startswith("--") or not lines[0].strip()):
            del lines[0]
        statement = "\n".join(lines).rstrip()
        if name in statements or not statement.endswith(";"):
            raise ValueError(f"sql/{file}.sql: statement {name!r} is defined twice or does not end with ';'")
        statements[name] = statement[:-1]
    return MappingProxyType(statements)
