"""Real photos, preprocessed exactly as the gateway does, for checking a model: the export
gate of `build-repo` and the gateway's check of a new version before it takes traffic.

Torch-free and web-framework-free. Preprocessing is the gateway's own
(`service.preprocess`), so exports are verified on the very inputs they will be served.

The tolerances live here, once: an export must match eager PyTorch within `FP32` (max
|diff| on probabilities `PROBS_ATOL` and the same top-5); `build-repo` records eager
PyTorch's probabilities on the photos in each version directory (`verification.json`,
`Reference`), and the gateway holds a version it is about to serve to the same line
(`FP16` where Triton runs the model in half precision).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.preprocess import preprocess
from service.spec import VERIFICATION_FILENAME, ModelSpec, SpecError

VERIFY_DIR = Path(__file__).parent / "data" / "verify"
_PIXEL_LIMIT = 100_000_000

#: Probabilities `[rows, classes]`, float32 or float64.
Scores = NDArray[np.floating[Any]]
#: A preprocessed batch (uint8 `[N, H, W, 3]`), a model's probabilities for it, and a
#: model form that maps one to the other.
Batch = NDArray[np.uint8]
Probs = NDArray[np.float32]
Runner = Callable[[Batch], Probs]

#: The export gate: an exported form's probabilities within this of eager PyTorch's.
PROBS_ATOL = 1e-5
#: ... and the same classes in the same order among the best `TOP_K`.
TOP_K = 5


def verification_images() -> list[Path]:
    return sorted(VERIFY_DIR.glob("*.jpg"))


def verification_batch(spec: ModelSpec) -> NDArray[np.uint8]:
    """`[N, H, W, 3]` uint8: each shipped photo through the serving preprocessing."""
    return np.stack(
        [
            preprocess(p.read_bytes(), spec, max_image_pixels=_PIXEL_LIMIT)
            for p in verification_images()
        ]
    )


def onnx_cpu_runner(path: Path, spec: ModelSpec) -> Runner:
    """ONNX Runtime's CPU provider on the ONNX file at `path`: how an ONNX export is
    checked against eager PyTorch, and the reference a TensorRT plan built from it is
    checked against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: Batch) -> Probs:
        return session.run([spec.output_name], {spec.input_name: batch})[0]  # type: ignore[no-any-return]

    return run


def top_k_indices(probs: Scores, k: int = TOP_K) -> NDArray[np.int64]:
    """Indices of the k largest per row, best first (ties: the lower index first)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)


def same_ranking(
    got: Scores,
    reference: Scores,
    k: int = TOP_K,
    atol: float = PROBS_ATOL,
) -> bool:
    """True when both give the same top-k, up to classes whose scores tie within `atol`.

    Rank j of `got` must carry (by the reference's scores) the reference's rank-j score:
    an exact match where classes are well separated, and no false alarm where two classes
    are closer than float rounding (as with random-init weights).
    """
    rows = np.arange(len(reference))[:, None]
    by_got = reference[rows, top_k_indices(got, k)]
    by_reference = reference[rows, top_k_indices(reference, k)]
    return bool(np.all(np.abs(by_got - by_reference) <= atol))


@dataclass(frozen=True)
class Tolerance:
    """How close served probabilities must be to the reference: max |diff| `atol` and the
    same top-`top_k` (ties within `atol` allowed)."""

    atol: float
    top_k: int


#: Full precision (the embedded engines, FP32 models on Triton): the export gate itself.
FP32 = Tolerance(atol=PROBS_ATOL, top_k=TOP_K)
#: Half precision (a TensorRT plan, ONNX Runtime's TensorRT accelerator in FP16): the
#: plan check's limit (`service/model/plan_check.py` says why 1e-1) and the same best class.
FP16 = Tolerance(atol=1e-1, top_k=1)


@dataclass(frozen=True)
class Check:
    """The outcome of comparing served probabilities with a reference."""

    max_abs_diff: float
    same_top_k: bool
    tolerance: Tolerance
    photos: int

    @property
    def passed(self) -> bool:
        return self.same_top_k and self.max_abs_diff <= self.tolerance.atol

    def describe(self) -> str:
        return (
            f"max |diff| {self.max_abs_diff:.2e} (limit {self.tolerance.atol:.0e}), same "
            f"top-{self.tolerance.top_k}: {self.same_top_k}, on {self.photos} photos"
        )


def compare(
    got: Scores, reference: Scores, tolerance: Tolerance = FP32
) -> Check:
    """Compare `got` with `reference` (both `[photos, classes]`); a shape mismatch or a
    non-finite value fails (infinite difference)."""
    if got.shape != reference.shape or not np.all(np.isfinite(got)):
        return Check(float("inf"), False, tolerance, len(reference))
    diff = float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))
    same = same_ranking(got, reference, k=tolerance.top_k, atol=tolerance.atol)
    return Check(diff, same, tolerance, len(reference))


@dataclass(frozen=True)
class Reference:
    """What a version's weights answer on the verification photos, recorded by
    `build-repo` from eager PyTorch (`<version>/verification.json`): `photos` the file
    names in `verification_images()` order, `probs` float32 `[photos, classes]`."""

    photos: tuple[str, ...]
    probs: NDArray[np.float32]

    @classmethod
    def of(cls, probs: Scores) -> Reference:
        """The reference for `probs`, computed on `verification_batch` (same order)."""
        photos = tuple(path.name for path in verification_images())
        if len(photos) != len(probs):
            raise ValueError(f"{len(probs)} rows for {len(photos)} verification photos")
        return cls(photos=photos, probs=np.asarray(probs, dtype=np.float32))

    def to_json(self) -> str:
        """JSON with every probability (float32 values print exactly as shortest decimals)
        and, for people, each photo's top-5."""
        return json.dumps(
            {
                "photos": list(self.photos),
                "top5": top_k_indices(self.probs, TOP_K).tolist(),
                "probs": [[float(value) for value in row] for row in self.probs],
            }
        ) + "\n"

    @classmethod
    def load(cls, version_dir: Path) -> Reference | None:
        """Read `<version_dir>/verification.json`; None when there is none. Raises
        `SpecError` for a file that is not a reference, or one recorded on other photos
        than the shipped ones (then it cannot be checked here)."""
        path = version_dir / VERIFICATION_FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            photos = tuple(str(name) for name in data["photos"])
            probs = np.asarray(data["probs"], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"{path} is not a verification record: {exc}") from exc
        expected = tuple(p.name for p in verification_images())
        if photos != expected or probs.ndim != 2 or len(probs) != len(photos):
            raise SpecError(
                f"{path} records photos {list(photos)} (shape {list(probs.shape)}); this "
                f"build verifies on {list(expected)}"
            )
        return cls(photos=photos, probs=probs)
