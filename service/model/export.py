"""Export the served graph to TorchScript and ONNX, and check every export against eager.

An export is written to the repository only after it agrees with eager PyTorch on real
photos: max absolute difference on probabilities within `PROBS_ATOL` and the same top-5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.model.precision import tf32
from service.spec import ModelSpec

# The gate's arithmetic lives in the core (the gateway checks new versions with it too).
from service.verification import PROBS_ATOL as PROBS_ATOL
from service.verification import TOP_K as TOP_K
from service.verification import Batch, Probs, Runner
from service.verification import same_ranking as same_ranking
from service.verification import top_k_indices as top_k_indices

ONNX_OPSET = 17


class ExportMismatch(RuntimeError):
    """An exported form disagrees with eager PyTorch."""


@dataclass(frozen=True)
class Agreement:
    """How closely one exported form matched eager PyTorch."""

    form: str
    max_abs_diff: float
    same_top_k: bool
    batch_size: int


def eager_runner(served: torch.nn.Module) -> Runner:
    def run(batch: Batch) -> Probs:
        with torch.inference_mode():
            return served(torch.from_numpy(batch)).numpy()

    return run


def export_torchscript(served: torch.nn.Module, path: Path, spec: ModelSpec) -> None:
    """Trace and freeze; the batch dimension stays dynamic (checked by `verify`)."""
    example = torch.zeros((2, *spec.input_shape), dtype=torch.uint8)
    # TF32 off while tracing: the trace keeps the switch, and the served FP32 model must
    # compute in FP32 on GPUs too (see `precision`).
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), tf32(False):
        warnings.simplefilter("ignore")  # tracer chatter about shapes read as Python ints
        traced = torch.jit.trace(served.eval(), (example,))
        frozen = torch.jit.freeze(traced)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(frozen, str(path))


def torchscript_runner(path: Path) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: Batch) -> Probs:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()  # type: ignore[no-any-return]

    return run


def export_onnx(served: torch.nn.Module, path: Path, spec: ModelSpec) -> None:
    """ONNX with a dynamic batch axis, validated by `onnx.checker`."""
    import onnx

    example = torch.zeros((2, *spec.input_shape), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            served.eval(),
            (example,),
            str(path),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def verify(form: str, reference: Probs, candidate: Runner, batch: Batch) -> Agreement:
    """Compare `candidate(batch)` to the eager `reference`; raise `ExportMismatch` if off."""
    got = candidate(batch)
    if got.shape != reference.shape:
        raise ExportMismatch(f"{form}: output shape {got.shape}, eager gives {reference.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    same = same_ranking(got, reference)
    if diff > PROBS_ATOL or not same:
        raise ExportMismatch(
            f"{form} disagrees with eager PyTorch: max |diff| {diff:.2e} (limit {PROBS_ATOL:.0e}), "
            f"same top-{TOP_K}: {same}"
        )
    return Agreement(form=form, max_abs_diff=diff, same_top_k=same, batch_size=len(batch))
