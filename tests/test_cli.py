"""`ca-serve`'s help and messages: defaults shown, every setting listed, the real cause of
a missing model repository, and what `build-repo` wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import describe_build, main
from service.gateway.settings import Settings
from service.model.repository import BuildReport
from service.spec import WeightsInfo

REPO_ROOT = Path(__file__).resolve().parents[1]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_build_repo_help_shows_defaults_and_explains_each_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(capsys, "build-repo")
    assert "(default: model_repository for --target gpu, build/model_repository_cpu" in text
    assert "(default: gpu)" in text and "Triton's Python backend" in text  # --target
    assert "--labels FILE class names, one per line" in text and "class_0" in text
    assert "'demo'" in text and "labels are meaningless" in text


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("classify", ["labels per image (default: 5)", "each answer (default: 30.0)",
                      "images per request (default: 8)"]),
        ("bench", ["labels requested (default: 5)", "in seconds (default: 30.0)"]),
    ],
)
def test_client_help_shows_defaults(
    capsys: pytest.CaptureFixture[str], command: str, expected: list[str]
) -> None:
    text = _help(capsys, command)
    for phrase in expected:
        assert phrase in text


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, field in Settings.model_fields.items():
        variable = f"CA_{name.upper()}"
        [line] = [line for line in lines if line.split()[:1] == [variable]]
        default = field.default
        if isinstance(default, int | float | str) and not isinstance(default, bool):
            assert line.split()[1].rstrip(":") == (str(default) or "(none)"), line


def _serve_from(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    environment.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )


def test_serve_outside_the_project_names_the_resolved_path(tmp_path: Path) -> None:
    done = _serve_from(tmp_path)
    assert done.returncode == 1
    assert f"the model repository {tmp_path.resolve() / 'model_repository'} does not exist" in (
        done.stderr
    )
    assert "set CA_MODEL_REPOSITORY" in done.stderr and "build the repository" not in done.stderr


def test_serve_with_an_unknown_model_names_what_the_repository_holds(tmp_path: Path) -> None:
    (tmp_path / "repo" / "other_model").mkdir(parents=True)
    done = _serve_from(tmp_path, CA_MODEL_REPOSITORY=str(tmp_path / "repo"))
    assert done.returncode == 1
    assert "has no model 'ca_mobilenetv2_onnx' (CA_MODEL_NAME)" in done.stderr
    assert "it holds: other_model" in done.stderr


def test_serve_before_the_build_says_to_build(tmp_path: Path) -> None:
    (tmp_path / "model_repository" / "ca_mobilenetv2_onnx").mkdir(parents=True)
    done = _serve_from(tmp_path)
    assert done.returncode == 1
    missing = tmp_path.resolve() / "model_repository" / "ca_mobilenetv2_onnx" / "1" / "model.onnx"
    assert f"{missing} does not exist" in done.stderr and "make repo" in done.stderr


def _model_dir(root: Path, name: str, *files: str) -> Path:
    (root / name / "1").mkdir(parents=True)
    for file in files:
        (root / name / "1" / file).write_bytes(b"x")
    return root / name


def test_build_summary_names_the_target_and_what_each_model_holds(tmp_path: Path) -> None:
    report = BuildReport(
        output=tmp_path,
        target="gpu",
        weights=WeightsInfo(source="demo-calibrated", random_init=True),
        models={
            "ca_mobilenetv2": _model_dir(tmp_path, "ca_mobilenetv2", "model.pt", "weights.json"),
            "ca_mobilenetv2_onnx": _model_dir(tmp_path, "ca_mobilenetv2_onnx", "model.onnx"),
            "ca_mobilenetv2_trt": _model_dir(tmp_path, "ca_mobilenetv2_trt", "weights.json"),
        },
    )
    lines = describe_build(report).splitlines()
    assert lines[0].startswith(f"model repository written to {tmp_path} (target gpu: ")
    assert "embedded backend serves its ONNX model on any CPU" in lines[0]
    assert lines[1].split() == ["ca_mobilenetv2", "TorchScript", "(model.pt)"]
    assert lines[2].split() == ["ca_mobilenetv2_onnx", "ONNX", "(model.onnx)"]
    assert lines[3].split()[0] == "ca_mobilenetv2_trt" and "config only" in lines[3]
    assert lines[4] == (
        "weights: demo-calibrated (random init: not ImageNet-trained, labels are meaningless)"
    )


def test_bench_plot_without_matplotlib_says_so_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *rest: None if name == "matplotlib" else real(name, *rest),
    )
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--plot", "latency.png", "--requests", "1"])
    assert exited.value.code == 2
    assert "--plot needs matplotlib: .venv/bin/pip install -e '.[bench]'" in capsys.readouterr().err
