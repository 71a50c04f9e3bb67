"""TensorRT: the GPU agreement tests (skipped without CUDA and TensorRT), and on CPU the
builder's flags and profile (a stand-in `tensorrt` module), the version check on recorded
`/proc` and `ldd` text, and the plan checks that run before a plan executes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.model import tensorrt as trt_build
from service.model import tensorrt_version, triton_config
from service.model.export import eager_runner, same_ranking
from service.model.plan_check import PLAN_PROBS_ATOL
from service.model.repository import build_repository, model_specs
from service.model.served import ServedModel
from service.spec import ONNX_MODEL, TENSORRT_MODEL
from service.verification import verification_batch
from tests.model.plan_standin import make_repository
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
def test_tensorrt_plan_builds_verifies_and_is_cached(tmp_path: Path) -> None:
    """The init step's own path on a real GPU: version check, build, the check against
    ONNX Runtime CPU, the cache; then the plan run directly against eager PyTorch."""
    from service.model.tensorrt_runtime import open_plan

    spec = model_specs()["tensorrt"]
    served = ServedModel(calibrated_network(), spec).eval()
    build_repository(
        tmp_path,
        weights=str(save_released_format(served.network, tmp_path / "c.pth")),
        progress=lambda _: None,
    )
    lines: list[str] = []
    first = trt_build.build_for_repository(tmp_path, tmp_path / "cache", report=lines.append)
    assert first.source == "built" and first.plan.stat().st_size == first.manifest.size_bytes
    assert lines[0].startswith(f"TensorRT {trt_build._tensorrt().__version__}")
    again = trt_build.build_for_repository(tmp_path, tmp_path / "cache")
    assert again.source == "cache" and len(list((tmp_path / "cache").glob("*.plan"))) == 1
    batch = verification_batch(spec)
    reference = eager_runner(served)(batch)
    probs = open_plan(trt_build._tensorrt(), first.plan, spec)(batch)
    assert np.max(np.abs(probs - reference)) <= PLAN_PROBS_ATOL
    assert np.array_equal(probs.argmax(axis=1), reference.argmax(axis=1))


def test_the_real_step_fails_loudly_without_tensorrt(
    tmp_path: Path, model_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if trt_build.available():
        pytest.skip("TensorRT and a GPU are here")
    repository = make_repository(tmp_path, model_repository / ONNX_MODEL / "1" / "model.onnx")
    assert trt_build.main(["--repository", str(repository)]) == 1
    err = capsys.readouterr().err
    assert "error: TensorRTUnavailable:" in err
    assert not (repository / TENSORRT_MODEL / "1" / "model.plan").exists()


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
    low, opt, high = fake.shapes[spec.input_name]
    assert (low[0], opt[0], high[0]) == (1, spec.max_batch_size // 2, spec.max_batch_size)
    assert low[1:] == opt[1:] == high[1:] == spec.input_shape


def test_build_plan_reports_the_parser_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_build, "_tensorrt", lambda: _FakeTensorRT(parses=False))
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="unsupported operator"):
        trt_build.build_plan(onnx_path, tmp_path / "model.plan", model_specs()["tensorrt"])


# --- the TensorRT version check, on recorded text --------------------------------------

SYSTEM_LIB = Path("/usr/lib/x86_64-linux-gnu/libnvinfer.so.10.11.0")
WHEEL_LIB = Path("/usr/local/lib/python3.12/dist-packages/tensorrt_libs/libnvinfer.so.10.11.0")


def test_the_process_maps_and_ldd_name_libnvinfer_not_its_siblings() -> None:
    maps = "\n".join(
        f"7f00-7f10 r-xp 00000000 08:01 {inode} {path}"
        for inode, path in enumerate([
            "/usr/lib/x86_64-linux-gnu/libnvinfer_plugin.so.10.11.0",
            "/usr/lib/x86_64-linux-gnu/libnvinfer_builder_resource.so.10.11.0",
            str(SYSTEM_LIB),
            "[heap]",
        ])
    )
    assert tensorrt_version.mapped_libnvinfer(maps) == SYSTEM_LIB
    ldd = (
        "\tlibnvinfer_plugin.so.10 => /usr/lib/x86_64-linux-gnu/libnvinfer_plugin.so.10 (0x1)\n"
        "\tlibnvinfer.so.10 => /usr/lib/x86_64-linux-gnu/libnvinfer.so.10 (0x2)\n"
    )
    assert tensorrt_version.ldd_libnvinfer(ldd) == Path(
        "/usr/lib/x86_64-linux-gnu/libnvinfer.so.10"
    )
    assert tensorrt_version.ldd_libnvinfer("\tlibnvinfer.so.10 => not found\n") is None
    assert tensorrt_version.library_version(SYSTEM_LIB) == "10.11.0"
    assert tensorrt_version.library_version(Path("libnvinfer.so.10")) is None
    # getInferLibVersion(): (major * 100 + minor) * 100 + patch; TensorRT 8, major * 1000 + ...
    assert tensorrt_version.decode_lib_version(101100) == "10.11.0"
    assert tensorrt_version.decode_lib_version(8601) == "8.6.1"


def install(bindings: str = "10.11.0.33", library: Path | None = SYSTEM_LIB,
            server: Path | None = SYSTEM_LIB) -> tensorrt_version.TensorRTInstall:
    return tensorrt_version.TensorRTInstall(bindings, library, server)


def test_the_pinned_tensorrt_that_triton_links_passes_and_is_named() -> None:
    line = tensorrt_version.check(install(), "10.11.0.33")
    assert line.startswith("TensorRT 10.11.0.33: libnvinfer " + str(SYSTEM_LIB))
    assert "the same file Triton's TensorRT backend links; pin 10.11.0.33" in line
    elsewhere = tensorrt_version.check(install(server=None), None)
    assert "no Triton TensorRT backend here" in elsewhere and "no TENSORRT_VERSION" in elsewhere
    # pip's library wheel names files by soname only: the library's own report counts.
    wheel = tensorrt_version.TensorRTInstall(
        "10.11.0.33", WHEEL_LIB.with_name("libnvinfer.so.10"), None, "10.11.0"
    )
    assert "TensorRT 10.11.0.33" in tensorrt_version.check(wheel, "10.11.0.33")


@pytest.mark.parametrize(
    ("found", "pin", "message"),
    [
        (install(bindings="10.13.0.35"), "10.11.0.33", "pins 10.11.0.33"),
        (install(library=WHEEL_LIB), "10.11.0.33", "Triton's TensorRT backend links"),
        (install(library=SYSTEM_LIB.with_name("libnvinfer.so.10.9.0")), None, "other than"),
        (install(library=None), None, "loaded no libnvinfer"),
        (tensorrt_version.TensorRTInstall("10.11.0.33", WHEEL_LIB.with_name("libnvinfer.so.10"),
                                          None, "10.9.0"), None, r"\(10\.9\.0\)"),
    ],
    ids=["other-version", "pip-wheel-library", "bindings-vs-library", "nothing-loaded",
         "library-reports-another-version"],
)
def test_a_tensorrt_other_than_the_pinned_one_triton_links_fails(
    found: tensorrt_version.TensorRTInstall, pin: str | None, message: str
) -> None:
    with pytest.raises(tensorrt_version.TensorRTMismatch, match=message):
        tensorrt_version.check(found, pin)


class _FakeEngine:
    def __init__(self, names: tuple[str, str] = ("IMAGE", "PROBS"), max_batch: int = 128,
                 image_type: str = "uint8") -> None:
        self.names, self.max_batch, self.image_type = names, max_batch, image_type
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_dtype(self, name: str) -> str:
        return self.image_type if name == self.names[0] else "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 224, 224, 3), (64, 224, 224, 3), (self.max_batch, 224, 224, 3)]


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (_FakeEngine(names=("input", "output")), "plan tensors"),
        (_FakeEngine(image_type="float32"), "expected uint8 in"),
        (_FakeEngine(max_batch=32), "covers batch 1..32, the config serves 1..128"),
    ],
    ids=["names", "types", "profile"],
)
def test_a_plan_that_does_not_fit_the_config_is_refused_before_it_runs(
    engine: _FakeEngine, message: str
) -> None:
    from service.model.plan_check import PlanMismatch
    from service.model.tensorrt_runtime import _check_engine

    fake_trt = type("trt", (), {"uint8": "uint8", "float32": "float32"})
    _check_engine(fake_trt, _FakeEngine(), model_specs()["tensorrt"])  # a fitting one passes
    with pytest.raises(PlanMismatch, match=message):
        _check_engine(fake_trt, engine, model_specs()["tensorrt"])
