"""The dependency rule, the package's size rule and its light ``__init__``, checked on the source.

The rules, over the layers in LAYERS below (``pytest tests/test_architecture.py -s`` prints the layers with
their jobs and modules, and ``python tests/test_architecture.py`` prints the same block for tests/README.md):

- a module imports modules of its own folder, without cycles, and of lower layers, never of higher ones.
  Imports inside functions and under ``if TYPE_CHECKING:`` count: where a lower layer needs the type of
  something above it, it defines a ``typing.Protocol`` of what it uses (``fronts/port.py``);
- no import cycle anywhere, same-folder cycles included;
- the composition root (``alipay_middleware.alipay``) is the only module that knows the fronts, the callback
  core, the gateway, the protocols and the ledger together, and it imports them at the top (an import it
  defers into a function can only be hiding a cycle with a module below it);
- the package ``__init__`` imports nothing at run time: its ``__getattr__`` imports each public name from
  its module on first use, and its ``if TYPE_CHECKING:`` imports (what type checkers see) are part of that
  lazy mechanism, hence exempt from the rules above. Importing one module loads that module's own
  dependencies and nothing else (checked in a fresh interpreter per module);
- the libraries that do I/O are imported in one place each;
- no module has more than 500 lines of code (not counting blank lines, comments and docstrings).

Modules are parsed with ``ast``, never imported, except by the fresh interpreters of the load test.
"""

from __future__ import annotations

import ast
import functools
import io
import subprocess
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "alipay_middleware"
SOURCE = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES_OF_CODE = 500

#: The layers, top to bottom: each is a list of top-level modules and folders of the package.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__", "simulator"),  # entry points and tools
    ("alipay",),  # the composition root
    ("fronts",),
    ("callbacks",),
    ("gateway",),
    ("protocols",),
    ("ledger",),
    ("wire",),
    ("errors", "events"),  # the foundation
)
ROOT = f"{PACKAGE}.alipay"
#: What only the root may know together: the layers of the fronts, the callback core, the gateway, the
#: protocols and the ledger (every module may use wire and the foundation).
WIRED_LAYERS = frozenset({3, 4, 5, 6, 7})

#: Violations that work in progress on other branches removes, each with the branch that removes it. The
#: rules skip exactly these; test_known_pending_is_still_pending fails on an entry that is already gone, so
#: the lists are emptied as those branches are merged.
KNOWN_PENDING_IMPORTS: dict[tuple[str, str], str] = {}
KNOWN_PENDING_OVERSIZE: dict[str, str] = {}

#: Libraries that do I/O, and the only places that import them (the simulator, a tool, has its own).
IO_LIBRARIES: dict[str, tuple[str, ...]] = {
    "werkzeug": (f"{PACKAGE}.fronts", f"{PACKAGE}.simulator"),
    "asgiref": (f"{PACKAGE}.fronts", f"{PACKAGE}.simulator"),
    "http.client": (f"{PACKAGE}.gateway.transport", f"{PACKAGE}.simulator"),
    "ssl": (f"{PACKAGE}.gateway.transport", f"{PACKAGE}.simulator"),
    "urllib.request": (f"{PACKAGE}.gateway.transport", f"{PACKAGE}.simulator"),
    "sqlite3": (f"{PACKAGE}.ledger.sqlite", f"{PACKAGE}.simulator"),
    "psycopg": (f"{PACKAGE}.ledger.postgres",),
    "psycopg_pool": (f"{PACKAGE}.ledger.postgres",),
}


# -- reading the source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module

    @property
    def unit(self) -> str:
        """The top-level module or folder it belongs to (``""`` for the package ``__init__``)."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""

    @property
    def where(self) -> str:
        return str(self.path.relative_to(SOURCE.parent))


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (of this package or not)
    line: int
    context: str  # "top level", "in a function" or "under TYPE_CHECKING"
    text: str  # the statement as written

    def describe(self, modules: dict[str, Module]) -> str:
        return f"{modules[self.module].where}:{self.line} `{self.text}` ({self.context})"


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, context: str = "top level") -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, context
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _import_nodes(ast.Module([stmt], []), "under TYPE_CHECKING")
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module([stmt], []), context)
        elif isinstance(child, ast.If) and isinstance(child.test, ast.UnaryOp) and isinstance(child.test.op, ast.Not) \
                and _is_type_checking(child.test.operand):
            for stmt in child.body:
                yield from _import_nodes(ast.Module([stmt], []), context)
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module([stmt], []), "under TYPE_CHECKING")
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _import_nodes(child, "in a function" if context == "top level" else context)
        else:
            yield from _import_nodes(child, context)


@functools.cache
def imports() -> tuple[Import, ...]:
    """Every import statement of every module, one entry per imported module."""
    known = modules()
    found: list[Import] = []
    for module in known.values():
        for node, context in _import_nodes(module.tree):
            text = ast.unparse(node)
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    package = module.name.split(".")
                    if not module.is_package:
                        package = package[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from package import name`` imports the module package.name if there is one.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for target in dict.fromkeys(targets):
                found.append(Import(module.name, target, node.lineno, context, text))
    return tuple(found)


def internal_imports() -> list[Import]:
    """Imports of one package module by another, the package ``__init__``'s own (its lazy mechanism) left out."""
    return [i for i in imports() if i.target in modules() and i.module != PACKAGE]


