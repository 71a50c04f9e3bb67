"""The repository stands alone: a clone of its committed HEAD into a directory with no
siblings collects the whole suite without errors, so no test, fixture or module reads a
file outside the repository (a sibling folder, an ignored local build, an uncommitted
file). Collection only: fast, and it imports every test module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def lone_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or _git("rev-parse", "--verify", "HEAD").returncode != 0:
        pytest.skip("not running from a git checkout: nothing committed to clone")
    clone = tmp_path_factory.mktemp("alone") / "ca-serve"  # its parent holds nothing else
    done = _git("clone", "--quiet", str(REPO_ROOT), str(clone))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in clone.parent.iterdir()] == ["ca-serve"]
    return clone


def _environment(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "PYTEST_"))}
    env["PYTHONPATH"] = str(clone)  # the clone's code, not this checkout's
    return env


def test_the_clone_is_the_committed_head(lone_clone: Path) -> None:
    here = _git("rev-parse", "HEAD").stdout.strip()
    assert _git("rev-parse", "HEAD", cwd=lone_clone).stdout.strip() == here


def test_the_clone_imports_its_own_code(lone_clone: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import service, tests; print(service.__file__, tests.__file__)"],
        cwd=lone_clone, env=_environment(lone_clone), capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    for path in done.stdout.split():
        assert Path(path).resolve().is_relative_to(lone_clone.resolve()), path


def test_a_lone_clone_collects_without_errors(lone_clone: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=lone_clone, env=_environment(lone_clone), capture_output=True, text=True,
        timeout=600, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "error" not in output.lower().splitlines()[-1], output[-4000:]
    assert " tests collected" in output or " test collected" in output, output[-4000:]
