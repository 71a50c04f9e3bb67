"""Run the gateway as a real HTTP server for tests, and build a tiny model for it.

`GatewayServer` is a context manager with `.url`:

- `GatewayServer(settings)` runs `service.gateway.server.serve(settings)` in a child
  process (settings passed as `CA_*` environment variables; port chosen free). Use it for
  anything that needs a real process: SIGTERM, several workers, logs on stderr, a
  lowered descriptor limit (`rlimit_nofile`).
- `GatewayServer(settings, app=create_app(settings, backend=fake))` runs a given ASGI app
  under uvicorn in a thread of the test process, for fakes injected into the app.

`write_tiny_repository(root)` writes a model repository whose ONNX graph meets the real
contract (uint8 `[N,224,224,3]` -> float32 probabilities) with a handful of classes, so
gateway tests need neither torch nor the real network.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from service.gateway.settings import Settings
from tests.support.triton import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the `CA_*` environment variables that reproduce it."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, tuple | list):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"CA_{name.upper()}"] = text
    return env


class GatewayServer:
    """A gateway on a free loopback port; waits for `/healthz` (and `/readyz` when
    `wait_ready`) before `__enter__` returns."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: Any = None,
        extra_env: dict[str, str] | None = None,
        wait_ready: bool = True,
        start_timeout_s: float = 60.0,
        rlimit_nofile: int | None = None,
    ) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": self.port})
        self.app = app
        self.extra_env = dict(extra_env or {})
        self.wait_ready = wait_ready
        self.start_timeout_s = start_timeout_s
        self.rlimit_nofile = rlimit_nofile  # the child's soft and hard descriptor limit
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="ca-gateway-", suffix=".log")[1])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- start -----------------------------------------------------------------------
    def start(self) -> GatewayServer:
        if self.app is not None:
            self._start_thread()
        else:
            self._start_process()
        self._wait()
        return self

    def _start_process(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        code = (
            "from service.gateway.server import serve; "
            "from service.gateway.settings import Settings; serve(Settings())"
        )
        limit = self.rlimit_nofile

        def set_limit() -> None:  # runs in the child, between fork and exec
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                preexec_fn=set_limit if limit is not None else None,
            )

    def _start_thread(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        path = "/readyz" if self.wait_ready else "/healthz"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("gateway thread exited early (see the test's log)")
            if self.get_status(path) == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"gateway not up in {self.start_timeout_s} s:\n{self.log_tail()}")

    def get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    # -- stop ------------------------------------------------------------------------
    def terminate(self) -> None:
        """Send SIGTERM (process mode) or ask uvicorn to exit (thread mode); don't wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        if self._server is not None:
            self._server.should_exit = True

    def wait(self, timeout_s: float = 30.0) -> int | None:
        """Wait for the server to end; the exit code in process mode."""
        if self.process is not None:
            return self.process.wait(timeout=timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
        return None

    def stop(self) -> None:
        self.terminate()
        try:
            self.wait(30.0)
        except subprocess.TimeoutExpired:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


# -- a tiny model with the real contract -----------------------------------------------
TINY_MODEL = "tiny_onnx"


def tiny_onnx_model(num_classes: int, *, input_size: int = 224, seed: int = 0) -> bytes:
    """ONNX bytes: uint8 `IMAGE [N,S,S,3]` -> `PROBS [N,num_classes]` = softmax of a fixed
    linear map of per-channel means and a coarse 4x4 grid of the image (position-aware,
    so different photos get clearly different answers)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cells = 4
    features = 3 * cells * cells
    weights = rng.normal(0.0, 0.002, size=(features, num_classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(num_classes,)).astype(np.float32)
    cell = input_size // cells
    nodes = [
        helper.make_node("Cast", ["IMAGE"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["PROBS"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                "IMAGE", TensorProto.UINT8, ["N", input_size, input_size, 3]
            )
        ],
        [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["N", num_classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_tiny_repository(
    root: Path,
    *,
    num_classes: int = 10,
    name: str = TINY_MODEL,
    random_init: bool = False,
    spec_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write `<root>/<name>/{spec.json,labels.txt,1/model.onnx,1/weights.json}`; returns
    `root` (use it as `CA_MODEL_REPOSITORY` with `CA_MODEL_NAME=<name>`)."""
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "num_classes": num_classes, **(spec_overrides or {})}
    (model_dir / "spec.json").write_text(json.dumps(spec))
    (model_dir / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(num_classes)))
    (model_dir / "1" / "model.onnx").write_bytes(tiny_onnx_model(num_classes))
    source = "random" if random_init else "tiny-test-weights"
    weights = {"source": source, "random_init": random_init}
    (model_dir / "1" / "weights.json").write_text(json.dumps(weights))
    return root
