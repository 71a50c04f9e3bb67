"""The repository writer and the committed model_repository/ stay one source of truth."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from service.cli import main as cli_main
from service.model import checkpoint, triton_config
from service.model.repository import build_repository, model_specs
from service.model.weights import load_weights
from service.spec import ONNX_MODEL, ModelSpec, WeightsInfo, default_labels_path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "model_repository"
KIND_OF = {spec.name: kind for kind, spec in model_specs().items() if kind != "python_onnx"}


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_committed_model_dirs_equal_a_fresh_generation(name: str) -> None:
    kind = KIND_OF[name]
    spec = model_specs()[kind]
    model_dir = COMMITTED / name
    text = (model_dir / triton_config.CONFIG_FILE).read_text()
    config = triton_config.parse(text)  # Triton's own schema
    assert text == triton_config.render(triton_config.build_config(kind, spec))
    assert ModelSpec.load(model_dir) == spec
    assert (model_dir / "labels.txt").read_text() == default_labels_path().read_text()
    assert config.name == name and config.max_batch_size == spec.max_batch_size
    assert config.output[0].label_filename == "labels.txt"
    assert config.max_batch_size == 128 and not config.dynamic_batching.preferred_batch_size
    sizes = sorted(w.batch_size for w in config.model_warmup)
    assert sizes == ([1, 2, 4, 8, 16, 32, 64, 128] if kind == "torchscript" else [1, 128])
    assert all(group.kind == group.KIND_GPU for group in config.instance_group)


def test_committed_configs_name_the_platforms_triton_expects() -> None:
    platforms = {
        name: triton_config.load(COMMITTED / name).platform
        for name in KIND_OF
    }
    assert platforms == {
        "ca_mobilenetv2": "pytorch_libtorch",
        "ca_mobilenetv2_onnx": "onnxruntime_onnx",
        "ca_mobilenetv2_trt": "tensorrt_plan",
    }
    onnx_config = triton_config.load(COMMITTED / ONNX_MODEL)
    tensorrt, cuda = onnx_config.optimization.execution_accelerators.gpu_execution_accelerator
    assert tensorrt.name == "tensorrt" and tensorrt.parameters["precision_mode"] == "FP16"
    # What TensorRT leaves to the CUDA EP runs in FP32, not ONNX Runtime's default TF32.
    assert cuda.name == "cuda"
    assert triton_config.cuda_provider_options(onnx_config) == {"use_tf32": "0"}


def test_cpu_repository_from_a_checkpoint(model_repository: Path, test_checkpoint: Path) -> None:
    model_dir = model_repository / ONNX_MODEL
    # (Triton's Python backend may leave a __pycache__ beside model.py once it has run.)
    built = sorted(p.name for p in (model_dir / "1").iterdir() if p.name != "__pycache__")
    assert built == ["model.onnx", "model.py", "verification.json", "weights.json"]
    config = triton_config.load(model_dir)
    assert (
        config.backend == "python"
        and config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    )
    info = WeightsInfo.load(model_dir / "1")
    assert info is not None and not info.random_init
    assert info.source == test_checkpoint.name  # a name, not the build machine's path
    assert info.sha256 == checkpoint.sha256_of(test_checkpoint)
    assert info.num_parameters == 3_950_648
    # The names in config.pbtxt are the names in the exported graph.
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    inputs, outputs = triton_config.tensor_names(config)
    assert inputs == [i.name for i in graph.input] and outputs == [o.name for o in graph.output]


def test_gpu_build_writes_torchscript_and_onnx_with_matching_names(tmp_path: Path) -> None:
    report = build_repository(tmp_path, weights="random", progress=lambda _: None)
    assert set(report.models) == {"ca_mobilenetv2", "ca_mobilenetv2_onnx", "ca_mobilenetv2_trt"}
    assert {a.form for a in report.agreements} == {"torchscript", "onnx"}
    assert report.weights.random_init
    assert any("TensorRT plan not built" in note for note in report.notes)
    # TorchScript: libtorch binds by position; the module takes one tensor, returns one.
    module = torch.jit.load(str(tmp_path / "ca_mobilenetv2" / "1" / "model.pt"))
    out = module(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
    assert out.shape == (2, 1000)
    ts_config = triton_config.load(tmp_path / "ca_mobilenetv2")
    assert triton_config.tensor_names(ts_config) == (["IMAGE__0"], ["PROBS__0"])
    for name in ("ca_mobilenetv2_onnx", "ca_mobilenetv2_trt"):
        config = triton_config.load(tmp_path / name)
        assert triton_config.tensor_names(config) == (["IMAGE"], ["PROBS"])
    meta = json.loads((tmp_path / "ca_mobilenetv2" / "1" / "weights.json").read_text())
    assert meta["source"] == "random-init" and meta["random_init"] is True


def test_default_weights_fall_back_to_the_demo_weights_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.model import weights
    from tests.support.triton import free_port

    monkeypatch.setenv("CA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(
        weights, "AUTHORS_CHECKPOINT_URL", f"http://127.0.0.1:{free_port()}/mbv2_ca.pth"
    )
    messages: list[str] = []
    first, info = load_weights("default", messages.append)
    second, _ = load_weights("default", messages.append)
    assert info.random_init and info.source == "demo-calibrated"
    assert "labels are meaningless" in info.notes[0] and "fallback" in info.notes[1]
    assert "DEMO weights" in messages[0] and "NOT ImageNet-trained" in messages[0]
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_an_explicit_checkpoint_that_fails_is_an_error_not_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        ["build-repo", "--weights", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "out")]
    )
    assert code == 1
    assert "no checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "out" / ONNX_MODEL / "1" / "model.onnx").exists()


def test_a_checkpoint_with_other_classes_and_no_labels_is_warned_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.checkpoints import calibrated_network, save_released_format

    checkpoint = save_released_format(calibrated_network(num_classes=10), tmp_path / "ten.pth")
    output = tmp_path / "out"
    code = cli_main(
        ["build-repo", "--weights", str(checkpoint), "--target", "cpu", "--output", str(output)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "the checkpoint has 10 classes, not ImageNet's 1000, and no --labels file" in err
    assert "class_0 ... class_9" in err and "Pass --labels FILE" in err
    labels = (output / ONNX_MODEL / "labels.txt").read_text().split()
    assert labels == [f"class_{i}" for i in range(10)]
    assert "(target cpu: " in out and "gpu" not in out.splitlines()[0].split(":")[0]
    assert f"{ONNX_MODEL}    ONNX (model.onnx)" in out
