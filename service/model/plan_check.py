"""Check a built plan against ONNX Runtime on the CPU before anything serves it.

The plan runs the repository's probe photos (`service.verification`, preprocessed by the
gateway's own code) as one batch and one photo at a time; ONNX Runtime's CPU provider runs
the same ONNX graph the plan was built from. They must agree:

- max |diff| on probabilities <= `PLAN_PROBS_ATOL`, and
- the same top-1 class on every photo, where a class the reference itself scores within
  `TOP1_TIE_RTOL` of its best counts as the same (FP16 may swap near-ties: a random-init
  network answers almost uniformly).

How a plan is run is the caller's: `TensorRT` on a GPU in production, a stand-in in CPU tests.
Torch-free: runs in the TensorRT init image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.model.plan_cache import Verify
from service.spec import ModelSpec
from service.verification import (
    Probs,
    Runner,
    onnx_cpu_runner,
    verification_batch,
    verification_images,
)

OpenPlan = Callable[[Path], Runner]
"""Loads a plan file and returns a function that runs a batch through it; raises
`PlanMismatch` for a plan that does not load."""

# FP16 tolerance on probabilities. On an H200 the whole network in FP16 was 3.1e-2
# (TorchScript) and 4.9e-2 (ONNX Runtime CUDA) from FP32 on these photos, same top-1
# (docs/performance.md), for the test suite's calibrated network. TensorRT chooses FP16 or
# FP32 per layer and fuses per GPU, so its error is neither of those, and other weights
# peak differently: a probability moves by p(1-p) times its logit's error, 0.075 for a 0.3
# logit error at p = 0.5. So 1e-1, twice the worst measured. A wrong plan (other weights,
# layout, normalisation) changes the top-1 class, which is checked on its own.
PLAN_PROBS_ATOL = 1e-1
# exp(0.05) ~ 1.05: two classes whose reference probabilities are within 5% have logits
# within 0.05, inside FP16's rounding of this network's logits.
TOP1_TIE_RTOL = 0.05


class PlanMismatch(RuntimeError):
    """A plan does not load, or disagrees with ONNX Runtime on the probe photos."""


def top1_agrees(probs: Probs, reference: Probs, tie_rtol: float = TOP1_TIE_RTOL) -> list[bool]:
    """Per row: the plan's best class is the reference's, or one the reference scores
    within `tie_rtol` of its best."""
    rows = np.arange(len(reference))
    best = reference[rows, reference.argmax(axis=1)]
    chosen = reference[rows, probs.argmax(axis=1)]
    return [bool(ok) for ok in chosen >= best * (1.0 - tie_rtol)]


def compare(probs: Probs, reference: Probs, atol: float = PLAN_PROBS_ATOL) -> dict[str, Any]:
    """What the check measured; `ok` says whether it passed."""
    if probs.shape != reference.shape:
        return {"ok": False, "problem": f"output shape {probs.shape}, expected {reference.shape}"}
    diff = float(np.max(np.abs(probs.astype(np.float64) - reference)))
    agrees = top1_agrees(probs, reference)
    finite = bool(np.all(np.isfinite(probs)))
    return {
        "ok": finite and diff <= atol and all(agrees),
        "max_abs_diff": diff,
        "tolerance": atol,
        "top1_same": sum(agrees),
        "finite": finite,
    }


def plan_verifier(open_plan: OpenPlan, onnx_path: Path, spec: ModelSpec) -> Verify:
    """A `Verify` for the plan cache: runs a plan on the probe photos (all at once, then
    one by one) against ONNX Runtime CPU; returns the measurements, raises PlanMismatch."""
    batch = verification_batch(spec)
    names = [path.name for path in verification_images()]
    reference = onnx_cpu_runner(onnx_path, spec)(batch)

    def verify(plan_path: Path) -> dict[str, Any]:
        run = open_plan(plan_path)
        try:
            whole = run(batch)
            single = np.concatenate([run(batch[i : i + 1]) for i in range(len(batch))])
        except PlanMismatch:
            raise
        except Exception as exc:  # the runtime's own errors: a plan that cannot run
            raise PlanMismatch(f"{plan_path.name} failed to run: {exc}") from exc
        outputs = {"as one batch": whole, "one photo at a time": single}
        results = {how: compare(probs, reference) for how, probs in outputs.items()}
        for how, result in results.items():
            if not result["ok"]:
                raise PlanMismatch(
                    _describe(plan_path, how, result, names, outputs[how], reference)
                )
        return {
            "photos": len(batch),
            "max_abs_diff": max(r["max_abs_diff"] for r in results.values()),
            "tolerance": PLAN_PROBS_ATOL,
            "top1_same": min(r["top1_same"] for r in results.values()),
            "reference": "onnxruntime CPUExecutionProvider",
        }

    return verify


def _describe(
    plan: Path, how: str, result: dict[str, Any], names: list[str], probs: Probs, ref: Probs
) -> str:
    if "problem" in result:
        return f"{plan.name} ({how}): {result['problem']}"
    winners = ", ".join(
        f"{name}: plan {int(p)} / ONNX Runtime {int(r)}"
        for name, p, r in zip(names, probs.argmax(axis=1), ref.argmax(axis=1), strict=True)
    )
    return (
        f"{plan.name} disagrees with ONNX Runtime CPU ({how}): max |diff| on probabilities "
        f"{result['max_abs_diff']:.3e} (limit {result['tolerance']:.0e}), same top-1 on "
        f"{result['top1_same']} of {len(names)} photos ({winners}), finite: {result['finite']}"
    )
