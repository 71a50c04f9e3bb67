"""Build the Triton model repository from a checkpoint: `ca-serve build-repo`.

GPU target (the default) writes three models that serve the same graph:
`ca_mobilenetv2` (TorchScript), `ca_mobilenetv2_onnx` (ONNX, TensorRT accelerator on GPU)
and `ca_mobilenetv2_trt` (a TensorRT plan, built on the GPU that will run it). CPU target
writes `ca_mobilenetv2_onnx` behind Triton's Python backend for Triton builds without GPU
backends. Every export is verified against eager PyTorch before it is written.

**Versions.** Each build writes one version of every model of its target: `--version N`,
by default the number after the highest present (1 in a new repository), next to the
versions already there. `config.pbtxt`, `spec.json` and the labels are shared by a model's
versions: a build whose weights would change them (another number of classes, other
labels) is refused while versions exist. A version is written under a staging name, with
`weights.json` and `verification.json` (eager PyTorch's probabilities on the verification
photos, the reference the gateway checks a new version against before it serves it), and
published by one rename once every model's export passed its check (`service.versions`).
An existing version is never overwritten unless `force`. Which network `--weights` names
(the authors' release, demo, random, a checkpoint): `service.model.weights`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

from service.model import triton_config
from service.model.export import (
    Agreement,
    eager_runner,
    export_onnx,
    export_torchscript,
    torchscript_runner,
    verify,
)
from service.model.repository_versions import (
    Staging,
    check_shared_files,
    choose_version,
)
from service.model.served import ServedModel
from service.model.weights import DEFAULT_WEIGHTS, Progress, load_weights
from service.spec import (
    LABELS_FILENAME,
    ONNX_MODEL,
    SPEC_FILENAME,
    TENSORRT_MODEL,
    TORCHSCRIPT_MODEL,
    VERIFICATION_FILENAME,
    WEIGHTS_FILENAME,
    ModelSpec,
    WeightsInfo,
    default_labels_path,
    load_labels,
)
from service.verification import (
    Batch,
    Probs,
    Reference,
    Runner,
    onnx_cpu_runner,
    verification_batch,
)

log = logging.getLogger(__name__)

Target = Literal["gpu", "cpu"]
IMAGENET_CLASSES = 1000  # the shipped labels file's classes
PYTHON_MODEL = Path(__file__).parent / "triton_python" / "model.py"


@dataclass
class BuildReport:
    output: Path
    target: Target
    weights: WeightsInfo
    models: dict[str, Path] = field(default_factory=dict)
    version: str = "1"
    agreements: list[Agreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_specs(num_classes: int = 1000) -> dict[triton_config.Kind, ModelSpec]:
    """The spec of each model. libtorch binds tensors by the `<name>__<index>` convention.
    GPU models batch up to `GPU_MAX_BATCH_SIZE`, the CPU one up to `CPU_MAX_BATCH_SIZE`
    (`triton_config` says why); the gateway caps its own batches by the spec's."""
    onnx = ModelSpec(
        name=ONNX_MODEL, num_classes=num_classes, max_batch_size=triton_config.GPU_MAX_BATCH_SIZE
    )
    return {
        "torchscript": replace(
            onnx, name=TORCHSCRIPT_MODEL, input_name="IMAGE__0", output_name="PROBS__0"
        ),
        "onnx": onnx,
        "tensorrt": replace(onnx, name=TENSORRT_MODEL),
        "python_onnx": replace(onnx, max_batch_size=triton_config.CPU_MAX_BATCH_SIZE),
    }


def write_model_dir(
    output: Path, kind: triton_config.Kind, spec: ModelSpec, labels: list[str]
) -> Path:
    """config.pbtxt, labels.txt and spec.json: what a model's versions share. Each file is
    replaced in one rename, so a reader never sees one half-written."""
    model_dir = output / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    config = triton_config.build_config(kind, spec)
    _write_text(model_dir / triton_config.CONFIG_FILE, triton_config.render(config))
    _write_text(model_dir / LABELS_FILENAME, "\n".join(labels) + "\n")
    _write_text(model_dir / SPEC_FILENAME, spec.to_json())
    return model_dir


def _write_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)


def default_labels(num_classes: int) -> list[str]:
    if num_classes == IMAGENET_CLASSES:
        return load_labels(default_labels_path(), expected=1000)
    # A fine-tune with its own classes: numbered labels until the owner supplies names.
    return [f"class_{index}" for index in range(num_classes)]


def numbered_labels_warning(num_classes: int) -> str:
    """What `build-repo` prints for a checkpoint that is not ImageNet-1k and no labels."""
    bar = "!" * 78
    return (
        f"{bar}\n!! WARNING: the checkpoint has {num_classes} classes, not ImageNet's 1000, and "
        "no --labels file\n!! was given: its classes are served as class_0 ... "
        f"class_{num_classes - 1}.\n!! Pass --labels FILE (one class name per line, in the "
        "checkpoint's order).\n"
        f"{bar}"
    )


