"""The PostgreSQL DDL an administrator is given (``schema_sql()``, ``alipay-middleware schema``) stays the
same byte for byte: the snapshots in ``tests/snapshots/`` were printed by the code before its SQL moved
into ``alipay_middleware/ledger/sql/``. A deliberate change of the schema updates them in the same commit.
And the row mapping both ledgers share (``ledger/rows.py``) names every column of both tables.

No PostgreSQL server is needed: printing the DDL connects to nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason='schema_sql needs psycopg 3: pip install "psycopg[binary]"')

from alipay_middleware.ledger.postgres import schema_sql  # noqa: E402 - after the psycopg check
from alipay_middleware.ledger.rows import COLUMNS  # noqa: E402
from alipay_middleware.ledger.statements import load_statements  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = ROOT / "tests" / "snapshots"
CASES = [  # (CLI arguments, schema_sql arguments, snapshot)
    pytest.param([], (), "postgres-schema-default.sql", id="public.alipay_events"),
    pytest.param(["--schema", "shop", "--table", "events"], ("shop", "events"), "postgres-schema-shop-events.sql",
                 id="shop.events-with-create-schema"),
]


@pytest.mark.parametrize(("cli_args", "names", "snapshot"), CASES)
def test_schema_sql_is_byte_identical_to_the_snapshot(cli_args: list[str], names: tuple[str, ...], snapshot: str):
    expected = (SNAPSHOTS / snapshot).read_bytes().decode("utf-8")
    assert schema_sql(*names) == expected


@pytest.mark.parametrize(("cli_args", "names", "snapshot"), CASES)
def test_python_m_alipay_middleware_schema_prints_the_snapshot(cli_args: list[str], names: tuple[str, ...],
                                                               snapshot: str):
    environment = {k: v for k, v in os.environ.items() if k != "ALIPAY_LEDGER"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "alipay_middleware", "schema", *cli_args], capture_output=True,
                          env=environment, timeout=60)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == (SNAPSHOTS / snapshot).read_bytes()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_shared_row_mapping_names_every_column_of_both_tables_once(backend: str):
    create_table = load_statements(f"{backend}_schema")["create_table"]
    columns = [line.split()[0] for line in create_table.splitlines()[1:-1]]
    assert columns[0] == "id" and sorted(columns[1:]) == sorted(set(COLUMNS)) and len(COLUMNS) == len(columns) - 1
