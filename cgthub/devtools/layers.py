"""Imports only point down: `python -m cgthub.devtools.layers [ROOT]` checks it, without importing
anything it checks (it reads the source with `ast`).

Rules, each reported as `file:line: rule`:
- `connectors` may import `cgthub`; `cgthub` never imports `connectors`.
- Every `cgthub` module sits in one of `LAYERS` (bottom first) and imports only from its own layer
  or below; a module placed in no layer is an error, so a new module is placed on purpose.
- No import cycle among the modules below the entry points (`LAYERS[-1]`); an import made only
  for type checking (under `if TYPE_CHECKING:`) runs no code, so it makes no cycle.
- Every exception class derives from `cgthub.errors.CgthubError`, directly or through a hub class.

`KNOWN_UPWARD` lists the upward imports still being taken out: each is reported as debt, not as a
failure, and an entry no longer needed is a failure, so the list only shrinks.
"""

from __future__ import annotations

import ast
import builtins
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Bottom first. A name covers the module and its submodules (the bare package name only itself); the
# longest name that matches wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "cgthub.errors",
            "cgthub.quoting",
            "cgthub.warning_per_address",
            "cgthub.config_file",
            "cgthub.jsontext",
            "cgthub.settings",
            "cgthub.drop_folder",
            "cgthub.security_policy",
            "cgthub.runtime",
            "cgthub.airflow_env",
            "cgthub.bulk",
            "cgthub.hl7v2",
            "cgthub.connections",
        ),
    ),
    (
        "model",
        (
            "cgthub.identifiers",
            "cgthub.pseudonym",
            "cgthub.model",
            "cgthub.lifecycle",
            "cgthub.ops_config",
            "cgthub.markets",
            "cgthub.wal_checkpoint",
            "cgthub.tables",
            "cgthub.ops_tables",
            "cgthub.api.tables",
            "cgthub.changes",
            "cgthub.outbox",
            "cgthub.release_tables",
            "cgthub.scheduling_tables",
            "cgthub.sync_state",
            "cgthub.store",
            "cgthub.heartbeat",
        ),
    ),
    (
        "records",
        (
            "cgthub.alerts",
            "cgthub.archive",
            "cgthub.quarantine",
            "cgthub.conflicts",
            "cgthub.sites",
            "cgthub.qualification",
            "cgthub.correlation",
            "cgthub.ledger_anchor",
            "cgthub.custody_signing",
            "cgthub.audit_trail",
            "cgthub.partners",
            "cgthub.release_guard",
        ),
    ),
    ("projection", ("cgthub.projection",)),
    ("ledger", ("cgthub.ledger",)),
    ("mapping", ("cgthub.mapping",)),
    ("pipeline", ("cgthub.pipeline",)),
    (
        "services",
        (
            "cgthub.routing",
            "cgthub.requalify",
            "cgthub.scan_verification",
            "cgthub.canonical_feed",
            "cgthub.hl7",
            "cgthub.mapping.replay",
            "cgthub.mapping.fixtures",
            "cgthub.partner_sync",
            "cgthub.partner_views",
            "cgthub.outbound",
            "cgthub.reconciliation",
            "cgthub.deadlines",
            "cgthub.market_check",
            "cgthub.alert_delivery",
            "cgthub.notifier",
            "cgthub.decisions",
            "cgthub.hl7_inbox_trigger",
            "cgthub.health",
            "cgthub.metrics",
            "cgthub.demo_scenario",
            "cgthub.release",
            "cgthub.release_evidence",
            "cgthub.slots",
            "cgthub.release_watch",
            "cgthub.booking",
        ),
    ),
    (
        "entry points",
        (
            "cgthub.api",
            "cgthub.console",
            "cgthub.cli",
            "cgthub.orders_view",
            "cgthub.dag_defaults",
            "cgthub.demo",
            "cgthub.up",
            "cgthub.services",
            "cgthub.migrations",
            "cgthub.devtools",
            "cgthub",
        ),
    ),
]

# (file, imported module): upward imports still present, reported as debt until they are gone.
KNOWN_UPWARD: list[tuple[str, str]] = []

