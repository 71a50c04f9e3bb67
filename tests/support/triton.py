"""Start the real Triton Inference Server bundled in the nvidia-pytriton wheel.

The wheel carries a complete `tritonserver` binary and its Python backend; on these
GPU-less machines it serves a `--target cpu` repository (ONNX Runtime behind the Python
backend) over the real KServe v2 HTTP and gRPC protocols. The paths, libraries and backend
layout it needs: docs/architecture.md, "Tests and the real Triton on CPU".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` (a loopback address) that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_on(hosts: list[str]) -> int:
    """A TCP port free on every one of `hosts` (servers on several loopback addresses
    behind one DNS name share their ports, as pods behind a headless Service do)."""
    error: OSError | None = None
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, port))
        except OSError as exc:
            error = exc
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}: {error}")


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def triton_binary() -> Path:
    return site_packages() / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def _backend_directory(root: Path) -> Path:
    """Lay out `<root>/python/` the way tritonserver's --backend-directory expects."""
    bundle = site_packages() / "pytriton" / "tritonserver"
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(bundle / "backends" / "python" / name, python_dir / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundle / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    return root


class TritonServer:
    """A tritonserver process on free loopback ports; a context manager.

    `start()` waits for `/v2/health/ready`; `stop()` sends SIGTERM and waits; `kill()`,
    `pause()` (SIGSTOP) and `resume()` (SIGCONT) are there for fault tests. `restart()`
    starts it again on the same ports. `host` is the loopback address every port binds
    to; `ports` (http, grpc, metrics) are chosen free on it unless given.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        extra_args: list[str] | None = None,
        ready_timeout_s: float = 120.0,
        host: str = "127.0.0.1",
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = ports or (
            free_port(host), free_port(host), free_port(host)
        )
        self.extra_args = list(extra_args or [])
        self.ready_timeout_s = ready_timeout_s
        self._workdir = Path(tempfile.mkdtemp(prefix="ca-triton-"))
        self._backends = _backend_directory(self._workdir / "backends")
        self.log_path = self._workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            str(triton_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(site_packages() / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The Python backend stub starts an isolated interpreter that ignores PYTHONPATH by
        # itself; the repository's model.py adds these entries, so it finds numpy and
        # onnxruntime from this environment.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site_packages()), env.get("PYTHONPATH", "")) if p
        )
        return env

    def start(self) -> TritonServer:
        log = self.log_path.open("ab")
        # Its own process group: the Python backend stubs are its children, and a killed
        # tritonserver leaves them running (orphans holding ~500 MB each) unless the whole
        # group is signalled.
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
        )
        log.close()
        self.wait_ready()
        return self

    def is_ready(self) -> bool:
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited early:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"tritonserver not ready in {self.ready_timeout_s} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """A crash: tritonserver and its backend stubs die at once."""
        if self.process is not None:
            self._kill_group()
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self._kill_group()  # whatever is left: a hung server, stubs that outlived it
        self.process.wait(timeout=10)

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
