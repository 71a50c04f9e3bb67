"""The Triton test helper leaves nothing behind: a killed or stopped tritonserver takes its
Python backend stubs with it (they outlived it before and piled up across test runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.triton import TritonServer


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def wait_until_empty(pgid: int, within_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


@pytest.mark.parametrize("how", ["kill", "close"])
def test_no_backend_stub_outlives_the_server(model_repository: Path, how: str) -> None:
    triton = TritonServer(model_repository).start()
    assert triton.process is not None
    pgid = triton.process.pid
    assert os.getpgid(pgid) == pgid  # its own group
    assert len(group_members(pgid)) >= 2, "expected tritonserver and a Python backend stub"
    if how == "kill":
        triton.kill()
        assert wait_until_empty(pgid) == []
        triton.start()  # a restart after a crash works, in a group of its own
        assert triton.process is not None
        pgid = triton.process.pid
    triton.close()
    assert wait_until_empty(pgid) == []
