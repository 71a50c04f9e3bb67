"""The first-party code imports one way only (docs/architecture.md, "Layers").

The graph is read from the source (ast), every `import` counted, including the lazy ones
inside functions: a lazy import is still a dependency. Each module belongs to a layer
(`LAYER_OF`, most specific prefix wins), each layer may import only the layers
`MAY_IMPORT` lists, and those rules form no cycle, so neither can the code.
`service.cli` sits on top and dispatches to every other layer; the client library
(`clients`) imports nothing of the service; the benchmarks may use anything below the CLI.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "clients", "benchmarks")

# A new module must be placed here, in the layer it belongs to.
LAYER_OF = {
    "service": "core",  # the package itself (empty __init__)
    "service.errors": "core",
    "service.spec": "core",
    "service.preprocess": "core",
    "service.verification": "core",
    "service.versions": "core",  # version directories: which exist, complete, published
    "service.model": "model",
    "service.gateway": "runtime",  # the package itself (empty __init__)
    "service.gateway.settings": "runtime",
    "service.gateway.modelinfo": "runtime",
    "service.gateway.batching": "runtime",
    "service.gateway.backends": "runtime",
    "service.gateway.runtime": "runtime",
    "service.gateway.rollout": "runtime",  # model versions without a restart
    "service.gateway.version_check": "runtime",  # a version against its recorded answers
    "service.gateway.metrics": "runtime",
    "service.gateway.logs": "runtime",
    "service.gateway.tracing": "runtime",  # spans (OpenTelemetry API only)
    "service.gateway.tracing_setup": "runtime",  # the SDK from OTEL_* variables
    "service.gateway.app": "http",
    "service.gateway.apidocs": "http",
    "service.gateway.routes": "http",
    "service.gateway.admin": "http",  # the model admin routes (load a version)
    "service.gateway.schemas": "http",
    "service.gateway.uploads": "http",
    "service.gateway.security": "http",
    "service.gateway.middleware": "http",
    "service.gateway.http_errors": "http",
    "service.gateway.server": "http",
    "service.gateway.connections": "http",
    "service.gateway.connection_guard": "http",
    "service.gateway.connection_table": "http",
    "service.gateway.connection_budget": "http",
    "service.gateway.json_body": "http",
    "service.gateway.trace_http": "http",  # FastAPI telemetry, traceresponse
    "service.gateway.v2": "http",  # the Open Inference Protocol: codec, contract, routes
    "service.loadgen": "loadgen",
    "service.cli": "cli",
    "clients": "clients",
    "benchmarks": "benchmarks",
}
MAY_IMPORT = {
    "core": {"core"},
    "model": {"core", "model"},
    "runtime": {"core", "runtime"},
    "http": {"core", "runtime", "http"},
    "clients": {"clients"},
    "loadgen": {"core", "runtime", "clients", "loadgen"},
    "cli": {"core", "model", "runtime", "http", "clients", "loadgen", "cli"},
    "benchmarks": {"core", "model", "runtime", "http", "clients", "loadgen", "benchmarks"},
}

ModuleGraph = dict[str, set[str]]


def module_names(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every first-party module under `root` -> its file (`pkg/__init__.py` is `pkg`)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue  # a virtualenv or cache inside the tree (benchmarks/.venv-peers)
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Dotted names `tree` imports; relative imports resolved against `module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod, `from mod import name` the
            # module mod: the caller keeps the longest prefix that is a module.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def module_graph(root: Path, packages: Iterable[str]) -> ModuleGraph:
    """First-party module -> the first-party modules it imports (longest known prefix)."""
    modules = module_names(root, packages)
    graph: ModuleGraph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for name in _imported(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
        graph[module] = targets
    return graph


def layer_of(module: str, layers: Mapping[str, str] = LAYER_OF) -> str:
    best = max((p for p in layers if module == p or module.startswith(p + ".")),
               key=len, default=None)
    if best is None:
        raise ValueError(f"module {module} belongs to no layer: add it to LAYER_OF")
    return layers[best]


def layer_graph(
    graph: Mapping[str, set[str]], layers_of: Mapping[str, str] = LAYER_OF
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Layer -> imported layer -> the module edges behind that layer edge."""
    layers: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(dict)
    for source, targets in graph.items():
        for target in sorted(targets):
            a, b = layer_of(source, layers_of), layer_of(target, layers_of)
            if a != b:
                layers[a].setdefault(b, []).append((source, target))
    return layers


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the directed graph as [n0, n1, ..., n0], or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def describe_cycle(cycle: list[str], layers: Mapping[str, Mapping[str, list[tuple[str, str]]]]
                   ) -> str:
    """`a -> b -> a`, then the module imports that make each step."""
    lines = [" -> ".join(cycle)]
    for a, b in pairwise(cycle):
        imports = ", ".join(f"{s} imports {t}" for s, t in layers[a][b])
        lines.append(f"  {a} -> {b}: {imports}")
    return "\n".join(lines)


def test_every_module_has_a_layer() -> None:
    modules = module_names(ROOT, PACKAGES)
    for module in modules:
        layer_of(module)  # raises, naming the module, when it has none
    # The table names real modules (a stale entry would hide nothing, but misleads).
    stale = [p for p in LAYER_OF if not any(m == p or m.startswith(p + ".") for m in modules)]
    assert stale == []


def test_imports_go_down_the_layers() -> None:
    layers = layer_graph(module_graph(ROOT, PACKAGES))
    wrong = [
        f"{source} ({a}) imports {target} ({b})"
        for a, targets in layers.items()
        for b, edges in targets.items()
        if b not in MAY_IMPORT[a]
        for source, target in edges
    ]
    assert not wrong, "\n".join(wrong)


def test_the_layer_rules_and_the_code_have_no_cycle() -> None:
    rules = {a: {b for b in allowed if b != a} for a, allowed in MAY_IMPORT.items()}
    assert find_cycle(rules) is None
    layers = layer_graph(module_graph(ROOT, PACKAGES))
    cycle = find_cycle(layers)
    assert cycle is None, "import cycle between layers:\n" + describe_cycle(cycle, layers)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function-level, relative import is found
    and named with the modules behind it."""
    (tmp_path / "service" / "gateway").mkdir(parents=True)
    (tmp_path / "clients").mkdir()
    for init in ("service", "service/gateway", "clients"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "service" / "spec.py").write_text("import json\n")
    (tmp_path / "service" / "gateway" / "app.py").write_text(
        "from .. import spec\nfrom clients import client\n"
    )
    (tmp_path / "clients" / "client.py").write_text(
        "def send() -> None:\n    from service.gateway.app import spec\n"
    )
    graph = module_graph(tmp_path, ("service", "clients"))
    assert graph["service.gateway.app"] == {"service.spec", "clients.client"}
    assert graph["clients.client"] == {"service.gateway.app"}
    toy_layers = {"service": "core", "service.gateway": "http", "clients": "clients"}
    layers = layer_graph(graph, toy_layers)
    cycle = find_cycle(layers)
    assert cycle == ["clients", "http", "clients"]
    assert "clients.client imports service.gateway.app" in describe_cycle(cycle, layers)