def _printer(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _step(progress: Progress, title: str) -> Iterator[None]:
    started = time.perf_counter()
    progress(f"-> {title} ...")
    yield
    progress(f"   done in {time.perf_counter() - started:.1f} s")


def build_repository(
    output: Path,
    *,
    weights: str = DEFAULT_WEIGHTS,
    target: Target = "gpu",
    tensorrt: bool = False,
    labels_file: Path | None = None,
    version: str | None = None,
    force: bool = False,
    progress: Progress = _printer,
) -> BuildReport:
    """Export, verify and write one version of the target's models (`version`, default
    the next free number); returns what was written and measured. Raises
    `repository_versions.RepositoryError` before any export for a version that exists
    (unless `force`) or weights that would change what the model's versions share."""
    output = Path(output)
    kinds: list[triton_config.Kind] = (
        ["torchscript", "onnx", "tensorrt"] if target == "gpu" else ["python_onnx"]
    )
    version = choose_version(output, [model_specs()[kind].name for kind in kinds], version, force)
    with _step(progress, f"loading weights ({weights})"):
        network, info = load_weights(weights, progress)
    num_classes = network.num_classes
    if labels_file:
        labels = load_labels(labels_file, expected=num_classes)
    else:
        labels = default_labels(num_classes)
        if num_classes != IMAGENET_CLASSES:
            progress(numbered_labels_warning(num_classes))
    info = replace(info, num_parameters=sum(p.numel() for p in network.parameters()))
    report = BuildReport(output=output, target=target, weights=info, version=version)
    specs = model_specs(num_classes)
    for kind in kinds:
        check_shared_files(output, specs[kind], labels, replacing=version if force else None)
    served = ServedModel(network, specs["onnx"]).eval()
    batch = verification_batch(specs["onnx"])
    reference = eager_runner(served)(batch)

    with Staging(output, version, replace=force) as staging:
        for kind in kinds:
            spec = specs[kind]
            report.models[spec.name] = output / spec.name
            version_dir = staging.dir_for(spec.name)
            if kind == "torchscript":
                path = version_dir / "model.pt"
                with _step(progress, f"exporting TorchScript -> {staging.version_dir(spec.name)}"):
                    report.agreements.append(
                        _export_verified(
                            "torchscript",
                            path,
                            partial(export_torchscript, served, spec=spec),
                            torchscript_runner,
                            reference,
                            batch,
                        )
                    )
            elif kind in ("onnx", "python_onnx"):
                path = version_dir / "model.onnx"
                with _step(progress, f"exporting ONNX -> {staging.version_dir(spec.name)}"):
                    report.agreements.append(
                        _export_verified(
                            "onnx",
                            path,
                            partial(export_onnx, served, spec=spec),
                            partial(onnx_cpu_runner, spec=spec),
                            reference,
                            batch,
                        )
                    )
                if kind == "python_onnx":
                    shutil.copy2(PYTHON_MODEL, version_dir / "model.py")
            (version_dir / VERIFICATION_FILENAME).write_text(Reference.of(reference).to_json())
            (version_dir / WEIGHTS_FILENAME).write_text(info.to_json())
        # The shared files last: they equal those of the versions present, if any.
        for kind in kinds:
            write_model_dir(output, kind, specs[kind], labels)
    if "tensorrt" in kinds:
        report.notes.append(_tensorrt_step(output, version, tensorrt, progress))

    progress(f"   published version {version} of {', '.join(report.models)}")
    for agreement in report.agreements:
        progress(
            f"   {agreement.form}: max |diff| vs eager {agreement.max_abs_diff:.2e} on "
            f"{agreement.batch_size} photos, same top-5: {agreement.same_top_k}"
        )
    for note in report.notes:
        progress(f"   note: {note}")
    if info.random_init:
        progress(
            f"!! The repository holds {info.source} weights, not ImageNet-trained: "
            "labels are meaningless."
        )
    return report


def _export_verified(
    form: str,
    path: Path,
    export: Callable[[Path], None],
    runner: Callable[[Path], Runner],
    reference: Probs,
    batch: Batch,
) -> Agreement:
    """Export to a staging name beside `path`, check it against eager, and only then move
    it to `path`: an export that fails the check (`ExportMismatch`) is deleted, so nothing
    unverified is ever where Triton or the gateway would load it. A model an earlier build
    verified at `path` is left as it was."""
    staging = path.with_name(f".{path.name}.unverified")
    try:
        export(staging)
        agreement = verify(form, reference, runner(staging), batch)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    staging.replace(path)
    return agreement


def _tensorrt_step(output: Path, version: str, requested: bool, progress: Progress) -> str:
    from service.model import tensorrt as trt_build

    if not requested and not trt_build.available():
        return (
            "TensorRT plan not built here (no CUDA/TensorRT); build it on the GPU node with "
            "`python -m service.model.tensorrt --repository DIR`"
        )
    with _step(progress, "building the TensorRT plan (FP16)"):
        outcome = trt_build.build_for_repository(output, version=version, report=progress)
    return f"TensorRT plan written to {outcome.plan}, verified against ONNX Runtime CPU"
