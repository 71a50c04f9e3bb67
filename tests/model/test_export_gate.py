"""`ca-serve build-repo` refuses an export that disagrees with eager PyTorch.

The exporter is replaced by one that writes a perturbed copy of the served model (the
export a converter bug would produce); the real gate, the real runners and the real CLI
do the rest, on the suite's calibrated checkpoint (its rankings are well separated). A
refused build exits 1, names the form, and leaves no model file where Triton or the
gateway would load it; a model an earlier build verified stays as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from service.cli import main as cli_main
from service.model import repository
from service.model.served import ServedModel
from service.spec import ModelSpec

Exporter = Callable[[torch.nn.Module, Path, ModelSpec], None]
MODEL_FILES = ("model.onnx", "model.pt", "model.plan")


Perturbation = Callable[[torch.nn.Linear], None]


def rerank(head: torch.nn.Linear) -> None:
    """A different answer: class 3 jumps to the top of every ranking."""
    head.bias[3] += 8.0


def sharpen(head: torch.nn.Linear) -> None:
    """The same ranking (logits scaled by a positive factor), other probabilities: only
    the tolerance can catch it."""
    head.weight.mul_(1.5)
    head.bias.mul_(1.5)


def perturbing(real: Exporter, perturb: Perturbation) -> Exporter:
    """`real`, but exporting a copy whose classifier head was perturbed."""

    def export(served: torch.nn.Module, path: Path, spec: ModelSpec) -> None:
        assert isinstance(served, ServedModel)
        broken = copy.deepcopy(served)
        head = broken.network.classifier[1]
        assert isinstance(head, torch.nn.Linear)
        with torch.no_grad():
            perturb(head)
        real(broken, path, spec)

    return export


def build(output: Path, target: str, weights: Path) -> int:
    return cli_main(
        ["build-repo", "--weights", str(weights), "--target", target, "--output", str(output)]
    )


def model_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and (p.name in MODEL_FILES or "unverified" in p.name)
    )


@pytest.mark.parametrize(
    ("exporter", "target", "perturb", "form", "same_top5"),
    [
        ("export_torchscript", "gpu", rerank, "torchscript", False),
        ("export_onnx", "cpu", sharpen, "onnx", True),
    ],
    ids=["torchscript-reranked", "onnx-sharpened"],
)
def test_build_repo_refuses_an_export_that_disagrees_with_eager(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    test_checkpoint: Path,
    exporter: str,
    target: str,
    perturb: Perturbation,
    form: str,
    same_top5: bool,
) -> None:
    monkeypatch.setattr(repository, exporter, perturbing(getattr(repository, exporter), perturb))
    assert build(tmp_path, target, test_checkpoint) == 1
    err = capsys.readouterr().err
    assert f"{form} disagrees with eager PyTorch" in err, err[-2000:]
    assert f"same top-5: {same_top5}" in err, err[-2000:]
    assert model_files(tmp_path) == []
    assert list(tmp_path.rglob("weights.json")) == []


def test_a_refused_rebuild_keeps_the_model_an_earlier_build_verified(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    test_checkpoint: Path,
) -> None:
    assert build(tmp_path, "cpu", test_checkpoint) == 0
    [served] = model_files(tmp_path)
    verified = served.read_bytes()
    weights = (served.parent / "weights.json").read_text()
    monkeypatch.setattr(
        repository, "export_onnx", perturbing(repository.export_onnx, rerank)
    )
    assert build(tmp_path, "cpu", test_checkpoint) == 1
    assert "onnx disagrees with eager PyTorch" in capsys.readouterr().err
    assert model_files(tmp_path) == [served]
    assert served.read_bytes() == verified
    assert (served.parent / "weights.json").read_text() == weights
