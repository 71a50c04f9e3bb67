"""The graph rewrite for ONNX Runtime's blocked CPU layout, on the exported network."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.gateway.backends import blocked_layout
from service.gateway.backends.embedded import EmbeddedBackend
from service.model.export import PROBS_ATOL
from service.model.network import CoordinateAttention, ca_mobilenet_v2
from service.preprocess import preprocess
from service.spec import ModelSpec
from tests.support.gateway import tiny_onnx_model


@pytest.fixture(scope="module")
def exported(model_repository: Path) -> Path:
    return model_repository / "ca_mobilenetv2_onnx" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def spec(model_repository: Path) -> ModelSpec:
    return ModelSpec.load(model_repository / "ca_mobilenetv2_onnx")


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the Softmax's input as a second output: probabilities near 0 or 1
    would hide differences that the logits show."""
    (softmax,) = [node for node in model.graph.node if node.op_type == "Softmax"]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(softmax.input[0], onnx.TensorProto.FLOAT, None)
    )
    return model


def run(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"IMAGE": batch})  # type: ignore[no-any-return]


def optimized_op_counts(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter[str]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    return collections.Counter(node.op_type for node in optimized.graph.node)


def test_rewritten_graph_computes_what_the_export_does(
    exported: Path, spec: ModelSpec, photos: list[Path]
) -> None:
    plain = with_logits(onnx.load(str(exported)))
    rewritten = blocked_layout.rewrite(plain).model
    batch = np.stack(
        [preprocess(p.read_bytes(), spec, max_image_pixels=10**8) for p in photos[:6]]
    )
    (probs, logits), (new_probs, new_logits) = run(plain, batch), run(rewritten, batch)
    assert np.ptp(logits, axis=1).min() > 1.0  # a network whose answers differ by image
    # Float rounding only: HardSwish rounds differently from Add-Clip-Div-Mul, and the
    # padded convolutions may sum in another order. Logits here span about -4..4.
    np.testing.assert_allclose(new_logits, logits, rtol=1e-4, atol=1e-4)
    # The bar every export meets against eager PyTorch (`service.model.export`).
    np.testing.assert_allclose(new_probs, probs, rtol=0, atol=PROBS_ATOL)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert (np.argsort(-new_probs, axis=1)[:, :5] == top5).all()


def test_every_attention_block_is_rewritten(exported: Path) -> None:
    blocks = [m for m in ca_mobilenet_v2().modules() if isinstance(m, CoordinateAttention)]
    unaligned = [b for b in blocks if b.conv1.out_channels % blocked_layout.BLOCK]
    assert len(blocks) == 16 and unaligned

    result = blocked_layout.rewrite(onnx.load(str(exported)))
    assert result.expanded_gates == len(blocks)
    assert result.hard_swishes == 2 * len(blocks)  # one per strip
    assert result.padded_widths == 2 * len(unaligned)
    onnx.checker.check_model(result.model, full_check=True)
    ops = collections.Counter(node.op_type for node in result.model.graph.node)
    assert ops["HardSwish"] == 2 * len(blocks) and ops["Resize"] == 2 * len(blocks)
    assert "Div" not in ops and "Identity" not in ops


def test_onnx_runtime_keeps_the_attention_in_its_blocked_layout(
    exported: Path, tmp_path: Path
) -> None:
    plain = onnx.load(str(exported))
    before = optimized_op_counts(plain, tmp_path)
    if not before["ReorderInput"]:
        pytest.skip("this CPU runs no blocked (NCHWc) kernels")
    after = optimized_op_counts(blocked_layout.rewrite(plain).model, tmp_path)
    # Nothing re-enters the blocked layout: every attention output stays in it.
    assert after["ReorderInput"] == 0
    assert after["ReorderOutput"] < before["ReorderOutput"]


def test_a_graph_without_attention_passes_through_unchanged() -> None:
    model = onnx.load_from_string(tiny_onnx_model(10))
    result = blocked_layout.rewrite(model)
    assert (result.hard_swishes, result.padded_widths, result.expanded_gates) == (0, 0, 0)
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    batch = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(run(result.model, batch)[0], run(model, batch)[0])


async def test_the_onnx_runtime_engine_serves_either_graph_alike(
    exported: Path, spec: ModelSpec
) -> None:
    batch = np.random.default_rng(1).integers(0, 255, (3, *spec.input_shape), dtype=np.uint8)
    answers = []
    for rewrite_graph in (True, False):
        backend = EmbeddedBackend(
            exported, spec, version="1", threads=1, runtime="onnxruntime",
            rewrite_graph=rewrite_graph,
        )
        await backend.start()
        try:
            answers.append(await backend.infer(batch))
        finally:
            await backend.close()
    np.testing.assert_allclose(answers[0], answers[1], rtol=0, atol=PROBS_ATOL)
