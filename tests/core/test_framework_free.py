"""The core loads no web framework: the model tools (`ca-serve build-repo`, export checks)
and the serving runtime work without FastAPI or Starlette, which only the gateway's HTTP
layer imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_FRAMEWORKS = ("fastapi", "starlette")


def modules_loaded_by(module: str) -> list[str]:
    """Top-level package names in `sys.modules` after importing `module` in a fresh
    interpreter (this process has long since imported everything)."""
    code = (
        "import importlib, json, sys; "
        f"importlib.import_module({module!r}); "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "service.errors",
        "service.preprocess",
        "service.verification",
        "service.model.repository",
        "service.gateway.runtime",
        "service.gateway.backends.embedded",
        "service.gateway.backends.triton",
        "service.gateway.v2.codec",
        "service.gateway.v2.parse",
        "service.gateway.v2.contract",
    ],
)
def test_core_modules_import_no_web_framework(module: str) -> None:
    loaded = modules_loaded_by(module)
    assert module.split(".")[0] in loaded  # the probe itself works
    assert not set(WEB_FRAMEWORKS) & set(loaded), f"{module} pulls in a web framework"


def test_the_http_layer_does_load_the_framework() -> None:
    # The check above would pass vacuously if the probe could not see these packages.
    assert "fastapi" in modules_loaded_by("service.gateway.http_errors")
