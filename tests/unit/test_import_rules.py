"""The import rules docs/architecture.md states, checked on the source: the pure cores reach no
faust, aiokafka, asyncpg or click, however indirectly, and no two modules of the package import
each other, however indirectly.

Both read the modules' syntax trees (nothing is imported), so a rule broken in a branch that no
test runs, or in an import inside a function, fails here as well."""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "services"
PACKAGE = "concord"

# What a pure core never loads: the stream framework, the Kafka client, the database driver and
# the command line. They belong to the shells around the cores (runtime/, */app.py, the stores,
# cli/, worker.py).
FORBIDDEN = frozenset({"faust", "aiokafka", "asyncpg", "click"})

# The list in docs/architecture.md ("Pure cores never import ..."); a name ending in ".*" is a
# package and every module in it.
PURE_CORES = (
    "concord.ingestion.fhir",
    "concord.ingestion.fhir_fast",
    "concord.ingestion.hl7v2",
    "concord.ingestion.claims",
    "concord.ingestion.record_time",
    "concord.normalization.records",
    "concord.normalization.facts.*",
    "concord.clinical_text.*",
    "concord.narrative.reading",
    "concord.normalization.identity.*",
    "concord.normalization.units",
    "concord.normalization.terminology",
    "concord.normalization.timing",
    "concord.conflicts.rules",
    "concord.conflicts.policy",
    "concord.alerting.lifecycle",
    "concord.deadletters",
    "concord.normalization.identity_reviews",
    "concord.review.alerts",
    "concord.review.access",
    "concord.review.audit",
)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in (SOURCES / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(SOURCES).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imported_names(name: str, path: Path) -> Iterator[str]:
    """Every dotted name the module imports, anywhere in it, relative imports made absolute;
    for `from X import y`, X.y when that is a module, else X."""
    package = _package_of(name, path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


@cache
def imports(name: str) -> frozenset[str]:
    """What the module imports: its own package's modules by name, anything else by its
    top-level name (aiokafka.errors -> aiokafka)."""
    found = set()
    for imported in _imported_names(name, modules()[name]):
        found.add(imported if imported in modules() else imported.partition(".")[0])
    found.discard(name)
    return frozenset(found)


def packages_above(name: str) -> list[str]:
    """The packages Python runs before the module: concord.a.b -> concord, concord.a."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def loaded_by(name: str) -> dict[str, str]:
    """Everything importing the module loads, the packages above each module included, each
    with the module that first imports it: breadth first, so the chains are shortest."""
    seen = {name: ""}
    todo = deque([name])
    while todo:
        current = todo.popleft()
        if current not in modules():
            continue
        for target in sorted({*imports(current), *packages_above(current)}):
            if target not in seen:
                seen[target] = current
                todo.append(target)
    return seen


def chain(seen: dict[str, str], target: str) -> str:
    path = [target]
    while seen[path[-1]]:
        path.append(seen[path[-1]])
    return " -> ".join(reversed(path))


def pure_modules() -> list[str]:
    names = []
    for core in PURE_CORES:
        if core.endswith(".*"):
            package = core.removesuffix(".*")
            names += sorted(n for n in modules() if n == package or n.startswith(package + "."))
        else:
            names.append(core)
    return names


def forbidden_reached(name: str) -> list[str]:
    seen = loaded_by(name)
    return [chain(seen, target) for target in sorted(FORBIDDEN & seen.keys())]


def test_every_pure_core_named_exists() -> None:
    missing = [name for name in pure_modules() if name not in modules()]
    assert not missing
    assert len(pure_modules()) > len(PURE_CORES)  # the two packages hold several modules


def test_the_pure_cores_load_no_framework_client_driver_or_command_line() -> None:
    broken = [line for name in pure_modules() for line in forbidden_reached(name)]
    assert not broken, "a pure core reaches what it must not:\n" + "\n".join(broken)


def test_the_rule_sees_an_indirect_import() -> None:
    # A stage is no pure core: it imports no aiokafka itself, but the batch loop it runs in does.
    reached = forbidden_reached("concord.conflicts.app")
    assert "concord.conflicts.app -> concord.runtime.batch -> aiokafka" in reached, reached
    assert "concord.worker -> faust" in forbidden_reached("concord.worker")


def strongly_connected(graph: dict[str, frozenset[str]]) -> Iterator[set[str]]:
    """Tarjan's components of the graph, iteratively (no recursion limit to hit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(graph[successor])))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    yield component


def cycles(graph: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    return [frozenset(c) for c in strongly_connected(graph) if len(c) > 1]


def package_graph() -> dict[str, frozenset[str]]:
    """Module -> the package's modules it names in an import. The packages Python runs before a
    submodule are no edge: a submodule imported through its package is no cycle."""
    return {name: imports(name) & modules().keys() for name in modules()}


def _names(components: Iterable[frozenset[str]]) -> list[str]:
    return sorted(" <-> ".join(sorted(c)) for c in components)


def test_no_two_modules_import_each_other() -> None:
    found = set(cycles(package_graph()))
    assert not found, "import cycles: " + "; ".join(_names(found))


def test_the_cycle_check_finds_an_indirect_cycle() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a", "d"}),
        "d": frozenset(),
        "e": frozenset({"e"}),  # importing itself is no cycle between modules
    }
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