def layer_of(name: str) -> int:
    unit = modules()[name].unit
    for number, units in enumerate(LAYERS, start=1):
        if unit in units:
            return number
    raise LookupError(f"{name} is in no layer: add {unit!r} to LAYERS in tests/test_architecture.py and a line "
                      f"for it to the map in {PACKAGE}/__init__.py")


def first_line(module: Module) -> str:
    return (ast.get_docstring(module.tree, clean=True) or "").split("\n")[0]


def layers_text() -> str:
    """The layers as tests/README.md shows them: number, folder or module, its job, the modules in it."""
    known = modules()
    lines = ["The layers, top to bottom: a module imports its own folder (without cycles) and lower layers only.",
             "", "Layer  Folder/module     Its job (the first line of its docstring); the modules of a folder", ""]
    for number, units in enumerate(LAYERS, start=1):
        for index, unit in enumerate(units):
            is_folder = known[f"{PACKAGE}.{unit}"].is_package
            shown = f"{unit}/" if is_folder else f"{unit}.py"
            lines.append(f"{str(number) if index == 0 else '':<7}{shown:<18}{first_line(known[f'{PACKAGE}.{unit}'])}")
            if is_folder:
                inside = sorted(name.rsplit(".", 1)[1] for name in known if name.startswith(f"{PACKAGE}.{unit}."))
                for row in textwrap.wrap(", ".join(inside), 100):
                    lines.append(f"{'':<25}{row}")
    return "\n".join(lines) + "\n"


