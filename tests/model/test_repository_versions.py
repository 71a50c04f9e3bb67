"""`ca-serve build-repo --version`: a new version next to the old ones, with the reference
answers the gateway verifies it against, published whole or not at all; what the
versions of a model share may not change; the TensorRT step builds every version's plan."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.cli import main as cli_main
from service.model import repository as repository_module
from service.model.export import ExportMismatch
from service.model.repository_versions import RepositoryError, choose_version
from service.spec import ONNX_MODEL, TENSORRT_MODEL, ModelSpec, WeightsInfo
from service.verification import PROBS_ATOL, Reference, top_k_indices, verification_batch
from tests.model import plan_standin
from tests.support.checkpoints import calibrated_network, save_released_format
from tests.support.gateway import tiny_onnx_model


@pytest.fixture
def repository(model_repository: Path, tmp_path: Path) -> Path:
    """A copy of the session's CPU repository (version 1, from the test checkpoint)."""
    copy = tmp_path / "repo"
    shutil.copytree(model_repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def build(repository: Path, *args: str) -> int:
    return cli_main(["build-repo", "--target", "cpu", "--output", str(repository), *args])


def test_a_new_version_is_written_beside_the_old_one_with_its_reference(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = repository / ONNX_MODEL
    before = digests(model_dir / "1")
    assert build(repository, "--weights", "demo") == 0  # no --version: the next number
    out = capsys.readouterr().out
    assert "version 2:" in out.splitlines()[0]
    assert digests(model_dir / "1") == before, "version 1 was touched"
    built = sorted(p.name for p in (model_dir / "2").iterdir())
    assert built == ["model.onnx", "model.py", "verification.json", "weights.json"]
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    weights = WeightsInfo.load(model_dir / "2")
    assert weights is not None and weights.source == "demo-calibrated"
    # The record is what the exported weights answer on the verification photos, as served.
    reference = Reference.load(model_dir / "2")
    assert reference is not None
    spec = ModelSpec.load(model_dir)
    session = ort.InferenceSession(str(model_dir / "2" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(["PROBS"], {"IMAGE": verification_batch(spec)})[0]
    assert float(np.max(np.abs(probs - reference.probs))) <= PROBS_ATOL
    recorded = Reference.load(model_dir / "1")
    assert recorded is not None and not np.allclose(recorded.probs, reference.probs)
    record = json.loads((model_dir / "2" / "verification.json").read_text())
    assert record["top5"] == top_k_indices(reference.probs).tolist()  # for people reading it


def test_an_existing_version_is_refused_before_any_work_unless_forced(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digests(repository)
    assert build(repository, "--weights", "random", "--version", "1") == 1
    err = capsys.readouterr().err
    assert "version 1 exists for ca_mobilenetv2_onnx" in err and "--force" in err
    assert "loading weights" not in err  # refused before loading anything
    assert digests(repository) == before
    assert build(repository, "--weights", "random", "--version", "01") == 1
    assert "--version must be a positive number" in capsys.readouterr().err


def test_choose_version_defaults_to_the_next_number_and_forces_only_when_asked(
    tmp_path: Path,
) -> None:
    names = ["a", "b"]
    assert choose_version(tmp_path, names, None, False) == "1"
    for version in ("1", "3"):
        (tmp_path / "a" / version).mkdir(parents=True)
    (tmp_path / "b" / "7").mkdir(parents=True)
    (tmp_path / "b" / ".8.staging").mkdir()  # a killed build's leftovers are no version
    assert choose_version(tmp_path, names, None, False) == "8"
    assert choose_version(tmp_path, names, "4", False) == "4"
    with pytest.raises(RepositoryError, match="version 3 exists for a"):
        choose_version(tmp_path, names, "3", False)
    assert choose_version(tmp_path, names, "3", True) == "3"
    for bad in ("0", "-1", "x", "1.5", ""):
        with pytest.raises(RepositoryError):
            choose_version(tmp_path, names, bad, False)


def test_weights_with_other_classes_are_refused_while_versions_share_the_spec(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ten = save_released_format(calibrated_network(num_classes=10), tmp_path / "ten.pth")
    before = digests(repository)
    assert build(repository, "--weights", str(ten)) == 1
    err = capsys.readouterr().err
    assert "would change the spec that versions 1 of ca_mobilenetv2_onnx share" in err
    assert "num_classes 1000 -> 10" in err
    assert digests(repository) == before
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    assert build(repository, "--weights", "random", "--labels", str(labels)) == 1
    assert "differs from the labels of this build" in capsys.readouterr().err
    assert digests(repository) == before


def test_a_build_that_fails_its_check_leaves_no_version_behind(
    repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def disagree(*args: object) -> None:
        raise ExportMismatch("onnx disagrees with eager PyTorch (planted)")

    monkeypatch.setattr(repository_module, "verify", disagree)
    before = digests(repository)
    assert build(repository, "--weights", "random") == 1
    assert "planted" in capsys.readouterr().err
    assert digests(repository) == before
    assert sorted(p.name for p in (repository / ONNX_MODEL).iterdir() if p.is_dir()) == ["1"]


def test_the_tensorrt_step_builds_a_plan_for_every_version(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_model = model_repository / ONNX_MODEL / "1" / "model.onnx"
    root = plan_standin.make_repository(tmp_path, onnx_model)
    (root / ONNX_MODEL / "2").mkdir()
    (root / ONNX_MODEL / "2" / "model.onnx").write_bytes(tiny_onnx_model(1000, seed=5))
    for version in ("1", "2"):
        (root / TENSORRT_MODEL / version).mkdir()
    assert plan_standin.main(["--repository", str(root)]) == 0
    out = capsys.readouterr().out
    plans = [line for line in out.splitlines() if line.startswith("TensorRT plan:")]
    assert [Path(line.split()[2]).parent.name for line in plans] == ["2", "1"]  # newest first
    for version in ("1", "2"):
        plan = root / TENSORRT_MODEL / version / "model.plan"
        assert plan.read_bytes() == (root / ONNX_MODEL / version / "model.onnx").read_bytes()


def test_forcing_the_only_version_may_change_the_spec(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make repo` does with other weights: version 1 rebuilt in place, whatever its
    classes, when no other version shares the spec."""
    ten = save_released_format(calibrated_network(num_classes=10), tmp_path / "ten.pth")
    assert build(repository, "--weights", str(ten), "--version", "1", "--force") == 0
    model_dir = repository / ONNX_MODEL
    assert ModelSpec.load(model_dir).num_classes == 10
    assert (model_dir / "labels.txt").read_text().split() == [f"class_{i}" for i in range(10)]
    reference = Reference.load(model_dir / "1")
    assert reference is not None and reference.probs.shape == (3, 10)
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1"]
    assert "version 1:" in capsys.readouterr().out
