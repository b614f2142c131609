#!/usr/bin/env python3
"""One-line mutation testing over named modules, outside CI and outside pytest's collection.

Two modes (tests/mutation/README.md has the how-to and how to read the results):

* generated (default): every one-line mutant of the named modules (comparison, boolean and arithmetic operator
  swaps, ``not`` removed, an ``if`` negated, constants changed, ``return None``, a ``raise``/``continue``/call
  statement dropped), each run against the tests that exercise its module (``TESTS`` below);
* ``--named``: the mutants in ``named.toml`` (the survivors the first spot-check found, issue 13 section 3),
  each of which the suite must kill.

Every run happens in a temporary copy of the checkout (one per job), with ``PYTHONPATH`` pointing at it and no
bytecode written, so the worktree is never touched. A mutant is *killed* when its tests fail (or do not even
import), *survives* when they pass, and *times out* (reported separately, counted as killed) when they run
past the timeout. Mutants listed in ``equivalent.toml`` (cannot change behaviour, each with its reason) are not
run and not scored.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PACKAGE = "alipay_middleware"

# -- which modules, which tests ---------------------------------------------------------------------------------

GROUPS: dict[str, list[str]] = {
    "core": ["callbacks/alerts.py", "callbacks/answers.py", "callbacks/confirm.py", "callbacks/flow.py",
             "callbacks/memory.py", "callbacks/ports.py", "callbacks/process.py", "callbacks/steps.py"],
    "codec": ["wire/form.py", "wire/keys.py", "wire/response.py", "wire/signing.py"],
    "protocols": ["protocols/base.py", "protocols/certs.py", "protocols/helper.py", "protocols/legacy.py",
                  "protocols/openapi.py", "protocols/proxy.py"],
    "ledgers": ["ledger/sqlite.py", "ledger/postgres.py", "ledger/base.py", "ledger/pending.py", "ledger/guard.py"],
    "client": ["gateway/client.py", "gateway/base.py", "gateway/legacy_client.py", "gateway/transport.py",
               "gateway/results.py", "gateway/fields.py"],
}

# The tests that exercise each module, fastest and most telling first (pytest runs them in this order and stops
# at the first failure, so a killed mutant usually costs a few seconds; a survivor costs the whole list).
_FLOW = ["test_flows.py", "test_mutants.py", "test_answer_table.py", "test_content_length.py",
         "test_return_replay.py", "test_pay_and_return.py", "test_reconcile.py", "test_notify.py",
         "test_exactly_once.py", "test_legacy.py"]
_SIGNING = ["test_vectors.py", "test_mutants.py", "test_pay_and_return.py", "test_legacy_requests.py",
            "test_response.py", "test_properties.py", "test_legacy.py"]
_OPENAPI = ["test_flows.py", "test_mutants.py", "test_vectors.py", "test_pay_and_return.py", "test_config.py",
            "test_return_replay.py", "test_reconcile.py", "test_notify.py", "test_properties.py",
            "test_cert_mode.py", "test_newcomer.py"]
_LEGACY = ["test_mutants.py", "test_origin_verdict.py", "test_legacy_requests.py", "test_legacy.py",
           "test_legacy_client.py", "test_properties.py", "test_newcomer.py"]
_SQLITE = ["test_mutants.py", "test_ledger_contract.py", "test_ledger_costs.py", "test_ledger_file_mode.py",
           "test_ledger_secrets.py", "test_exactly_once.py", "test_notify.py"]
_POSTGRES = ["test_mutants.py", "test_ledger_contract.py", "test_ledger_sql.py", "test_ledger_postgres.py",
             "test_ledger_secrets.py", "test_exactly_once.py"]
_CLIENT = ["test_mutants.py", "test_client.py", "test_outbound.py", "test_gateway_layer.py", "test_reconcile.py",
           "test_legacy_client.py"]

TESTS: dict[str, list[str]] = {
    "callbacks/alerts.py": ["test_newcomer.py", "test_notify.py"],
    "callbacks/answers.py": ["test_answer_table.py", "test_flows.py", "test_content_length.py", "test_notify.py"],
    "callbacks/confirm.py": ["test_flows.py", "test_pay_and_return.py", "test_reconcile.py",
                             "test_legacy_client.py", "test_return_replay.py"],
    "callbacks/flow.py": [*_FLOW, "test_newcomer.py"],
    "callbacks/memory.py": ["test_flows.py", "test_mutants.py", "test_return_replay.py", "test_hosts.py",
                            "test_legacy.py"],
    "callbacks/ports.py": ["test_flows.py", "test_hosts.py", "test_config.py", "test_notify.py"],
    "callbacks/process.py": _FLOW,
    "callbacks/steps.py": ["test_flows.py", "test_notify.py"],
    "wire/form.py": ["test_flows.py", "test_mutants.py", "test_pay_and_return.py", "test_legacy_requests.py",
                     "test_content_length.py", "test_notify.py", "test_properties.py", "test_legacy.py"],
    "wire/keys.py": ["test_mutants.py", "test_config.py", "test_newcomer.py", "test_vectors.py", "test_cert_mode.py"],
    "wire/response.py": ["test_response.py", "test_client.py", "test_legacy_client.py"],
    "wire/signing.py": _SIGNING,
    "protocols/base.py": ["test_flows.py", "test_mutants.py", "test_config.py", "test_newcomer.py",
                          "test_legacy_requests.py", "test_notify.py", "test_legacy.py"],
    "protocols/certs.py": ["test_certs.py", "test_cert_mode.py"],
    "protocols/helper.py": ["test_pay_and_return.py", "test_legacy_requests.py", "test_vectors.py",
                            "test_hosts.py"],
    "protocols/legacy.py": _LEGACY,
    "protocols/openapi.py": _OPENAPI,
    "protocols/proxy.py": ["test_outbound.py", "test_legacy_requests.py"],
    "ledger/sqlite.py": _SQLITE,
    "ledger/postgres.py": _POSTGRES,
    "ledger/base.py": ["test_ledger_contract.py", "test_mutants.py", "test_exactly_once.py"],
    "ledger/pending.py": ["test_exactly_once.py", "test_flows.py", "test_reconcile.py"],
    "ledger/guard.py": ["test_exactly_once.py", "test_client.py", "test_legacy_client.py"],
    "gateway/client.py": _CLIENT,
    "gateway/base.py": ["test_client.py", "test_outbound.py", "test_legacy_client.py"],
    "gateway/legacy_client.py": ["test_legacy_client.py", "test_gateway_layer.py", "test_legacy.py"],
    "gateway/transport.py": ["test_outbound.py", "test_client.py", "test_legacy_client.py", "test_legacy.py"],
    "gateway/results.py": ["test_client.py", "test_reconcile.py", "test_legacy_client.py"],
    "gateway/fields.py": ["test_client.py", "test_legacy_client.py", "test_gateway_layer.py"],
}

PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "--hypothesis-seed=0"]

# -- mutants ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the checkout, e.g. alipay_middleware/callbacks/flow.py
    line: int
    kind: str
    original: str  # the whole line, as in the file
    mutated: str  # the whole line, mutated
    name: str = ""  # named mode: what the mutant is (from named.toml)
    n: int = 0  # the how-manieth mutant of this kind on this line
    tests: tuple[str, ...] = ()  # named mode: test files, when not the module's own list
    scope: str = ""  # the enclosing function (Class.method), "" at module level
    after: str = ""  # the line before, stripped

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies a mutant across edits elsewhere in the file (equivalent.toml matches on this)."""
        return (self.path, self.original.strip(), self.mutated.strip())

    @property
    def ident(self) -> str:
        return f"{self.path}:{self.line}:{self.kind}" + (f"#{self.n}" if self.n else "")


