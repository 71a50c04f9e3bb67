"""`ca-serve classify IMAGE...`: classify files and print a table (or JSON with `--json`).

Arguments may be files, directories (their image files, sorted, not recursive) or glob
patterns (`'photos/**/*.jpg'`, quoted so the shell leaves them alone); `-` reads stdin.
Exit status: 0 all classified; 1 some images were refused by the gateway (shown per
image); 2 bad usage, nothing to classify, or the gateway cannot be reached.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from clients.client import DEFAULT_URL, CAServeClient
from clients.errors import APIError, CAServeError
from clients.inputs import ImageInput
from clients.results import Classification
from clients.retry import RetryPolicy

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Errors that concern the whole request, not one image: splitting the batch would not help.
_REQUEST_WIDE = frozenset({401, 422, 503, 504})
_LABEL_WIDTH = 34
_BAR_WIDTH = 20


@dataclass(frozen=True)
class Outcome:
    """What happened to one image: a classification or the gateway's error."""

    image: str
    result: Classification | None = None
    error: APIError | None = None


class UsageError(Exception):
    """Nothing sensible to do with the arguments; the message says why."""


def expand(arguments: Sequence[str]) -> list[str]:
    """Files named by the arguments, in order, without duplicates; raises `UsageError`."""
    found: list[str] = []
    for argument in arguments:
        if argument == "-":
            found.append(argument)
            continue
        path = Path(argument)
        if path.is_dir():
            matches = sorted(
                str(p) for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not matches:
                raise UsageError(f"no image files in directory {argument}")
        elif path.exists():
            matches = [argument]
        elif glob.has_magic(argument):
            matches = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
            if not matches:
                raise UsageError(f"no files match {argument}")
        else:
            raise UsageError(f"no such file: {argument}")
        found.extend(matches)
    return list(dict.fromkeys(found))


def _read(image: str) -> bytes:
    return sys.stdin.buffer.read() if image == "-" else Path(image).read_bytes()


def classify_all(
    client: CAServeClient, images: list[str], *, top_k: int, batch: int
) -> Iterator[Outcome]:
    """Classify `images` `batch` per request. When the gateway refuses a batch because of
    one image (400/413/415), its images are sent one by one so each gets its own answer.
    Request-wide failures (401, 503 after retries, unreachable) are raised."""
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        data: list[ImageInput] = [_read(image) for image in chunk]
        try:
            if len(chunk) == 1:
                results = [client.classify(data[0], top_k=top_k)]
            else:
                results = client.classify(data, top_k=top_k)
        except APIError as error:
            if error.status in _REQUEST_WIDE or error.status >= 500:
                raise
            if len(chunk) == 1:
                yield Outcome(chunk[0], error=error)
                continue
            for image, one in zip(chunk, data, strict=True):
                try:
                    yield Outcome(image, result=client.classify(one, top_k=top_k))
                except APIError as single_error:
                    if single_error.status in _REQUEST_WIDE or single_error.status >= 500:
                        raise
                    yield Outcome(image, error=single_error)
            continue
        yield from (Outcome(image, result=r) for image, r in zip(chunk, results, strict=True))


def _bar(score: float, unicode: bool) -> str:
    if not unicode:
        return "#" * round(score * _BAR_WIDTH)
    eighths = round(score * _BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("" if rest == 0 else " ▏▎▍▌▋▊▉"[rest])


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _display_name(image: str) -> str:
    return "<stdin>" if image == "-" else Path(image).name


def render_table(outcomes: list[Outcome], out: TextIO) -> None:
    """One block per image: rank, label, score as a percentage and a bar."""
    unicode = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    width = min(40, max([len(_display_name(o.image)) for o in outcomes] + [5]))
    print(f"{'IMAGE':<{width}}  {'#':>2}  {'LABEL':<{_LABEL_WIDTH}}  {'SCORE':>7}", file=out)
    for outcome in outcomes:
        name = _short(_display_name(outcome.image), width)
        if outcome.error is not None:
            error = outcome.error
            print(f"{name:<{width}}  error {error.status} {error.code}: {error.message}", file=out)
            continue
        assert outcome.result is not None
        for rank, prediction in enumerate(outcome.result.predictions, start=1):
            shown = name if rank == 1 else ""
            label = _short(prediction.label, _LABEL_WIDTH)
            print(
                f"{shown:<{width}}  {rank:>2}  {label:<{_LABEL_WIDTH}}  "
                f"{prediction.score * 100:6.2f}%  {_bar(prediction.score, unicode)}",
                file=out,
            )
    done = [o.result for o in outcomes if o.result is not None]
    if done:
        latency_ms = sum(r.latency_s or 0.0 for r in done) / len(done) * 1000
        print(
            f"\n{len(done)} of {len(outcomes)} images classified by {done[0].model} "
            f"v{done[0].model_version}; mean request latency {latency_ms:.1f} ms",
            file=out,
        )


def to_json(outcomes: list[Outcome]) -> dict[str, Any]:
    """The `--json` document: one entry per image, in argument order."""
    entries: list[dict[str, Any]] = []
    for outcome in outcomes:
        entry: dict[str, Any] = {"image": outcome.image}
        if outcome.result is not None:
            result = outcome.result
            entry.update(
                model=result.model,
                model_version=result.model_version,
                predictions=[asdict(p) for p in result.predictions],
                latency_ms=round((result.latency_s or 0.0) * 1000, 3),
                request_id=result.request_id,
            )
        if outcome.error is not None:
            error = outcome.error
            entry["error"] = {"status": error.status, "code": error.code, "message": error.message}
        entries.append(entry)
    return {"results": entries}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ca-serve classify",
        description="Classify images with a running ca-serve gateway.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, directories or glob patterns; - reads stdin")
    parser.add_argument("--url", default=os.environ.get("CA_SERVE_URL", DEFAULT_URL),
                        help="gateway base URL (default: $CA_SERVE_URL or %(default)s)")
    parser.add_argument("--top-k", type=positive_int, default=5,
                        help="labels per image (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--api-key", default=os.environ.get("CA_API_KEY"),
                        help="API key sent as a Bearer token (default: $CA_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for each answer (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=8, metavar="N",
                        help="images per request (default: %(default)s)")
    return parser


def positive_int(text: str) -> int:
    """argparse type for counts: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run `ca-serve classify`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        images = expand(args.images)
    except UsageError as exc:
        print(f"ca-serve classify: {exc}", file=sys.stderr)
        return 2
    retry = RetryPolicy(max_retries=2)
    try:
        with CAServeClient(
            args.url, api_key=args.api_key, timeout_s=args.timeout, retry=retry
        ) as client:
            outcomes = list(classify_all(client, images, top_k=args.top_k, batch=args.batch))
            if not args.json:
                _warn_if_random(client)
    except APIError as exc:
        hint = " (pass --api-key or set CA_API_KEY)" if exc.status == 401 else ""
        print(f"ca-serve classify: {exc.status} {exc.code}: {exc.message}{hint}", file=sys.stderr)
        return 1 if exc.status < 500 else 2
    except CAServeError as exc:
        print(f"ca-serve classify: {exc} (is the gateway running?)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ca-serve classify: {exc}", file=sys.stderr)
        return 2
    try:
        if args.json:
            json.dump(to_json(outcomes), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            render_table(outcomes, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if any(o.error is not None for o in outcomes) else 0


def _warn_if_random(client: CAServeClient) -> None:
    """Say so on stderr when the served weights are random: the labels mean nothing then."""
    try:
        info = client.model_info()
    except CAServeError:
        return
    if info.random_init:
        print(
            f"warning: {info.name} is serving RANDOM weights ({info.weights_source}); "
            "its predictions are meaningless",
            file=sys.stderr,
        )


if __name__ == "__main__":
    raise SystemExit(main())
