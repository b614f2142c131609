"""The package as a user gets it: a real wheel built from the sources, installed (not editable) into a fresh
virtual environment, and its entry points run from a directory outside the repository.

This is what catches a file the package reads at run time (the ledgers' ``sql/*.sql``) missing from
``[tool.setuptools.package-data]``: an editable install, which every other test runs on, reads the
repository itself and never notices.

The environment sees the system's site-packages for the dependencies (``--no-deps``: nothing is
downloaded for them). The wheel is built without build isolation when the system's setuptools can build
wheels (70.1 and later, or with the ``wheel`` package); otherwise pip fetches the build backend named in
``pyproject.toml`` as it does for any install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "postgres-schema-default.sql"
#: What the wheel is built from: the package and what pyproject.toml names. Building from a copy leaves
#: no build/ or *.egg-info in the repository, and no stale build/lib of an earlier build can slip in.
SOURCES = ("alipay_middleware", "pyproject.toml", "README.md")
CAN_BUILD_WHEELS = """
import importlib.util, setuptools
version = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
print(version >= (70, 1) or importlib.util.find_spec("wheel") is not None)
"""


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_runs_the_cli_the_simulator_and_python_m(tmp_path: Path):
    pytest.importorskip("psycopg", reason="the schema command needs psycopg 3")
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    elsewhere = tmp_path / "elsewhere"  # no repository around, no PYTHONPATH: only the install can be imported
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ALIPAY_LEDGER", "PYTHONHOME")}
    venv = tmp_path / "venv"
    # Without a pip of its own: a venv's bundled setuptools would shadow the system's for the build.
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=elsewhere, env=env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"

    offline = run(python, "-c", CAN_BUILD_WHEELS, cwd=elsewhere, env=env).stdout.strip() == "True"
    run(python, "-m", "pip", "install", "--no-deps", "--no-input", *(["--no-build-isolation"] if offline else []),
        source, cwd=elsewhere, env=env)

    where = run(python, "-c", "import alipay_middleware.ledger.postgres as m, alipay_middleware.simulator as s; "
                "print(m.__file__); print(s.__file__)", cwd=elsewhere, env=env).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} was imported, not the installed copy"

    # The CLI's entry point; schema reads the PostgreSQL statements from the installed package data.
    schema = run(bin_dir / "alipay-middleware", "schema", cwd=elsewhere, env=env)
    assert (schema.stdout, schema.stderr) == (SNAPSHOT.read_text(encoding="utf-8"), "")
    # A SQLite ledger created and listed by the installed copy reads SQLite's statements from it too.
    run(python, "-c", "from alipay_middleware.ledger import SQLiteLedger; SQLiteLedger('ledger.sqlite3').close()",
        cwd=elsewhere, env=env)
    listed = run(bin_dir / "alipay-middleware", "list", "--ledger", "sqlite:///ledger.sqlite3", cwd=elsewhere, env=env)
    assert listed.stdout == "no events\n"

    module = run(python, "-m", "alipay_middleware", "--help", cwd=elsewhere, env=env)
    assert module.stdout.startswith("usage: alipay-middleware") and "schema" in module.stdout
    simulator = run(python, "-m", "alipay_middleware.simulator", "--help", cwd=elsewhere, env=env)
    assert simulator.stdout.startswith("usage: python -m alipay_middleware.simulator")