_COMPARE_SWAP: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Eq: (r"==", "!="), ast.NotEq: (r"!=", "=="), ast.Lt: (r"<", "<="), ast.LtE: (r"<=", "<"),
    ast.Gt: (r">", ">="), ast.GtE: (r">=", ">"), ast.In: (r"\bin\b", "not in"), ast.NotIn: (r"\bnot\s+in\b", "in"),
    ast.Is: (r"\bis\b", "is not"), ast.IsNot: (r"\bis\s+not\b", "is"),
}
_BINOP_SWAP: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: (r"\+", "-"), ast.Sub: (r"-", "+"), ast.Mult: (r"\*", "/"), ast.Div: (r"/", "*"),
    ast.FloorDiv: (r"//", "/"),
}
_LOGGERS = {"log", "logger", "_log", "_logger", "LOG", "logging"}
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_SHORT_STRING = 24


def _is_log_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    target = node.func.value
    return node.func.attr in _LOG_METHODS and isinstance(target, ast.Name) and target.id in _LOGGERS


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


class _Generator:
    """Walks one module's tree and yields one-line textual mutants (checked to parse)."""

    def __init__(self, path: str, source: str) -> None:
        self.path, self.source = path, source
        self.lines = source.split("\n")
        self.found: list[Mutant] = []
        self.seen: set[tuple[int, str]] = set()
        self.scope: list[str] = []

    # spans are (line, start byte, end byte) on one line: ast's offsets count UTF-8 bytes
    def _text(self, line: int, start: int, end: int) -> str:
        return self.lines[line - 1].encode()[start:end].decode()

    def _add(self, line: int, start: int, end: int, new: str, kind: str) -> None:
        raw = self.lines[line - 1]
        encoded = raw.encode()
        mutated = (encoded[:start] + new.encode() + encoded[end:]).decode()
        if mutated == raw or (line, mutated) in self.seen or "no mutate" in raw:
            return
        candidate = self.lines[:]
        candidate[line - 1] = mutated
        try:
            ast.parse("\n".join(candidate))
        except SyntaxError:
            return
        self.seen.add((line, mutated))
        n = sum(m.line == line and m.kind == kind for m in self.found)
        self.found.append(Mutant(self.path, line, kind, raw, mutated, n=n, scope=".".join(self.scope),
                                 after=self.lines[line - 2].strip() if line > 1 else ""))

    def _between(self, left: ast.expr, right: ast.expr, pattern: str, new: str, kind: str) -> None:
        """Replace the operator token between two operands that end and start on one line."""
        if left.end_lineno != right.lineno or left.end_col_offset is None:
            return
        start, end = left.end_col_offset, right.col_offset
        gap = self._text(right.lineno, start, end)
        match = re.search(pattern, gap)
        if match is None:
            return
        replaced = gap[:match.start()] + new + gap[match.end():]
        self._add(right.lineno, start, end, replaced, kind)

    def _whole(self, node: ast.AST, new: str, kind: str) -> None:
        line, end_line = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if line is None or line != end_line:
            return
        self._add(line, node.col_offset, node.end_col_offset, new, kind)  # type: ignore[attr-defined]

    def _node_text(self, node: ast.AST) -> str:
        return self._text(node.lineno, node.col_offset, node.end_col_offset)  # type: ignore[attr-defined]

    # -- the walk --
    def run(self) -> list[Mutant]:
        tree = ast.parse(self.source)
        self._body(tree.body)
        return sorted(self.found, key=lambda m: m.line)

    def _body(self, statements: list[ast.stmt]) -> None:
        for index, statement in enumerate(statements):
            if index == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # a docstring
            self._statement(statement)

    def _statement(self, node: ast.stmt) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name == "__repr__":
                return
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    self._expr(default)
            self.scope.append(node.name)
            self._body(node.body)
            self.scope.pop()
            return
        if isinstance(node, ast.ClassDef):
            self.scope.append(node.name)
            self._body(node.body)
            self.scope.pop()
            return
        if isinstance(node, ast.Expr):
            if _is_log_call(node.value):
                return
            if isinstance(node.value, (ast.Call, ast.Await, ast.YieldFrom)) and node.lineno == node.end_lineno:
                self._whole(node, "pass", "drop-call")
            self._expr(node.value)
            return
        if isinstance(node, ast.Raise):
            if node.lineno == node.end_lineno:
                self._whole(node, "pass", "drop-raise")
            return
        if isinstance(node, (ast.Continue, ast.Break)):
            self._whole(node, "pass", "drop-" + type(node).__name__.lower())
            return
        if isinstance(node, ast.Return):
            value = node.value
            if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
                self._whole(node, "return None", "return-none")
                self._expr(value)
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._expr(node.value)
            return
        if isinstance(node, ast.AugAssign):
            swap = _BINOP_SWAP.get(type(node.op))
            if swap is not None and node.lineno == node.end_lineno:
                text = self._node_text(node)
                replaced = re.sub(swap[0] + "=", swap[1] + "=", text, count=1)
                self._whole(node, replaced, "augassign")
            self._expr(node.value)
            return
        if isinstance(node, (ast.If, ast.While)):
            self._condition(node.test)
            self._expr(node.test)
            self._body(node.body)
            self._body(node.orelse)
            return
        if isinstance(node, ast.Assert):
            return  # internal invariants, not behaviour
        # every other statement: its expressions, then its nested bodies
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "type_comment"):
                continue
            if isinstance(value, ast.expr):
                self._expr(value)
            elif isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self._body(value)
                else:
                    for item in value:
                        if isinstance(item, ast.expr):
                            self._expr(item)
                        elif isinstance(item, ast.ExceptHandler):
                            self._body(item.body)
                        elif isinstance(item, (ast.withitem, ast.match_case)):
                            for sub in ast.iter_child_nodes(item):
                                if isinstance(sub, ast.expr):
                                    self._expr(sub)
                            if isinstance(item, ast.match_case):
                                self._body(item.body)

    def _condition(self, test: ast.expr) -> None:
        """``if x:`` -> ``if not (x):`` where the test has no operator of its own to mutate."""
        if isinstance(test, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) and test.lineno == test.end_lineno:
            self._whole(test, f"not ({self._node_text(test)})", "negate-if")

    def _expr(self, node: ast.expr) -> None:
        if _is_log_call(node) or isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for index, op in enumerate(node.ops):
                pattern, new = _COMPARE_SWAP[type(op)]
                self._between(operands[index], operands[index + 1], pattern, new, "compare")
            for operand in operands:
                self._compared_constant(operand)
        elif isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            other = "or" if word == "and" else "and"
            for left, right in zip(node.values, node.values[1:], strict=False):
                self._between(left, right, rf"\b{word}\b", other, "boolop")
        elif isinstance(node, ast.BinOp):
            swap = _BINOP_SWAP.get(type(node.op))
            if swap is not None and not (isinstance(node.op, ast.Add) and _stringy(node)):
                self._between(node.left, node.right, swap[0], swap[1], "arith")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            text = self._node_text(node) if node.lineno == node.end_lineno else ""
            if text.startswith("not"):
                self._whole(node, text[3:].lstrip(), "drop-not")
        elif isinstance(node, ast.IfExp):
            self._condition(node.test)
        elif isinstance(node, ast.Constant):
            self._constant(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child)
            elif isinstance(child, ast.comprehension):
                for sub in [child.iter, *child.ifs]:
                    self._expr(sub)

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._whole(node, repr(not value), "constant")
        elif isinstance(value, int):
            self._whole(node, repr(value + 1), "number")
            self._whole(node, repr(value - 1), "number")
        elif isinstance(value, float):
            self._whole(node, repr(value + 1), "number")
            self._whole(node, repr(value / 2), "number")

    def _compared_constant(self, node: ast.expr) -> None:
        items = node.elts if isinstance(node, (ast.Tuple, ast.Set, ast.List)) else [node]
        for item in items:
            if isinstance(item, ast.Constant) and isinstance(item.value, (str, bytes)) \
                    and 0 < len(item.value) <= _SHORT_STRING:
                self._whole(item, '""' if isinstance(item.value, str) else 'b""', "string")


