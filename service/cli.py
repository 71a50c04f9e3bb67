"""The `ca-serve` command: build-repo, serve, classify, bench.

Each subcommand imports its implementation lazily, so `ca-serve serve` never imports torch
and `ca-serve build-repo` never starts a web server.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.gateway.settings import Settings
    from service.model.repository import BuildReport

GPU_OUTPUT = Path("model_repository")
CPU_OUTPUT = Path("build/model_repository_cpu")
# What each exported file is, for the build summary.
_FORMS = {"model.pt": "TorchScript", "model.onnx": "ONNX", "model.plan": "TensorRT plan"}
_TARGETS = {
    "gpu": "for Triton with GPU backends; the embedded backend serves its ONNX model on "
    "any CPU",
    "cpu": "for a Triton build without GPU backends (ONNX Runtime inside Triton's Python "
    "backend)",
}


def _build_repo(args: argparse.Namespace) -> int:
    from service.model.checkpoint import CheckpointError
    from service.model.export import ExportMismatch
    from service.model.repository import build_repository
    from service.model.repository_versions import RepositoryError
    from service.spec import SpecError

    output = args.output or (GPU_OUTPUT if args.target == "gpu" else CPU_OUTPUT)
    try:
        report = build_repository(
            output,
            weights=args.weights,
            target=args.target,
            tensorrt=args.tensorrt,
            labels_file=args.labels,
            version=args.version,
            force=args.force,
        )
    except (CheckpointError, ExportMismatch, SpecError, RepositoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe_build(report))
    return 0


def describe_build(report: BuildReport) -> str:
    """What `build-repo` wrote: the target, each model with its model file (or none: the
    TensorRT plan is built on the GPU node), and where the weights came from."""
    lines = [
        f"model repository written to {report.output} (target {report.target}: "
        f"{_TARGETS[report.target]}), version {report.version}:"
    ]
    for name, model_dir in report.models.items():
        built = sorted(
            p.name for p in (model_dir / report.version).glob("model.*") if p.name in _FORMS
        )
        what = ", ".join(f"{_FORMS[b]} ({b})" for b in built) or "config only (no model file)"
        lines.append(f"  {name:<22} {what}")
    weights = report.weights
    lines.append(
        f"weights: {weights.source}"
        + (" (random init: not ImageNet-trained, labels are meaningless)"
           if weights.random_init else "")
    )
    return "\n".join(lines)


def _check_repository(settings: Settings) -> str | None:
    """Why the gateway cannot find its model, in terms of the path it resolved; or None."""
    repository = settings.model_repository
    resolved = repository.resolve()
    if not repository.is_dir():
        hint = (
            f"it is relative to the current directory ({Path.cwd()}): run `ca-serve serve` "
            "from the project directory, or set CA_MODEL_REPOSITORY to the repository's "
            "absolute path"
            if not repository.is_absolute()
            else "build it with `ca-serve build-repo --output DIR`, or set CA_MODEL_REPOSITORY"
        )
        return f"the model repository {resolved} does not exist; {hint}"
    if not settings.model_dir.is_dir():
        present = sorted(p.name for p in resolved.iterdir() if p.is_dir())
        return (
            f"{resolved} has no model {settings.model_name!r} (CA_MODEL_NAME); "
            f"it holds: {', '.join(present) or 'nothing'}"
        )
    from service.versions import numbered_versions

    # Unpinned: the newest version, or where there is none the one a first build writes.
    version = settings.model_version or (numbered_versions(settings.model_dir) or ["1"])[-1]
    onnx = settings.model_dir / version / "model.onnx"
    if settings.backend == "embedded" and not onnx.is_file():
        return (
            f"{onnx.resolve()} does not exist: the repository's configs are there but its "
            "model was never built; build it with `make repo` (or `ca-serve build-repo "
            f"--output {repository}`), or serve with `make run`"
        )
    return None


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.gateway.server import serve
    from service.gateway.settings import Settings

    overrides = {
        key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"error: invalid settings (CA_* variables):\n{exc}", file=sys.stderr)
        return 2
    problem = _check_repository(settings)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    serve(settings)
    return 0


def settings_epilog() -> str:
    """Every gateway setting as its `CA_*` variable, default and description, from
    `Settings` itself (so the help cannot drift from the code)."""
    from service.gateway.settings import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, tuple):
            shown = ",".join(default) or "(none)"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default) if default not in ("", None) else "(none)"
        rows.append((f"CA_{name.upper()}", shown, field.description or ""))
    width = max(len(var) for var, _, _ in rows)
    lines = [
        "settings (environment variables; --host/--port override CA_HOST/CA_PORT; "
        "docs/gateway.md explains each):"
    ]
    for var, shown, description in rows:
        line = f"  {var:<{width}}  {shown}" + (f": {description}" if description else "")
        lines.extend(textwrap.wrap(line, 100, subsequent_indent=" " * (width + 6)))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ca-serve", description="CA-MobileNetV2 inference service"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-repo",
        help="export the model and write the Triton repository",
        description="Export CA-MobileNetV2 (TorchScript, ONNX), check every export against "
        "eager PyTorch on real photos, and write one version of a Triton model repository.",
    )
    build.add_argument(
        "--weights",
        default="default",
        metavar="default|demo|random|PATH|URL",
        help="checkpoint PATH or URL; 'default': the authors' ImageNet release, and where it "
        "cannot be downloaded the demo weights, with a warning; 'demo': seeded weights "
        "calibrated so each photo gets its own answer (not ImageNet-trained: labels are "
        "meaningless); 'random': seeded random-init, the same answer for every photo "
        "(pipeline tests) (default: %(default)s)",
    )
    build.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"repository directory (default: {GPU_OUTPUT} for --target gpu, "
        f"{CPU_OUTPUT} for --target cpu)",
    )
    build.add_argument(
        "--target",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: TorchScript, ONNX and TensorRT models for Triton with GPU backends (the "
        "embedded backend serves the ONNX model on any CPU); cpu: the ONNX model behind "
        "Triton's Python backend, for Triton builds without GPU backends "
        "(default: %(default)s)",
    )
    build.add_argument(
        "--tensorrt", action="store_true", help="also build the TensorRT plan (needs CUDA)"
    )
    build.add_argument(
        "--version",
        default=None,
        metavar="N",
        help="the version directory to write, next to those present (default: the number "
        "after the highest present, or 1); an existing version is refused unless --force. "
        "A running gateway that serves the newest version picks it up without a restart",
    )
    build.add_argument(
        "--force", action="store_true", help="replace the version if it exists"
    )
    build.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="class names, one per line in the checkpoint's class order (as many lines as "
        "classes); default: the 1000 ImageNet classes, or class_0, class_1, ... with a "
        "warning for a checkpoint with another number of classes",
    )
    build.set_defaults(handler=_build_repo)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP gateway (settings from CA_* variables)",
        description="Serve the model repository over HTTP. Every setting is a CA_* "
        "environment variable (listed below); the model repository is read from "
        "CA_MODEL_REPOSITORY, relative to the current directory unless absolute.",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default=None, help="address to bind (default: $CA_HOST)")
    serve.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: $CA_PORT)"
    )
    serve.set_defaults(handler=_serve)

    commands.add_parser("classify", help="classify images through a running gateway")
    commands.add_parser("bench", help="load-test a running gateway")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # classify and bench own their argument parsing (they also run as
    # `python -m clients.classify_cmd` and `python -m service.loadgen.bench`).
    if argv[:1] == ["classify"]:
        from clients.classify_cmd import main as classify_main

        return classify_main(argv[1:])
    if argv[:1] == ["bench"]:
        from service.loadgen.bench import main as bench_main

        return bench_main(argv[1:])

    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
