"""The served graph and its exports agree with eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.model.export import (
    ExportMismatch,
    eager_runner,
    export_onnx,
    export_torchscript,
    same_ranking,
    torchscript_runner,
    verify,
)
from service.model.repository import model_specs
from service.model.served import ServedModel
from service.verification import onnx_cpu_runner, verification_batch
from tests.support.checkpoints import calibrated_network

SPEC = model_specs()["onnx"]


@pytest.fixture(scope="module")
def served() -> ServedModel:
    return ServedModel(calibrated_network(), SPEC).eval()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return verification_batch(SPEC)


def test_served_graph_normalises_inside_and_returns_probabilities(
    served: ServedModel, photos: np.ndarray
) -> None:
    probs = eager_runner(served)(photos)
    assert probs.dtype == np.float32 and probs.shape == (len(photos), 1000)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(served.network((x - mean) / std), dim=1).numpy()
    assert np.allclose(probs, expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def exported(served: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("exports")
    export_torchscript(served, directory / "model.pt", SPEC)
    export_onnx(served, directory / "model.onnx", SPEC)
    return directory


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_torchscript_and_onnx_agree_at_any_batch_size(
    served: ServedModel, photos: np.ndarray, exported: Path, batch_size: int
) -> None:
    # Traced and exported at batch 2: other sizes prove the batch dimension is dynamic.
    batch = np.concatenate([photos, photos[::-1]])[:batch_size]
    reference = eager_runner(served)(batch)
    for form, runner in (
        ("torchscript", torchscript_runner(exported / "model.pt")),
        ("onnx", onnx_cpu_runner(exported / "model.onnx", SPEC)),
    ):
        agreement = verify(form, reference, runner, batch)
        assert agreement.max_abs_diff <= 1e-5 and agreement.same_top_k


def test_onnx_graph_has_the_contracted_io(exported: Path) -> None:
    graph = onnx.load(str(exported / "model.onnx")).graph
    (image,) = graph.input
    (probs,) = graph.output
    assert image.name == "IMAGE" and probs.name == "PROBS"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert probs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 224, 224, 3]


def test_torchscript_convolutions_run_in_fp32_on_gpus(exported: Path) -> None:
    """The trace keeps cuDNN's TF32 switch as each convolution's last argument; with it on,
    Triton's GPU answers moved by 4e-3 (H200). The export turns it off while tracing."""
    graph = torch.jit.load(str(exported / "model.pt")).inlined_graph
    convolutions = [n for n in graph.nodes() if n.kind() == "aten::_convolution"]
    assert len(convolutions) > 50
    assert {list(n.inputs())[-1].toIValue() for n in convolutions} == {False}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored after the trace


def test_onnx_graph_has_no_shape_arithmetic_in_the_attention(exported: Path) -> None:
    """The inference form of coordinate attention (fixed-kernel pooling, no concat/split):
    ReduceMean, Shape/Gather/Slice and Concat cost ONNX Runtime ~15% of its time."""
    ops = [node.op_type for node in onnx.load(str(exported / "model.onnx")).graph.node]
    attention_blocks = 16
    assert ops.count("AveragePool") == 2 * attention_blocks
    assert not {"ReduceMean", "Shape", "Gather", "Slice", "Concat", "Split"} & set(ops)


def test_verify_rejects_a_drifting_export(served: ServedModel, photos: np.ndarray) -> None:
    reference = eager_runner(served)(photos)

    def drifted(batch: np.ndarray) -> np.ndarray:
        return reference + 1e-3

    with pytest.raises(ExportMismatch, match="max \\|diff\\|"):
        verify("drifted", reference, drifted, photos)

    def reordered(batch: np.ndarray) -> np.ndarray:
        return reference[::-1].copy()

    with pytest.raises(ExportMismatch, match="same top-5: False"):
        verify("reordered", reference, reordered, photos)


def test_same_ranking_ignores_ties_below_tolerance_only() -> None:
    reference = np.array([[0.5, 0.2, 0.2 + 1e-7, 0.05, 0.03, 0.02]], dtype=np.float32)
    swapped_tie = reference.copy()
    swapped_tie[0, 1], swapped_tie[0, 2] = reference[0, 2], reference[0, 1]
    assert same_ranking(swapped_tie, reference)
    swapped_real = reference.copy()
    swapped_real[0, 0], swapped_real[0, 1] = reference[0, 1], reference[0, 0]
    assert not same_ranking(swapped_real, reference)