def _stringy(node: ast.BinOp) -> bool:
    return any(isinstance(side, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(side, "value", ""), str)
               for side in (node.left, node.right))


def generate(module: str) -> list[Mutant]:
    path = f"{PACKAGE}/{module}"
    return _Generator(path, (ROOT / path).read_text(encoding="utf-8")).run()


def _toml_entries(name: str) -> list[dict[str, object]]:
    file = HERE / name
    if not file.exists():
        return []
    entries: list[dict[str, object]] = tomllib.loads(file.read_text(encoding="utf-8")).get("mutant", [])
    return entries


def load_equivalent() -> list[dict[str, object]]:
    return _toml_entries("equivalent.toml")


def equivalent_reason(mutant: Mutant, entries: list[dict[str, object]]) -> str | None:
    """Why ``mutant`` is equivalent, if an entry matches it: file, line text, mutated text, and the enclosing
    function (``scope``) and the line before (``after``, stripped) when the entry names them: for a line that
    occurs more than once."""
    for entry in entries:
        key = (str(entry["file"]), str(entry["line"]).strip(), str(entry["mutated"]).strip())
        if key == mutant.key and entry.get("scope", mutant.scope) == mutant.scope \
                and entry.get("after", mutant.after) == mutant.after:
            return str(entry["reason"])
    return None


