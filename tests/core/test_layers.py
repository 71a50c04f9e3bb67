"""Imports go one way (docs/architecture.md, "Layers"): core <- model tools, core <- runtime
<- HTTP layer <- cli; the model tools and the runtime never import each other. Read from
the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"

# Most specific prefix wins. A new module must be placed here, in the layer it belongs to.
LAYER_OF = {
    "service": "core",  # the package itself (empty __init__)
    "service.errors": "core",
    "service.spec": "core",
    "service.preprocess": "core",
    "service.verification": "core",
    "service.model": "model",
    "service.gateway": "runtime",  # the package itself (empty __init__)
    "service.gateway.settings": "runtime",
    "service.gateway.modelinfo": "runtime",
    "service.gateway.batching": "runtime",
    "service.gateway.backends": "runtime",
    "service.gateway.runtime": "runtime",
    "service.gateway.metrics": "runtime",
    "service.gateway.logs": "runtime",
    "service.gateway.preprocess": "runtime",
    "service.gateway.app": "http",
    "service.gateway.routes": "http",
    "service.gateway.schemas": "http",
    "service.gateway.uploads": "http",
    "service.gateway.security": "http",
    "service.gateway.middleware": "http",
    "service.gateway.http_errors": "http",
    "service.gateway.server": "http",
    "service.cli": "cli",
}
MAY_IMPORT = {
    "core": {"core"},
    "model": {"core", "model"},
    "runtime": {"core", "runtime"},
    "http": {"core", "runtime", "http"},
    "cli": {"core", "model", "runtime", "http", "cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")),
               key=len, default=None)
    return LAYER_OF[best] if best is not None else None


def service_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "service" or name.startswith("service.")}


def modules() -> list[Path]:
    return sorted(SERVICE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in modules() if layer(module_name(p)) is None]
    assert not unplaced
    # The table names real modules (a stale entry would hide nothing, but misleads).
    names = {module_name(p) for p in modules()}
    assert all(any(n == p or n.startswith(p + ".") for n in names) for p in LAYER_OF)


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for path in modules():
        here = module_name(path)
        own = layer(here)
        assert own is not None
        for target in service_imports(path):
            theirs = layer(target)
            if theirs not in MAY_IMPORT[own]:
                wrong.append(f"{here} ({own}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports() -> None:
    # The HTTP layer does import the runtime: the parser is not blind.
    assert "service.gateway.runtime" in service_imports(SERVICE / "gateway" / "routes.py")
