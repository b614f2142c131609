"""The package as a user gets it: a real wheel built from the sources, installed (not editable) into a fresh
virtual environment, and its entry points run from a directory outside the repository.

This is what catches a file the package reads at run time (the ledgers' ``sql/*.sql``) missing from
``[tool.setuptools.package-data]``: an editable install, which every other test runs on, reads the
repository itself and never notices.

Nothing is downloaded: the dependencies, pip and the build backend are those of the environment running
the tests (its site-packages are put on the new environment's path, after its own), the build runs without
isolation and pip without an index. Building a wheel that way needs setuptools 70.1 or later (the ``test``
extra asks for it); with an older one the test is skipped, or fails when ``CI`` is set.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "postgres-schema-default.sql"
#: What the wheel is built from: the package and what pyproject.toml names. Building from a copy leaves
#: no build/ or *.egg-info in the repository, and no stale build/lib of an earlier build can slip in.
SOURCES = ("alipay_middleware", "pyproject.toml", "README.md")


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def setuptools_builds_wheels() -> str | None:
    """Why this environment's setuptools cannot build a wheel without fetching anything (None if it can)."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed: pip install 'setuptools>=70.1'"
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None:  # bdist_wheel: own, or wheel's
        return None
    return f"setuptools {version} cannot build a wheel without the wheel package: pip install 'setuptools>=70.1'"


@pytest.mark.slow
def test_the_installed_wheel_runs_the_cli_the_simulator_and_python_m(tmp_path: Path):
    pytest.importorskip("psycopg", reason="the schema command needs psycopg 3")
    if (problem := setuptools_builds_wheels()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the installed-package test must run: {problem}", pytrace=False)
        pytest.skip(problem)
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
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=elsewhere, env=env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # This environment's site-packages, after the new one's own: its .pth files (an editable install of
    # this package among them) are not run, so the only alipay_middleware to import is the installed one.
    own_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=elsewhere,
                   env=env).stdout.strip()
    outer = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (Path(own_site) / "test-outer-site-packages.pth").write_text("\n".join(outer) + "\n", encoding="utf-8")

    run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-input", source,
        cwd=elsewhere, env=env)

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
