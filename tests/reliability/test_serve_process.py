"""`ca-serve serve` as a process: exit status 0 after a graceful SIGTERM, `process_*`
metrics in single-process mode, and in multi-worker mode dead workers leave the live
gauges (their files are removed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.reliability.conftest import tiny_settings
from tests.support.gateway import REPO_ROOT, GatewayServer, settings_env
from tests.support.triton import free_port


def test_cli_serve_exits_0_after_sigterm(tiny_repo: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(settings_env(tiny_settings(tiny_repo)))
    env.pop("CA_PORT")
    cli = Path(sys.executable).with_name("ca-serve")
    process = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert process.poll() is None, "ca-serve exited during start-up"
                time.sleep(0.1)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds"):
            assert f"\n{name} " in text, name
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.stderr is not None
    assert b"gateway stopped" in process.stderr.read()


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _live_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("gauge_live*.db")}


def test_multiworker_dead_workers_leave_the_live_gauges(tiny_repo: Path, tmp_path: Path) -> None:
    settings = tiny_settings(tiny_repo, workers=2, access_log=False)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with GatewayServer(settings, extra_env=env) as server:
        assert server.process is not None
        with httpx.Client(base_url=server.url) as client:
            for _ in range(20):  # reach both workers
                assert client.get("/readyz").status_code == 200
            text = client.get("/metrics").text
            assert "process_resident_memory_bytes" not in text  # not aggregatable
            assert "ca_gateway_inflight_requests" in text
        # The workers are the children with live-gauge files (multiprocessing also
        # starts a resource tracker); the second may still be starting.
        deadline = time.monotonic() + 30
        while True:
            files = _live_files(tmp_path)
            workers = {pid for pid in _children(server.process.pid)
                       if any(f"_{pid}.db" in name for name in files)}
            if len(workers) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(workers) == 2, (files, _children(server.process.pid))
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(f"_{victim}.db" in n for n in _live_files(tmp_path)):
            assert time.monotonic() < deadline, "the dead worker's live gauges stayed"
            time.sleep(0.2)
        server.terminate()
        assert server.wait(30) == 0
    assert not _live_files(tmp_path), _live_files(tmp_path)  # workers removed their own
