"""TorchServe 0.12 with its batching, serving the same TorchScript model, on loopback.

Needs the peers' venv (`benchmarks/peers/setup_torchserve.sh` makes it: torch==2.13.0
CPU first, then torchserve==0.12.0 and torch-model-archiver) and Java 17.

`archive()` packs the repository's TorchScript model, its spec and labels and
`torchserve_handler.py` into `ca_mobilenetv2.mar`; `server()` describes a TorchServe with
`workers` Python workers of `torch_threads` threads each, `batchSize`/`maxBatchDelay` as
given, token auth and the management API off (nothing but loopback binds).

Run it in the foreground: `.venv/bin/python -m benchmarks.peers.torchserve --port 8080`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from benchmarks import assets as assets_mod
from benchmarks.servers import Server, free_port, running

PEERS_VENV = assets_mod.ROOT / "benchmarks" / ".venv-peers"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
MODEL = "ca_mobilenetv2"


def available() -> str | None:
    """None when TorchServe can run here, else why not."""
    if not (PEERS_VENV / "bin" / "torchserve").is_file():
        return f"no TorchServe in {PEERS_VENV} (run benchmarks/peers/setup_torchserve.sh)"
    try:
        subprocess.run(["java", "-version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"no working Java: {exc}"
    return None


def archive(found: assets_mod.Assets, store: Path) -> Path:
    """Write `<store>/ca_mobilenetv2.mar` (rebuilt every time: it is quick)."""
    store.mkdir(parents=True, exist_ok=True)
    model_dir = found.repository / assets_mod.TORCHSCRIPT_MODEL_NAME
    extra = ",".join(str(model_dir / name) for name in ("spec.json", "labels.txt"))
    subprocess.run(
        [str(PEERS_VENV / "bin" / "torch-model-archiver"), "--model-name", MODEL,
         "--version", "1.0", "--serialized-file", str(found.torchscript),
         "--handler", str(HANDLER), "--extra-files", extra,
         "--export-path", str(store), "--force"],
        check=True,
    )
    return store / f"{MODEL}.mar"


def server(found: assets_mod.Assets, work: Path, *, port: int | None = None, workers: int = 2,
           torch_threads: int = 1, batch_size: int = 8, max_batch_delay_ms: int = 10) -> Server:
    """A TorchServe `Server` (not started) with its model store and config under `work`."""
    store = work / "model-store"
    for sub in ("tmp", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    archive(found, store)
    port = port or free_port()
    models = {MODEL: {"1.0": {
        "defaultVersion": True, "marName": f"{MODEL}.mar", "minWorkers": workers,
        "maxWorkers": workers, "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms,
        "responseTimeout": 120,
    }}}
    config = work / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{free_port()}",
        f"metrics_address=http://127.0.0.1:{free_port()}",
        f"grpc_inference_port={free_port()}",
        f"grpc_management_port={free_port()}",
        f"model_store={store}",
        f"load_models={MODEL}.mar",
        f"models={json.dumps(models)}",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        f"default_workers_per_model={workers}",
        "vmargs=-Xmx1g -XX:+ExitOnOutOfMemoryError",
    ]) + "\n")
    path = f"{PEERS_VENV / 'bin'}:/usr/bin:/bin:/usr/local/bin"
    return Server(
        name=f"torchserve(workers={workers}x{torch_threads}t, batch={batch_size}, "
             f"delay={max_batch_delay_ms}ms)",
        argv=[str(PEERS_VENV / "bin" / "torchserve"), "--start", "--foreground",
              "--ts-config", str(config), "--model-store", str(store),
              "--disable-token-auth", "--ncs"],
        url=f"http://127.0.0.1:{port}", ready_path="/ping", log=work / "torchserve.log",
        env={"PATH": path, "CA_TS_TORCH_THREADS": str(torch_threads),
             "OMP_NUM_THREADS": str(torch_threads), "LOG_LOCATION": str(work / "logs"),
             "METRICS_LOCATION": str(work / "logs"), "TEMP": str(work / "tmp")},
        cwd=work, ready_check=ready_with_model,
    )


def ready_with_model(srv: Server) -> bool:
    """/ping answers before the workers have loaded: wait until a real image is classified."""
    import io
    import urllib.request

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buffer, format="JPEG")
    request = urllib.request.Request(f"{srv.url}/predictions/{MODEL}", data=buffer.getvalue(),
                                     headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description="Run TorchServe in the foreground.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=int, default=10)
    args = parser.parse_args()
    reason = available()
    if reason:
        raise SystemExit(f"TorchServe cannot run here: {reason}")
    found = assets_mod.ensure()
    srv = server(found, assets_mod.WORK / "torchserve", port=args.port, workers=args.workers,
                 torch_threads=args.torch_threads, batch_size=args.batch_size,
                 max_batch_delay_ms=args.max_batch_delay_ms)
    with running(srv):
        print(f"{srv.name} at {srv.url}/predictions/{MODEL}; Ctrl-C stops it", flush=True)
        try:
            assert srv.process is not None
            srv.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