def load_named() -> tuple[list[Mutant], list[str]]:
    """The named mutants, each found in its file by its line's text (which must be there exactly once)."""
    mutants, stale = [], []
    for entry in _toml_entries("named.toml"):
        path, original, mutated = str(entry["file"]), str(entry["line"]).strip(), str(entry["mutated"]).strip()
        lines = (ROOT / path).read_text(encoding="utf-8").split("\n")
        where = [i for i, text in enumerate(lines) if text.strip() == original]
        if len(where) != 1:
            stale.append(f"{entry['name']}: {path}: {original!r} found {len(where)} times")
            continue
        raw = lines[where[0]]
        indent = raw[:len(raw) - len(raw.lstrip())]
        tests = tuple(str(t) for t in entry.get("tests", ()))  # type: ignore[attr-defined]
        mutants.append(Mutant(path, where[0] + 1, "named", raw, indent + mutated, name=str(entry["name"]),
                              tests=tests))
    return mutants, stale


def tests_for(mutant: Mutant) -> list[str]:
    if mutant.tests:
        return list(mutant.tests)
    module = mutant.path.removeprefix(PACKAGE + "/")
    return [f"tests/{name}" for name in TESTS[module]]


# -- running ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed | survived | timeout | error
    seconds: float
    returncode: int | None
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def _copy_checkout(into: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():
            continue
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


_LIVE: set[subprocess.Popen[str]] = set()  # test runs under way, ended with the script (they run in own sessions)


def _run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, int | None, float, str]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, *PYTEST, *tests], cwd=workdir, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    _LIVE.add(process)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", None, time.monotonic() - started, ""
    finally:
        _LIVE.discard(process)
    seconds = time.monotonic() - started
    lines = [line for line in output.strip().split("\n") if line]
    detail = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
    if process.returncode == 0:
        return "survived", 0, seconds, lines[-1] if lines else ""
    if process.returncode in (1, 2):  # tests failed, or the mutant broke an import/collection
        return "killed", process.returncode, seconds, detail[:300]
    return "error", process.returncode, seconds, detail[:300]


