"""Four init steps (real processes, `python -m`) on one cache directory, the first killed
half-way through writing its plan: the others wait for its lock, one rebuilds, all install
the same whole, verified plan, and nothing half-written is ever at a plan's final name."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.spec import ONNX_MODEL, TENSORRT_MODEL
from tests.model import plan_standin
from tests.model.plan_standin import make_repository, temp_files

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Reader(threading.Thread):
    """Reads every `*.plan` in the cache over and over, recording whether each read was the
    whole expected plan."""

    def __init__(self, cache: Path, expected: bytes) -> None:
        super().__init__(daemon=True)
        self.cache, self.expected = cache, expected
        self.reads: list[bool] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.cache.glob("*.plan"):
                try:
                    self.reads.append(path.read_bytes() == self.expected)
                except FileNotFoundError:
                    continue
            time.sleep(0.05)


def test_four_builders_one_killed_half_way(model_repository: Path, tmp_path: Path) -> None:
    onnx = model_repository / ONNX_MODEL / "1" / "model.onnx"
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    cache.mkdir()
    pods = [make_repository(tmp_path / f"pod{i}", onnx) for i in range(4)]
    expected = plan_standin.plan_bytes(onnx, "fp16")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(pod: Path, write_s: float) -> tuple[subprocess.Popen[bytes], Path]:
        stderr = pod / "stderr.log"
        command = [
            sys.executable, "-m", "tests.model.plan_standin",
            "--repository", str(pod), "--cache", str(cache), "--standin-plan", "fp16",
            "--standin-write-s", str(write_s), "--standin-log", str(log),
        ]
        with stderr.open("wb") as err:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=err, stderr=err)
        return process, stderr

    reader = Reader(cache, expected)
    reader.start()
    # The first builder writes slowly; it is killed once its plan is partly written.
    first, _ = start(pods[0], write_s=120.0)
    wait_for(
        lambda: any(0 < p.stat().st_size < len(expected) for p in cache.glob("*.*")),
        "the first build to be half-way",
    )
    others = [start(pod, write_s=1.0) for pod in pods[1:]]
    for _, stderr in others:
        wait_for(lambda stderr=stderr: "waiting for another builder" in stderr.read_text(),
                 f"{stderr.parent.name} to wait for the lock")
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    codes = [process.wait(timeout=300) for process, _ in others]
    reader.stop.set()
    reader.join()

    outputs = {stderr.parent.name: stderr.read_text() for _, stderr in others}
    assert codes == [0, 0, 0], outputs
    lines = log.read_text().splitlines()
    # The killed build and exactly one more: the lock kept the other two from building.
    assert sum(line.startswith("start") for line in lines) == 2, lines
    assert sum(line.startswith("done") for line in lines) == 1, lines
    assert sum("left by a builder that died" in text for text in outputs.values()) == 1
    digest = hashlib.sha256(expected).hexdigest()
    for pod in pods[1:]:
        plan = pod / TENSORRT_MODEL / "1" / "model.plan"
        assert plan.read_bytes() == expected
        described = json.loads(plan.with_name("model.plan.json").read_text())
        assert described["manifest"]["sha256"] == digest
    # The killed pod installed nothing, whole or partial.
    assert not (pods[0] / TENSORRT_MODEL / "1" / "model.plan").exists()
    assert reader.reads and all(reader.reads), "a reader saw a partial plan"
    assert not temp_files(cache, *pods)

    # Later, the killed pod's restart takes the plan from the cache without building.
    again, stderr = start(pods[0], write_s=1.0)
    assert again.wait(timeout=300) == 0, stderr.read_text()
    assert "(cache;" in stderr.read_text()
    assert sum(line.startswith("start") for line in log.read_text().splitlines()) == 2
    assert (pods[0] / TENSORRT_MODEL / "1" / "model.plan").read_bytes() == expected
