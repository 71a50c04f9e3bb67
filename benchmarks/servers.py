"""Start, probe, measure and stop the servers a benchmark loads; loopback only.

Every server runs in its own session (process group), so `stop()` ends it and whatever it
spawned (TorchServe's Java frontend and Python workers) by that group id, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One started server: its process (group leader), the URL it answers on, its log."""

    name: str
    argv: Sequence[str]
    url: str
    ready_path: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_check: Callable[[Server], bool] | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        env = {**os.environ, **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"see {self.log}")
            if self.ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f} s; see {self.log}")

    def ready(self) -> bool:
        if self.ready_check is not None:
            return self.ready_check(self)
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def pids(self) -> list[int]:
        """The leader and every process in its group (TorchServe's workers included)."""
        if self.process is None:
            return []
        group = self.process.pid
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group:  # field 5 of /proc/PID/stat: the pgrp
                    found.append(int(entry.name))
        return sorted(found)

    def rss_mb(self) -> float:
        """Resident memory of the whole group, in MB (10^6 bytes)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((Path("/proc") / str(pid) / "statm").read_text().split()[1])
        return total * PAGE / 1e6

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after `timeout_s`."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process = None


@contextlib.contextmanager
def running(server: Server, timeout_s: float = 180.0) -> Iterator[Server]:
    """Start `server`, yield it, always stop it."""
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()