def lines_of_code(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text(encoding="utf-8")
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    code: set[int] = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    lines = source.split("\n")
    return sum(1 for number in code - docstrings if lines[number - 1].strip())


def _pending(found: Import) -> bool:
    return (found.module, found.target) in KNOWN_PENDING_IMPORTS


# -- the rules -------------------------------------------------------------------------------------------


def test_every_module_is_in_a_layer():
    units = {module.unit for module in modules().values()} - {""}
    listed = {unit for layer in LAYERS for unit in layer}
    assert units - listed == set(), "add these folders/modules to LAYERS (and to the package docstring's map)"
    assert listed - units == set(), "LAYERS lists folders/modules that do not exist"


def test_imports_point_down_the_layers():
    known = modules()
    broken = [
        f"{found.describe(known)}: {found.module} (layer {layer_of(found.module)}) imports {found.target} "
        f"(layer {layer_of(found.target)}), a higher layer"
        for found in internal_imports()
        if layer_of(found.target) < layer_of(found.module) and not _pending(found)
    ]
    assert not broken, (
        "The dependency rule: a module imports its own folder and lower layers only, never a higher layer "
        "(TYPE_CHECKING and function-level imports count; for a type from above, define a typing.Protocol in "
        "the lower layer). Broken by:\n  " + "\n  ".join(broken) + "\n\n" + layers_text())


def test_the_root_imports_at_the_top():
    """Nothing is above the root but the entry points: an import it defers into a function can only be hiding a
    cycle with a module that should not import it."""
    deferred = [found.describe(modules()) for found in internal_imports()
                if found.module == ROOT and found.context == "in a function"]
    assert not deferred, "import these at the top of alipay.py:\n  " + "\n  ".join(deferred)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(edges.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _one_loop(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import loop through the component's first module."""
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for after in sorted(edges[node]):
            if after == start:
                return paths[node] + [start]
            if after in component and after not in paths:
                paths[after] = paths[node] + [after]
                queue.append(after)
    raise AssertionError("not a cycle")  # pragma: no cover


def test_no_import_cycles():
    known = modules()
    edges: dict[str, set[str]] = {}
    statements: dict[tuple[str, str], Import] = {}
    for found in internal_imports():
        if not _pending(found):
            edges.setdefault(found.module, set()).add(found.target)
            statements.setdefault((found.module, found.target), found)
    loops = []
    for component in _cycles(edges):
        loop = _one_loop(component, edges)
        steps = [statements[(a, b)].describe(known) for a, b in zip(loop, loop[1:], strict=False)]
        loops.append(" -> ".join(loop) + "\n    " + "\n    ".join(steps))
    assert not loops, ("Import cycles (TYPE_CHECKING and function-level imports count; move what both need "
                       "into one of them or below, or use a typing.Protocol):\n  " + "\n  ".join(loops))


def test_only_the_root_knows_every_layer():
    known_layers: dict[str, set[int]] = {}
    for found in internal_imports():
        known_layers.setdefault(found.module, set()).add(layer_of(found.target))
    wiring = sorted(name for name, layers in known_layers.items() if WIRED_LAYERS <= layers)
    assert wiring == [ROOT], (
        f"only {ROOT} (the composition root) may import from the fronts, the callback core, the gateway, the "
        f"protocols and the ledger together; these do: {wiring}")
    assert [name for name in modules() if name != PACKAGE and layer_of(name) == 2] == [ROOT], \
        "layer 2 is the root alone"


def _literal(tree: ast.Module, name: str) -> object:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(name)


def test_the_package_init_is_lazy():
    """Its only run-time imports are the standard library's; every public name is in __all__, in the table
    __getattr__ imports from, and imported under TYPE_CHECKING from the same module (what type checkers see)."""
    init = modules()[PACKAGE]
    runtime = {i.target for i in imports() if i.module == PACKAGE and i.context != "under TYPE_CHECKING"}
    assert runtime <= {"__future__", "importlib", "typing"}, f"{PACKAGE}/__init__.py imports at run time: {runtime}"
    exports = _literal(init.tree, "_EXPORTS")
    assert isinstance(exports, dict)
    public = _literal(init.tree, "__all__")
    assert isinstance(public, list) and sorted(public) == sorted(exports), "__all__ and _EXPORTS differ"
    for_checkers = {}
    for node, context in _import_nodes(init.tree):
        if context == "under TYPE_CHECKING" and isinstance(node, ast.ImportFrom):
            for alias in node.names:
                for_checkers[alias.asname or alias.name] = "." * node.level + (node.module or "")
    assert for_checkers == exports, "the TYPE_CHECKING imports and _EXPORTS must name the same names and modules"
    facade_users = [i.describe(modules()) for i in imports() if i.target == PACKAGE and i.module != PACKAGE]
    assert not facade_users, f"inside the package, import from the defining module, not the facade: {facade_users}"


def test_io_libraries_stay_in_their_place():
    misplaced = []
    for found in imports():
        for library, places in IO_LIBRARIES.items():
            if found.target == library or found.target.startswith(library + "."):
                if not any(found.module == place or found.module.startswith(place + ".") for place in places):
                    misplaced.append(f"{found.describe(modules())}: {library} belongs in {' or '.join(places)}")
    assert not misplaced, "\n".join(misplaced)


def test_no_module_over_500_lines_of_code():
    sizes = {name: lines_of_code(module.path) for name, module in modules().items()}
    over = [f"{modules()[name].where}: {size} lines of code" for name, size in sorted(sizes.items())
            if size > MAX_LINES_OF_CODE and name not in KNOWN_PENDING_OVERSIZE]
    assert not over, f"modules over {MAX_LINES_OF_CODE} lines of code (blank lines, comments and docstrings not " \
                     "counted); split them by job:\n  " + "\n  ".join(over)


def test_lines_of_code_leave_out_blank_lines_comments_and_docstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Module doc.\n\nMore doc."""\n\nimport os  # a comment\n\n# only a comment\n'
                      'def f():\n    """Doc."""\n    return """not a\n\ndocstring"""\n', encoding="utf-8")
    assert lines_of_code(sample) == 4  # import os, def f, and the two non-blank lines of the string


def test_known_pending_is_still_pending():
    """An entry whose violation is gone must leave the list, so that the rule covers it again."""
    present = {(i.module, i.target) for i in internal_imports()}
    gone = [f"{edge} ({why})" for edge, why in KNOWN_PENDING_IMPORTS.items() if edge not in present]
    gone += [f"{name} ({why})" for name, why in KNOWN_PENDING_OVERSIZE.items()
             if name not in modules() or lines_of_code(modules()[name].path) <= MAX_LINES_OF_CODE]
    assert not gone, "fixed: remove from KNOWN_PENDING_* in tests/test_architecture.py:\n  " + "\n  ".join(gone)


# -- the map -----------------------------------------------------------------------------------------------


def test_every_module_opens_with_one_line_on_its_job():
    unclear = []
    for module in modules().values():
        doc = ast.get_docstring(module.tree, clean=True) or ""
        lines = doc.split("\n")
        if not lines[0].strip() or not lines[0].endswith(".") or (len(lines) > 1 and lines[1].strip()):
            unclear.append(f"{module.where}: {lines[0]!r}")
    assert not unclear, "each module's docstring opens with one line, a sentence of its own, saying its job:\n  " \
                        + "\n  ".join(unclear)


def test_the_package_docstring_maps_every_folder_and_module():
    doc = ast.get_docstring(modules()[PACKAGE].tree, clean=True) or ""
    entries = {line.split()[0] for line in doc.split("\n") if line.startswith("    ") and line.split()}
    for unit in (unit for layer in LAYERS for unit in layer):
        shown = f"{unit}/" if modules()[f"{PACKAGE}.{unit}"].is_package else f"{unit}.py"
        assert shown in entries, f"the map in {PACKAGE}/__init__.py has no line for {shown}"


def test_the_layers_as_printed():
    text = layers_text()
    print("\n" + text)  # shown with pytest -s
    for layer in LAYERS:
        for unit in layer:
            assert f" {unit}/ " in text or f" {unit}.py " in text


def test_tests_readme_shows_the_layers():
    readme = SOURCE.parent / "tests" / "README.md"
    if not readme.exists():
        pytest.skip("tests/README.md is not written yet")
    assert layers_text() in readme.read_text(encoding="utf-8"), \
        "tests/README.md shows other layers than the package has: paste `python tests/test_architecture.py`"


# -- importing one module loads only what it needs -----------------------------------------------------


def _runtime_closure(name: str) -> set[str]:
    """The package modules that importing ``name`` needs: it, its parent packages, and what their top-level
    imports run, transitively (function-level and TYPE_CHECKING imports run later or never). The package
    ``__init__`` is in it, but not what it would import: it must import nothing."""
    top_level: dict[str, set[str]] = {}
    for found in imports():
        if found.context == "top level" and found.target in modules():
            top_level.setdefault(found.module, set()).add(found.target)
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        parts = current.split(".")
        for size in range(1, len(parts) + 1):
            step = ".".join(parts[:size])
            if step not in seen:
                seen.add(step)
                if step != PACKAGE:
                    todo.extend(top_level.get(step, ()))
    return seen


#: Libraries no module of the given layer or below (by number) may load, unless one of the package modules its
#: import runs imports the library itself: the fronts' werkzeug and asgiref, the ledger's sqlite3, the gateway's
#: ssl and http.client, the PostgreSQL ledger's psycopg.
HEAVY = {"werkzeug": 4, "asgiref": 4, "sqlite3": 8, "ssl": 8, "http.client": 8, "psycopg": 3}


#: Some leaves spelled out: exactly the package modules importing them loads.
EXACTLY = {
    PACKAGE: {""},
    f"{PACKAGE}.errors": {"", ".errors"},
    f"{PACKAGE}.events": {"", ".events"},
    f"{PACKAGE}.wire.form": {"", ".wire", ".wire.form", ".errors"},
    f"{PACKAGE}.wire.signing": {"", ".wire", ".wire.signing"},
    f"{PACKAGE}.ledger.base": {"", ".ledger", ".ledger.base", ".events"},
}


def _leaves() -> list[str]:
    return [PACKAGE] + [name for name in modules() if name != PACKAGE and layer_of(name) >= 3]


@pytest.mark.parametrize("leaf", _leaves())
def test_importing_a_module_loads_only_its_own_dependencies(leaf):
    code = ("import sys; before = set(sys.modules); import " + leaf + "; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SOURCE.parent)
    assert run.returncode == 0, f"import {leaf} fails on its own:\n{run.stderr}"
    loaded = set(run.stdout.split())
    needed = _runtime_closure(leaf)
    ours = {m for m in loaded if m == PACKAGE or m.startswith(PACKAGE + ".")}
    assert ours <= needed, f"import {leaf} also loads {sorted(ours - needed)}"
    if leaf in EXACTLY:
        expected = {PACKAGE + suffix for suffix in EXACTLY[leaf]}
        assert ours == expected, f"import {leaf} loads {sorted(ours)}, expected {sorted(expected)}"
    layer = 9 if leaf == PACKAGE else layer_of(leaf)
    imported = {i.target for i in imports() if i.module in needed and i.context == "top level"}
    heavy = sorted(library for library, lowest in HEAVY.items()
                   if library in loaded and layer >= lowest
                   and not any(t == library or t.startswith(library + ".") for t in imported))
    assert not heavy, f"import {leaf} loads {heavy}, which none of the modules it needs imports"


if __name__ == "__main__":
    print(layers_text(), end="")
