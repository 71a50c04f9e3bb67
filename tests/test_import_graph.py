"""The first-party packages import one another one way only: no cycles.

The graph is read from the source (ast), every `import` counted, including the lazy ones
inside functions: a lazy import is still a dependency. Modules are collapsed to the layers
a maintainer reasons about (`LAYERS`), and the layer graph must be acyclic. `service.cli`
is a layer of its own: the command line sits on top and dispatches to every other layer,
so folding it into the core would make every layer look like it imports itself in a loop.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "clients", "benchmarks")
# Most specific first: a module belongs to the first layer that is a prefix of its name.
LAYERS = (
    "service.cli",
    "service.gateway",
    "service.model",
    "service.loadgen",
    "service",
    "clients",
    "benchmarks",
)

# Known edge, allowed until preprocessing moves out of the gateway into the core: the
# repository writer's verification batch uses the gateway's preprocessing
# (service.verification -> service.gateway.preprocess), closing the loop
# service -> service.gateway -> service. Remove this allowance once that move is merged.
ALLOWED_MODULE_EDGES: frozenset[tuple[str, str]] = frozenset(
    {("service.verification", "service.gateway.preprocess")}
)

ModuleGraph = dict[str, set[str]]


def module_names(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every first-party module under `root` -> its file (`pkg/__init__.py` is `pkg`)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
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


def layer_of(module: str, layers: Iterable[str] = LAYERS) -> str:
    for layer in layers:
        if module == layer or module.startswith(layer + "."):
            return layer
    raise ValueError(f"module {module} belongs to no layer")


def layer_graph(
    graph: Mapping[str, set[str]], allowed: frozenset[tuple[str, str]] = frozenset()
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Layer -> imported layer -> the module edges behind that layer edge."""
    layers: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(dict)
    for source, targets in graph.items():
        for target in sorted(targets):
            if (source, target) in allowed:
                continue
            a, b = layer_of(source), layer_of(target)
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


def test_the_package_import_graph_has_no_cycle() -> None:
    layers = layer_graph(module_graph(ROOT, PACKAGES), ALLOWED_MODULE_EDGES)
    cycle = find_cycle(layers)
    assert cycle is None, "import cycle between packages:\n" + describe_cycle(cycle, layers)


def test_the_client_library_imports_nothing_from_the_service() -> None:
    graph = module_graph(ROOT, PACKAGES)
    leaks = sorted(
        (source, target)
        for source, targets in graph.items()
        if layer_of(source) == "clients"
        for target in targets
        if layer_of(target) != "clients"
    )
    assert leaks == []


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
    layers = layer_graph(graph)
    cycle = find_cycle(layers)
    assert cycle == ["clients", "service.gateway", "clients"]
    assert "clients.client imports service.gateway.app" in describe_cycle(cycle, layers)
    assert find_cycle(layer_graph(graph, frozenset({("clients.client",
                                                     "service.gateway.app")}))) is None

