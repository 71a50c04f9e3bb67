"""The README's quick start, walked literally: every `$ curl ...` command of its console
blocks runs in a fresh clone of the committed repository against a real `ca-serve serve`,
and prints what the README shows.

The clone's repository is built as `make run` builds it where the authors' checkpoint
cannot be downloaded: the demo weights (`--weights demo`, so a machine that can download
the checkpoint still gets the README's answers), here with `--target cpu`, whose
`ca_mobilenetv2_onnx` is the same ONNX export the embedded backend serves from `make run`'s
GPU-target repository, without the TorchScript export nobody reads here. Only the
address changes: `127.0.0.1:8000` becomes the test gateway's free port.

How outputs compare (the README says the same): everything is equal (labels, class
indices, file names, models, error codes and messages, status lines, headers) except
scores, which may differ by float rounding between CPUs (`SCORE_TOLERANCE`), and the
`content-length` header, which follows the scores' digits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.triton import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "127.0.0.1:8000"
SCORE_TOLERANCE = 1e-4
# Console commands the README shows but this test does not run (they install or serve).
NOT_RUN = ("make run",)
# Headers whose values depend on the run, compared by presence only.
VARIABLE_HEADERS = {"content-length", "date"}


@dataclass(frozen=True)
class Example:
    command: str
    output: str
    line: int


def console_examples(markdown: str) -> list[Example]:
    """`$ command` (continued by trailing backslashes) and the lines it printed, from
    every ```console block."""
    examples: list[Example] = []
    in_block = False
    command: list[str] = []
    output: list[str] = []
    start = 0

    def flush() -> None:
        if command:
            examples.append(Example(" ".join(command), "\n".join(output).strip("\n"), start))
        command.clear()
        output.clear()

    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            if in_block:
                flush()
            in_block = line.strip() == "```console" and not in_block
            continue
        if not in_block:
            continue
        if line.startswith("$ ") or (command and not output and command[-1].endswith("\\")):
            if line.startswith("$ "):
                flush()
                start = number
            part = line[2:] if line.startswith("$ ") else line
            if command:
                command[-1] = command[-1].removesuffix("\\").rstrip()
            command.append(part.strip())
        else:
            output.append(line)
    return examples


def quick_start() -> list[Example]:
    examples = console_examples((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    unknown = [e for e in examples if not e.command.startswith(("curl ", *NOT_RUN))]
    assert unknown == [], f"README console commands this test does not know how to run: {unknown}"
    return [e for e in examples if e.command.startswith("curl ")]


def _environment(clone: Path) -> dict[str, str]:
    """A new user's shell: no CA_* settings, the clone's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "PYTEST_"))}
    env["PYTHONPATH"] = str(clone)
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or shutil.which("curl") is None:
        pytest.fail("the README test needs git and curl (make system-deps installs curl)")
    target = tmp_path_factory.mktemp("readme") / "ca-serve"
    done = subprocess.run(
        ["git", "clone", "--quiet", str(REPO_ROOT), str(target)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"not a git checkout, nothing committed to clone: {done.stderr.strip()}")
    return target


@pytest.fixture(scope="module")
def gateway(clone: Path) -> Iterator[str]:
    env = _environment(clone)
    build = subprocess.run(
        [sys.executable, "-m", "service.cli", "build-repo", "--weights", "demo",
         "--target", "cpu", "--output", "model_repository"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    port = free_port()
    log = (clone.parent / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(address, server, clone.parent / "serve.log")
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait_ready(address: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"ca-serve serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{address}/readyz", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"ca-serve serve not ready in 120 s:\n{log.read_text()[-3000:]}")


def run(example: Example, clone: Path, address: str) -> str:
    command = example.command.replace(README_ADDRESS, address)
    done = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=_environment(clone),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"README line {example.line}: {command}\n{done.stderr}"
    return done.stdout.replace("\r\n", "\n").strip("\n")


def assert_same_json(got: Any, shown: Any, where: str = "$") -> None:
    """Equal, except floats within `SCORE_TOLERANCE`."""
    if isinstance(shown, dict):
        assert isinstance(got, dict) and list(got) == list(shown), f"{where}: {got} vs {shown}"
        for key in shown:
            assert_same_json(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got} vs {shown}"
        for index, (a, b) in enumerate(zip(got, shown, strict=True)):
            assert_same_json(a, b, f"{where}[{index}]")
    elif isinstance(shown, float):
        assert isinstance(got, float) and abs(got - shown) <= SCORE_TOLERANCE, (
            f"{where}: {got} vs {shown}"
        )
    else:
        assert got == shown and type(got) is type(shown), f"{where}: {got!r} vs {shown!r}"


def assert_same_output(got: str, shown: str, where: str) -> None:
    head_got, _, body_got = got.rpartition("\n\n") if got.startswith("HTTP/") else ("", "", got)
    head_shown, _, body_shown = (
        shown.rpartition("\n\n") if shown.startswith("HTTP/") else ("", "", shown)
    )
    assert _headers(head_got) == _headers(head_shown), where
    if body_shown.startswith(("{", "[")):
        assert_same_json(json.loads(body_got), json.loads(body_shown), where)
    else:
        assert body_got == body_shown, where


def _headers(head: str) -> list[str]:
    lines = head.splitlines()
    return lines[:1] + sorted(
        line.split(":", 1)[0].lower() if line.split(":", 1)[0].lower() in VARIABLE_HEADERS
        else line.lower()
        for line in lines[1:]
    )


def test_the_quick_start_has_examples() -> None:
    examples = quick_start()
    assert len(examples) >= 4
    assert all(README_ADDRESS in e.command for e in examples)


@pytest.mark.parametrize("example", quick_start(), ids=lambda e: f"README:{e.line}")
def test_readme_command_prints_what_the_readme_shows(
    example: Example, clone: Path, gateway: str
) -> None:
    assert_same_output(run(example, clone, gateway), example.output, f"README:{example.line}")


def test_the_comparison_notices_a_different_answer() -> None:
    shown = '{"results":[{"label":"oil filter","index":3,"score":0.0362}]}'
    assert_same_json(json.loads(shown.replace("0.0362", "0.03625")), json.loads(shown))
    for changed in (shown.replace("oil filter", "tench"), shown.replace(":3,", ":4,"),
                    shown.replace("0.0362", "0.0372")):
        with pytest.raises(AssertionError):
            assert_same_json(json.loads(changed), json.loads(shown))
