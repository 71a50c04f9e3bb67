"""The `ca-serve` command: build-repo, serve, classify, bench.

Each subcommand imports its implementation lazily, so `ca-serve serve` never imports torch
and `ca-serve build-repo` never starts a web server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build_repo(args: argparse.Namespace) -> int:
    from service.model.checkpoint import CheckpointError
    from service.model.export import ExportMismatch
    from service.model.repository import build_repository

    output = args.output or Path(
        "model_repository" if args.target == "gpu" else "build/model_repository_cpu"
    )
    try:
        report = build_repository(
            output,
            weights=args.weights,
            target=args.target,
            tensorrt=args.tensorrt,
            labels_file=args.labels,
        )
    except (CheckpointError, ExportMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"model repository ({report.target}) written to {report.output}: {', '.join(report.models)}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.gateway.server import serve
    from service.gateway.settings import Settings

    overrides = {
        key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None
    }
    serve(Settings(**overrides))
    return 0


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

    parser = argparse.ArgumentParser(
        prog="ca-serve", description="CA-MobileNetV2 inference service"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-repo", help="export the model and write the Triton repository"
    )
    build.add_argument(
        "--weights",
        default="default",
        help="checkpoint PATH or URL, 'random', or 'default' (the authors' release; "
        "falls back to seeded random weights with a warning when it cannot be fetched)",
    )
    build.add_argument("--output", type=Path, default=None, help="repository directory")
    build.add_argument("--target", choices=("gpu", "cpu"), default="gpu")
    build.add_argument(
        "--tensorrt", action="store_true", help="also build the TensorRT plan (needs CUDA)"
    )
    build.add_argument("--labels", type=Path, default=None, help="labels file, one class per line")
    build.set_defaults(handler=_build_repo)

    serve = commands.add_parser("serve", help="run the HTTP gateway (settings from CA_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(handler=_serve)

    commands.add_parser("classify", help="classify images through a running gateway")
    commands.add_parser("bench", help="load-test a running gateway")

    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
