"""The examples, the benchmarks, the READMEs and the package's docstrings import only the public paths.

The public paths are the modules below and the names in their ``__all__``, as README "Public import paths"
lists them; everything else in the package may move. Import lines are found in the text (code, strings,
docstrings, Markdown), so a snippet run in a subprocess or shown in a docstring counts too.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

HOME = Path(__file__).resolve().parent.parent
PACKAGE = HOME / "alipay_middleware"
#: The public modules, each with the file whose ``__all__`` lists its public names.
PUBLIC_MODULES = {
    "alipay_middleware": PACKAGE / "__init__.py",
    "alipay_middleware.ledger": PACKAGE / "ledger" / "__init__.py",
    "alipay_middleware.ledger.postgres": PACKAGE / "ledger" / "postgres.py",
    "alipay_middleware.simulator": PACKAGE / "simulator" / "__init__.py",
}
#: ``python -m ...`` entry points (the ``alipay-middleware`` script is ``python -m alipay_middleware``).
ENTRY_POINTS = {"alipay_middleware", "alipay_middleware.simulator"}

_FROM = re.compile(r"\bfrom\s+(alipay_middleware[\w.]*)\s+import\s+(\([^)]*\)|[\w \t,]+)")
_IMPORT = re.compile(r"^\s*import\s+(alipay_middleware[\w.]*)", re.MULTILINE)
_RUN = re.compile(r"-m\s+(alipay_middleware[\w.]*)")


@functools.cache
def public_names(module: str) -> set[str]:
    tree = ast.parse(PUBLIC_MODULES[module].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise LookupError(f"{module} has no __all__")


def docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [ast.get_docstring(node, clean=False) for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return "\n".join(doc for doc in found if doc)


@functools.cache
def sources() -> dict[str, str]:
    """Text to check, by path: examples and benchmarks whole, the READMEs, the package's docstrings."""
    texts = {}
    for path in sorted([*HOME.glob("examples/*.py"), *HOME.glob("benchmarks/*.py"), *HOME.glob("*.md"),
                        *HOME.glob("examples/*.md"), *HOME.glob("benchmarks/*.md")]):
        texts[str(path.relative_to(HOME))] = path.read_text(encoding="utf-8")
    for path in sorted(PACKAGE.rglob("*.py")):
        texts[f"{path.relative_to(HOME)} (docstrings)"] = docstrings(path)
    return texts


def non_public_imports(text: str) -> list[str]:
    found = []
    for module, names in _FROM.findall(text):
        if module not in PUBLIC_MODULES:
            found.append(f"from {module} import ...: not a public module")
            continue
        listed = re.sub(r"#[^\n]*", "", names).strip("() \n")
        for name in (part.split(" as ")[0].strip() for part in listed.split(",")):
            if name and name not in public_names(module):
                found.append(f"from {module} import {name}: not in {module}.__all__")
    found += [f"import {module}: not a public module" for module in _IMPORT.findall(text)
              if module not in PUBLIC_MODULES]
    found += [f"-m {module}: not an entry point" for module in _RUN.findall(text) if module not in ENTRY_POINTS]
    return found


@pytest.mark.parametrize("where", sorted(sources()))
def test_only_public_paths_are_imported(where):
    assert non_public_imports(sources()[where]) == []


def test_the_check_sees_what_it_should():
    text = ("from alipay_middleware.wire.form import format_amount\nfrom alipay_middleware import (\n"
            "    Alipay,  # the root\n    NotPublic,\n)\nimport alipay_middleware.protocols.openapi\n"
            "python -m alipay_middleware.cli\nfrom alipay_middleware.ledger import DONE, open_ledger as o\n"
            "``python -c 'from alipay_middleware.ledger.postgres import schema_sql; print(schema_sql())'``\n")
    assert non_public_imports(text) == [
        "from alipay_middleware.wire.form import ...: not a public module",
        "from alipay_middleware import NotPublic: not in alipay_middleware.__all__",
        "import alipay_middleware.protocols.openapi: not a public module",
        "-m alipay_middleware.cli: not an entry point",
    ]


def test_the_readme_lists_the_public_paths():
    readme = (HOME / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Public import paths\n", 1)[1].split("\n## ", 1)[0]
    for module in PUBLIC_MODULES:
        assert f"`{module}`" in section
    for name in public_names("alipay_middleware"):
        assert f"`{name}`" in section or f"`{name}(" in section, f"README's Public import paths does not list {name}"
    for entry in ENTRY_POINTS:
        assert f"python -m {entry}`" in section
    assert "`alipay-middleware`" in section