class Runner:
    def __init__(self, jobs: int, timeout: float | None, out: Path) -> None:
        self.jobs, self.fixed_timeout, self.out = jobs, timeout, out
        self.base = Path(tempfile.mkdtemp(prefix="alipay-mutation-"))
        self.workdirs: list[Path] = []
        self.file_seconds: dict[str, float] = {}
        self.lock = threading.Lock()

    def close(self) -> None:
        for process in list(_LIVE):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    def prepare(self, mutants: list[Mutant], baseline: bool = True) -> None:
        for index in range(self.jobs):
            workdir = self.base / f"job{index}"
            _copy_checkout(workdir)
            self.workdirs.append(workdir)
        if not baseline:
            return
        # The unmutated tests must pass (a survivor means "the tests pass with the mutant as without it"). One
        # run of every file involved; each file's time (from the JUnit report) sets its mutants' timeout.
        files = sorted({t for m in mutants for t in tests_for(m)})
        report = self.base / "baseline.xml"
        outcome, _, seconds, detail = _run_tests(self.workdirs[0], [*files, f"--junitxml={report}"], 7200)
        if outcome != "survived":
            raise SystemExit(f"the unmutated tests fail ({detail}): {' '.join(files)}")
        for case in ElementTree.parse(report).iter("testcase"):
            name = "tests/" + case.get("classname", "").split(".")[-1] + ".py"
            self.file_seconds[name] = self.file_seconds.get(name, 0.0) + float(case.get("time", "0"))
        print(f"baseline: {len(files)} test files pass unmutated, {seconds:.0f} s", flush=True)

    def timeout(self, tests: list[str]) -> float:
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        if not self.file_seconds:
            return 600.0
        return 3 * sum(self.file_seconds.get(t, 0.0) + 2 for t in tests) + 30

    def run(self, mutants: list[Mutant]) -> list[Result]:
        free = list(self.workdirs)
        results: list[Result] = []
        total = len(mutants)

        def one(mutant: Mutant) -> Result:
            with self.lock:
                workdir = free.pop()
            target = workdir / mutant.path
            original = target.read_text(encoding="utf-8")
            lines = original.split("\n")
            assert lines[mutant.line - 1] == mutant.original, f"{mutant.ident}: the file changed"
            lines[mutant.line - 1] = mutant.mutated
            tests = tests_for(mutant)
            try:
                target.write_text("\n".join(lines), encoding="utf-8")
                # The first two files alone first: they kill most mutants, without collecting the rest.
                seconds = 0.0
                for stage in (tests[:2], tests[2:]):
                    if not stage:
                        continue
                    outcome, code, spent, detail = _run_tests(workdir, stage, self.timeout(stage))
                    seconds += spent
                    if outcome != "survived":
                        break
            finally:
                target.write_text(original, encoding="utf-8")
                with self.lock:
                    free.append(workdir)
            result = Result(mutant, outcome, round(seconds, 1), code, detail, tests)
            with self.lock:
                results.append(result)
                with self.out.with_suffix(".jsonl").open("a", encoding="utf-8") as progress:
                    progress.write(json.dumps(_as_json(result), ensure_ascii=False) + "\n")
                print(f"[{len(results)}/{total}] {outcome:8s} {seconds:6.1f}s  {mutant.ident}  "
                      f"{mutant.mutated.strip()}", flush=True)
            return result

        pool = concurrent.futures.ThreadPoolExecutor(self.jobs)
        try:
            list(pool.map(one, mutants))
        finally:  # on an interrupt, do not wait for the queue: close() ends the runs under way
            pool.shutdown(wait=False, cancel_futures=True)
        return results