_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException) and name != "BaseExceptionGroup"
)
_ENTRY_POINTS = LAYERS[-1][0]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int
    type_only: bool = False


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "versions" in parts and "migrations" in parts:
            continue  # migration scripts: each is loaded by Alembic, never imported
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The module a dotted name lands in: the longest known prefix (an attribute of a module is it)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports(module: str, path: Path, known: dict[str, Path], root: Path) -> Iterator[Edge]:
    """Each hub or connector module `module` imports, with the line (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    relative = str(path.relative_to(root))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.split(".")[0] not in ("cgthub", "connectors"):
                continue
            landed = _resolve(target, known) or target.split(".")[0]
            if landed != module:
                yield Edge(module, landed, relative, node.lineno, id(node) in type_only)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for index, (_label, names) in enumerate(LAYERS):
        for name in names:
            covers = module == name or ("." in name and module.startswith(name + "."))  # "cgthub": itself only
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def _unrooted_exceptions(path: Path, relative: str) -> Iterator[Finding]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
        if bases & _BUILTIN_EXCEPTIONS and "CgthubError" not in bases and node.name != "CgthubError":
            yield Finding(
                relative,
                node.lineno,
                f"exception {node.name} derives from {', '.join(sorted(bases & _BUILTIN_EXCEPTIONS))} "
                "but not from cgthub.errors.CgthubError",
            )


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph[node]):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(root: Path, known_upward: list[tuple[str, str]] | None = None) -> tuple[list[Finding], list[Finding]]:
    """(failures, debt) for the tree at `root`, with `KNOWN_UPWARD` unless told otherwise."""
    allowed = KNOWN_UPWARD if known_upward is None else known_upward
    known = module_files(root, "cgthub") | module_files(root, "connectors")
    failures: list[Finding] = []
    debt: list[Finding] = []
    used: set[tuple[str, str]] = set()
    core_edges: list[Edge] = []
    for module, path in known.items():
        relative = str(path.relative_to(root))
        failures.extend(_unrooted_exceptions(path, relative))
        if module.split(".")[0] != "cgthub":
            continue
        own = layer_of(module)
        if own is None:
            failures.append(Finding(relative, 1, f"{module} is in no layer: place it in LAYERS"))
            continue
        for edge in imports(module, path, known, root):
            if edge.imported.split(".")[0] == "connectors":
                rule = f"{module} imports {edge.imported}: the core never imports a connector"
            else:
                theirs = layer_of(edge.imported)
                if theirs is None or theirs <= own:
                    if (
                        LAYERS[own][0] != _ENTRY_POINTS
                        and not edge.type_only
                        and not _is_ancestor(edge.imported, module)
                    ):
                        core_edges.append(edge)
                    continue
                rule = (
                    f"{module} ({LAYERS[own][0]}) imports {edge.imported} ({LAYERS[theirs][0]}): "
                    "an import must not point up"
                )
            finding = Finding(edge.file, edge.line, rule)
            if (edge.file, edge.imported) in allowed:
                used.add((edge.file, edge.imported))
                debt.append(finding)
            else:
                failures.append(finding)
    for cycle in _cycles(core_edges):
        where = next(e for e in core_edges if e.importer == cycle[0] and e.imported in cycle)
        failures.append(Finding(where.file, where.line, f"import cycle among {', '.join(cycle)}"))
    for file, imported in allowed:
        if (file, imported) not in used:
            failures.append(
                Finding(file, 1, f"KNOWN_UPWARD names {file} -> {imported}, which is gone: remove the entry")
            )
    return failures, debt


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def main(argv: list[str]) -> int:
    """`[ROOT]` (default: this checkout); `--no-known-upward` checks another tree without the
    allow-list, which names this checkout's files."""
    paths = [arg for arg in argv if not arg.startswith("--")]
    root = Path(paths[0]) if paths else Path(__file__).resolve().parents[2]
    failures, debt = check(root, [] if "--no-known-upward" in argv else None)
    for finding in debt:
        print(f"{finding} (known debt)")
    for finding in failures:
        print(finding)
    if failures:
        print(f"{len(failures)} layering problem(s)")
        return 1
    print(f"imports point down ({len(debt)} known upward import(s) left)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
