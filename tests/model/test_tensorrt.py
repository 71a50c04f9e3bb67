"""TensorRT and CUDA agreement: need a GPU, so they skip cleanly on CPU-only machines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.model import tensorrt as trt_build
from service.model import triton_config
from service.model.export import eager_runner, same_ranking
from service.model.repository import build_repository, model_specs
from service.model.served import ServedModel
from service.verification import verification_batch
from tests.support.checkpoints import calibrated_network, save_released_format

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_onnxruntime_cuda = pytest.mark.skipif(
    not torch.cuda.is_available()
    or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs a CUDA GPU and onnxruntime-gpu",
)
needs_tensorrt = pytest.mark.skipif(
    not trt_build.available(), reason="needs CUDA and the tensorrt package"
)


def test_tensorrt_cli_reports_a_clear_error_without_a_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trt_build.main(["--repository", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.fixture
def cuda_repository(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A repository from a calibrated network, the verification batch and eager CPU's
    probabilities for it."""
    spec = model_specs()["onnx"]
    served = ServedModel(calibrated_network(), spec).eval()
    batch = verification_batch(spec)
    build_repository(
        tmp_path,
        weights=str(save_released_format(served.network, tmp_path / "c.pth")),
        progress=lambda _: None,
    )
    return tmp_path, batch, eager_runner(served)(batch)


def assert_fp32_agreement(probs: np.ndarray, reference: np.ndarray) -> None:
    assert np.max(np.abs(probs - reference)) <= 1e-4
    assert same_ranking(probs, reference, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_torchscript_agrees_with_eager_on_cuda(
    cuda_repository: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    repository, batch, reference = cuda_repository
    module = torch.jit.load(
        str(repository / "ca_mobilenetv2" / "1" / "model.pt"), map_location="cuda"
    )
    # Under the GPU's defaults (TF32 allowed), as Triton's libtorch backend runs it; the
    # profiling executor optimises the graph after the first runs, so check those too.
    with torch.inference_mode():
        runs = [module(torch.from_numpy(batch).cuda()).cpu().numpy() for _ in range(3)]
    for probs in runs:
        assert_fp32_agreement(probs, reference)  # FP32 convolutions, not TF32


@pytest.mark.gpu
@needs_onnxruntime_cuda
def test_onnx_agrees_with_eager_on_cuda(
    cuda_repository: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    import onnxruntime as ort

    repository, batch, reference = cuda_repository
    model_dir = repository / "ca_mobilenetv2_onnx"
    # The CUDA EP options the model's config gives Triton's ONNX Runtime backend.
    options = triton_config.cuda_provider_options(triton_config.load(model_dir))
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=[("CUDAExecutionProvider", options)]
    )
    # ONNX Runtime falls back to the CPU with a warning when CUDA cannot start.
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert_fp32_agreement(session.run(["PROBS"], {"IMAGE": batch})[0], reference)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_plan_builds_and_agrees(tmp_path: Path) -> None:
    spec = model_specs()["onnx"]
    served = ServedModel(calibrated_network(), spec).eval()
    build_repository(
        tmp_path,
        weights=str(save_released_format(served.network, tmp_path / "c.pth")),
        progress=lambda _: None,
    )
    plan = trt_build.build_for_repository(tmp_path, cache=tmp_path / "cache", fp16=True)
    assert plan.is_file() and plan.stat().st_size > 0
    # A second build on the same GPU comes from the cache.
    assert len(list((tmp_path / "cache").glob("*.plan"))) == 1
    batch = verification_batch(spec)
    reference = eager_runner(served)(batch)
    probs = _run_plan(plan, batch)
    # FP16 inside: looser than the FP32 exports, same winner. The whole network cast to
    # FP16 in TorchScript was 3.1e-2 from FP32 on these photos (H200, 2026-11-30); this
    # test network's logits span +-10, so FP16 rounding shows in its probabilities.
    assert np.max(np.abs(probs - reference)) <= 5e-2
    assert np.array_equal(probs.argmax(axis=1), reference.argmax(axis=1))


def _run_plan(plan: Path, batch: np.ndarray) -> np.ndarray:
    """Run a serialized engine with the TensorRT 10 tensor-address API on torch buffers."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    image = torch.from_numpy(batch).cuda()
    probs = torch.empty((len(batch), 1000), dtype=torch.float32, device="cuda")
    context.set_input_shape("IMAGE", tuple(image.shape))
    context.set_tensor_address("IMAGE", image.data_ptr())
    context.set_tensor_address("PROBS", probs.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return probs.cpu().numpy()


class _FakeTensorRT:
    """Just enough of the `tensorrt` module for `build_plan`'s own logic: which flags and
    which optimisation profile it asks the builder for."""

    __version__ = "10.99-fake"

    class BuilderFlag:
        FP16 = "FP16"
        TF32 = "TF32"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    def __init__(self, parses: bool = True) -> None:
        self.flags: set[str] = {"TF32"}  # TensorRT's default
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.parses = parses
        fake = self

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                assert size > 0

            def set_flag(self, flag: str) -> None:
                fake.flags.add(flag)

            def clear_flag(self, flag: str) -> None:
                fake.flags.discard(flag)

            def add_optimization_profile(self, profile: object) -> None:
                pass

        class Profile:
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                fake.shapes[name] = shapes

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> object:
                return object()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: object, config: Config) -> bytes:
                return b"plan"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network: object, logger: object) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                return fake.parses

            def get_error(self, index: int) -> str:
                return "unsupported operator"

        self.Builder = Builder
        self.OnnxParser = OnnxParser


@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "fp32"])
def test_build_plan_asks_for_the_precision_and_batch_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fp16: bool
) -> None:
    fake = _FakeTensorRT()
    monkeypatch.setattr(trt_build, "_tensorrt", lambda: fake)
    spec = model_specs()["tensorrt"]
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    plan = trt_build.build_plan(onnx_path, tmp_path / "out" / "model.plan", spec, fp16=fp16)
    assert plan.read_bytes() == b"plan"
    # FP16 plans may use FP16 (and TF32) kernels; FP32 plans must not fall back to TF32.
    assert fake.flags == ({"FP16", "TF32"} if fp16 else set())
    one = (1, *spec.input_shape)
    assert fake.shapes[spec.input_name][0] == one
    assert fake.shapes[spec.input_name][2] == (spec.max_batch_size, *spec.input_shape)


def test_build_plan_reports_the_parser_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_build, "_tensorrt", lambda: _FakeTensorRT(parses=False))
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="unsupported operator"):
        trt_build.build_plan(onnx_path, tmp_path / "model.plan", model_specs()["tensorrt"])