def _as_json(result: Result) -> dict[str, object]:
    data = asdict(result)
    data["mutant"]["id"] = result.mutant.ident
    return data


# -- reporting ----------------------------------------------------------------------------------------------------


def summarise(results: list[Result], equivalent: list[tuple[Mutant, str]], elapsed: float) -> dict[str, object]:
    counts = {k: sum(r.outcome == k for r in results) for k in ("killed", "timeout", "survived", "error")}
    scored = counts["killed"] + counts["timeout"] + counts["survived"]
    caught = counts["killed"] + counts["timeout"]
    score = 100.0 * caught / scored if scored else 100.0
    return {"counts": counts, "equivalent": len(equivalent), "scored": scored,
            "score": round(score, 1), "seconds": round(elapsed),
            "survivors": [_as_json(r) for r in results if r.outcome == "survived"],
            "errors": [_as_json(r) for r in results if r.outcome == "error"],
            "equivalent_mutants": [{"id": m.ident, "mutated": m.mutated.strip(), "reason": why}
                                   for m, why in equivalent]}


def print_summary(summary: dict[str, object], results: list[Result]) -> None:
    counts = summary["counts"]
    assert isinstance(counts, dict)
    print()
    print(f"killed {counts['killed']} + timeout {counts['timeout']} of {summary['scored']} non-equivalent mutants"
          f" = {summary['score']}%  (survived {counts['survived']}, errors {counts['error']}, "
          f"equivalent not run {summary['equivalent']}; {summary['seconds']} s)")
    for result in sorted(results, key=lambda r: (r.mutant.path, r.mutant.line)):
        if result.outcome in ("survived", "error"):
            m = result.mutant
            label = f" [{m.name}]" if m.name else ""
            print(f"  {result.outcome.upper()} {m.path}:{m.line} {m.kind}{label}")
            print(f"    - {m.original.strip()}")
            print(f"    + {m.mutated.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=["core", "codec", "protocols", "ledgers", "client"],
                        help="groups (" + ", ".join(GROUPS) + ") or modules under alipay_middleware/ "
                             "(e.g. protocols/openapi.py)")
    parser.add_argument("--named", action="store_true", help="run the mutants in named.toml instead")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--id", dest="ids", nargs="+", default=[],
                        help="only these mutants (ids as --list prints them: path:line:kind, or path:line)")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3 x the tests' own time + 30)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run (quick reruns of a few mutants; timeout 600 s unless --timeout)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "last.json",
                        help="the results file (default tests/mutation/results/last.json; a .jsonl beside it "
                             "grows as mutants finish)")
    args = parser.parse_args(argv)

    equivalents = load_equivalent()
    if args.named:
        mutants, stale = load_named()
        if stale:
            print("named mutants not found (the code moved: update named.toml):\n  " + "\n  ".join(stale))
            return 2
    else:
        modules: list[str] = []
        for name in args.modules:
            modules.extend(GROUPS.get(name, [name]))
        unknown = [m for m in modules if m not in TESTS]
        if unknown:
            parser.error(f"no tests mapped for {unknown}: add them to TESTS in tests/mutation/mutate.py")
        mutants = [m for module in modules for m in generate(module)]
    if args.ids:
        mutants = [m for m in mutants if m.ident in args.ids or f"{m.path}:{m.line}" in args.ids]
    reasons = {m: equivalent_reason(m, equivalents) for m in mutants}
    skipped = [(m, why) for m, why in reasons.items() if why is not None]
    mutants = [m for m in mutants if reasons[m] is None]
    if args.sample is not None and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.path, m.line))

    if args.list:
        for m in mutants:
            print(f"{m.ident}{' [' + m.name + ']' if m.name else ''}\n  - {m.original.strip()}\n"
                  f"  + {m.mutated.strip()}")
        print(f"{len(mutants)} mutants ({len(skipped)} equivalent, not listed)")
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".jsonl").write_text("", encoding="utf-8")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that a kill still cleans up (finally below)
    runner = Runner(args.jobs, args.timeout, args.out)
    started = time.monotonic()
    try:
        runner.prepare(mutants, baseline=not args.no_baseline)
        results = runner.run(mutants)
    finally:
        runner.close()
    summary = summarise(results, skipped, time.monotonic() - started)
    summary["mode"] = "named" if args.named else "generated"
    summary["argv"] = sys.argv[1:]
    args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print_summary(summary, results)
    print(f"results: {args.out}")
    survivors = summary["counts"]["survived"] if isinstance(summary["counts"], dict) else 0
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
