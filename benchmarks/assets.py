"""What every benchmark shares: one checkpoint, the model repository built from it, the
photos, and the machine's description.

The checkpoint is the test suite's seeded, calibrated random network (its answers depend
on the photo, as a trained network's do) saved once as a state_dict; the gateway's ONNX
model, the TorchScript model TorchServe serves and the plain FastAPI peer's eager network
are all built from that one file, so every service computes the same function.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import photos

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "results" / "tmp"
VENV_BIN = Path(sys.executable).parent
ONNX_MODEL_NAME = "ca_mobilenetv2_onnx"
TORCHSCRIPT_MODEL_NAME = "ca_mobilenetv2"


@dataclass(frozen=True)
class ModelFiles:
    """The checkpoint and the model repository built from it."""

    weights: Path
    repository: Path

    @property
    def onnx(self) -> Path:
        return self.repository / ONNX_MODEL_NAME / "1" / "model.onnx"

    @property
    def torchscript(self) -> Path:
        return self.repository / TORCHSCRIPT_MODEL_NAME / "1" / "model.pt"


@dataclass(frozen=True)
class Assets(ModelFiles):
    web: Path
    phone: Path


def ensure_model(work: Path = WORK) -> ModelFiles:
    """The checkpoint (~5 s) and the repository (~1-2 min), built when missing or when
    the model code or the checkpoint changed. Needs no photos, so it also runs on a GPU
    machine that has only the model code."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "weights.pt"
    if not weights.is_file():
        code = (
            "import torch, sys\n"
            "from tests.support.checkpoints import calibrated_network\n"
            "torch.save(calibrated_network().state_dict(), sys.argv[1])\n"
        )
        subprocess.run([sys.executable, "-c", code, str(weights)], check=True, cwd=ROOT)
    model = ModelFiles(weights, work / "repo")
    stamp = model.repository / ".built-from"
    wanted = model_code() + "\n" + hashlib.sha256(weights.read_bytes()).hexdigest()
    built = stamp.read_text() if stamp.is_file() else ""
    if not (model.onnx.is_file() and model.torchscript.is_file()) or built != wanted:
        subprocess.run(
            [sys.executable, "-m", "service.cli", "build-repo", "--weights", str(weights),
             "--target", "gpu", "--output", str(model.repository)],
            check=True, cwd=ROOT,
        )
        stamp.write_text(wanted)
    return model


def ensure(work: Path = WORK) -> Assets:
    """The model files and the photos (~20 s)."""
    model = ensure_model(work)
    sets = photos.write_sets(work / "photos")
    return Assets(model.weights, model.repository, sets["web"], sets["phone"])


def model_code() -> str:
    """A digest of the code that shapes the exported models: a change rebuilds them."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "service" / "model").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def machine() -> str:
    """One line: CPU model, cores this process may use, memory, Python and OS."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {cores} cores, {memory_gib:.0f} GiB, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
