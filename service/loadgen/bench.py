"""`ca-serve bench`: an asyncio load generator for the gateway (or Triton directly).

N workers send requests back to back (one refused with `Retry-After` waits it out first)
until `--duration` seconds pass or `--requests` are done; a progress line runs on stderr;
the report gives throughput, latency percentiles (ok requests), status counts and errors,
and can be saved as JSON (`--out`) and a PNG (`--plot`). Only loopback targets unless
`--allow-remote`: a load test is not for someone else's server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import ipaddress
import itertools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from PIL import Image

from clients.classify_cmd import IMAGE_SUFFIXES, positive_int
from clients.client import DEFAULT_URL, USER_AGENT
from clients.inputs import to_upload
from clients.retry import parse_retry_after
from service.loadgen.http_client import (
    ConnectionPool,
    HTTPError,
    encode_request,
    multipart_form,
)
from service.loadgen.stats import Outcome, Sample, format_summary, latency_ms, summarize


class Target(Protocol):
    """Something to load: `send(i)` performs request `i`."""

    images_per_request: int

    @property
    def description(self) -> str: ...
    async def start(self) -> None: ...
    async def send(self, index: int) -> Outcome: ...
    async def close(self) -> None: ...


class GatewayTarget:
    """`POST <path>` (`/classify` by default) with K images per request: a raw body for one,
    multipart for more. Every distinct request is encoded once (see `http_client`)."""

    def __init__(self, url: str, images: list[bytes], *, batch: int, top_k: int,
                 timeout_s: float, api_key: str | None, path: str = "/classify") -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain http:// only, not {url!r}")
        self.url = url.rstrip("/")
        self.path = path
        self.images_per_request = batch
        self._host_header = parts.netloc
        host, port = parts.hostname, parts.port or 80
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        target = f"{parts.path.rstrip('/')}{path}"
        if path == "/classify":
            target += f"?top_k={top_k}"
        uploads = [to_upload(data, i) for i, data in enumerate(images)]
        self._requests: list[bytes] = []
        for i in range(len(uploads)):
            chosen = [uploads[(i + j) % len(uploads)] for j in range(batch)]
            if batch == 1:
                body, content_type = chosen[0].data, chosen[0].content_type
            else:
                boundary = f"ca-serve-bench-{i}"
                body = multipart_form([(u.filename, u.data, u.content_type) for u in chosen],
                                      boundary)
                content_type = f"multipart/form-data; boundary={boundary}"
            self._requests.append(encode_request(
                "POST", self._host_header, target, headers | {"Content-Type": content_type},
                body))
        self._pool = ConnectionPool(host, port, timeout_s=timeout_s)

    @property
    def description(self) -> str:
        return f"{self.url}{self.path}"

    async def start(self) -> None:
        try:
            await self._pool.exchange(encode_request("GET", self._host_header, "/healthz",
                                                     {"User-Agent": USER_AGENT}))
        except HTTPError as exc:
            server = "ca-serve" if self.path == "/classify" else "the server"
            raise RuntimeError(f"cannot reach {server} at {self.url}: {exc}") from exc

    async def send(self, index: int) -> Outcome:
        try:
            answer = await self._pool.exchange(self._requests[index % len(self._requests)])
        except HTTPError as exc:
            return Outcome(None, exc.kind, self.images_per_request)
        status = str(answer.status)
        if answer.status >= 400:
            return Outcome(status, f"{status} {answer.error_code()}", self.images_per_request,
                           parse_retry_after(answer.headers.get("retry-after")) or 0.0)
        return Outcome(status, None, self.images_per_request)

    async def close(self) -> None:
        await self._pool.close()


@dataclass
class LoadRun:
    """Drives a target with `concurrency` workers; bounded by `duration_s` or `requests`.

    A worker refused with `Retry-After` waits that long before its next request, as the
    project's client does (`clients.retry`); `honor_retry_after=False` resends at once,
    as a client that ignores it would (each refusal then costs the server a request at
    once, which under closed-loop overload multiplies the traffic it must refuse)."""

    target: Target
    concurrency: int
    duration_s: float | None = None
    requests: int | None = None
    warmup: int = 0
    progress: bool = True
    honor_retry_after: bool = True
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0

    async def run(self) -> list[Sample]:
        for i in range(self.warmup):
            await self.target.send(i)
        counter = itertools.count()
        started = time.perf_counter()
        deadline = started + self.duration_s if self.duration_s is not None else None

        async def worker() -> None:
            while True:
                index = next(counter)
                if self.requests is not None and index >= self.requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                sent = time.perf_counter()
                outcome = await self.target.send(index)
                done = time.perf_counter()
                self.samples.append(Sample(sent - started, done - sent, outcome.images,
                                           outcome.status, outcome.error))
                if self.honor_retry_after and outcome.retry_after_s > 0:
                    wait_s = outcome.retry_after_s
                    if deadline is not None:
                        wait_s = min(wait_s, max(0.0, deadline - done))
                    await asyncio.sleep(wait_s)

        reporter = asyncio.create_task(self._report(started)) if self.progress else None
        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            self.elapsed_s = time.perf_counter() - started
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                self._print_progress(started, final=True)
        return self.samples

    async def _report(self, started: float) -> None:
        interval = 0.25 if sys.stderr.isatty() else 2.0
        while True:
            await asyncio.sleep(interval)
            self._print_progress(started)

    def _print_progress(self, started: float, final: bool = False) -> None:
        elapsed = time.perf_counter() - started
        done = len(self.samples)
        failed = sum(1 for s in self.samples if not s.ok)
        if self.duration_s is not None:
            fraction, goal = min(1.0, elapsed / self.duration_s), f"{self.duration_s:g}s"
        else:
            fraction, goal = min(1.0, done / max(1, self.requests or 1)), f"{self.requests} req"
        filled = int(fraction * 20)
        latency = latency_ms(self.samples[-2000:])
        p50 = f"p50 {latency['p50']:.1f} ms" if latency else "p50 -"
        line = (f"[{'#' * filled}{'.' * (20 - filled)}] {elapsed:5.1f}s/{goal}  {done} req  "
                f"{done / max(elapsed, 1e-9):.1f} req/s  {p50}  failed {failed}")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def check_loopback(host: str) -> None:
    """Raise ValueError unless every address `host` resolves to is a loopback address."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host}: {exc}") from exc
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise ValueError(
            f"{host} resolves to non-loopback {', '.join(remote)}; "
            "pass --allow-remote to load a server that is not on this machine"
        )


def load_images(directory: Path | None) -> list[bytes]:
    """The image files of `directory` (sorted), or three synthetic photos-sized JPEGs."""
    if directory is not None:
        files = sorted(p for p in directory.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files in {directory}")
        return [p.read_bytes() for p in files]
    images = []
    for seed, size in enumerate([(640, 480), (1024, 768), (500, 500)]):
        gradient = Image.linear_gradient("L").resize(size)
        image = Image.merge("RGB", (gradient, gradient.rotate(90 * (seed + 1)).resize(size),
                                    Image.effect_noise(size, 40 + 10 * seed)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ca-serve bench",
        description="Load a ca-serve gateway (or Triton directly) and report latency.",
    )
    parser.add_argument("--url", default=os.environ.get("CA_SERVE_URL", DEFAULT_URL),
                        help="gateway base URL (default: $CA_SERVE_URL or %(default)s)")
    parser.add_argument("--path", default="/classify",
                        help="URL path to POST to (%(default)s; another server's endpoint, "
                             "e.g. TorchServe's /predictions/<model>, to compare it)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="directory of images to send (default: synthetic JPEGs)")
    parser.add_argument("--concurrency", type=positive_int, default=8, metavar="N",
                        help="requests in flight (%(default)s)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, metavar="S", help="run for S seconds (10)")
    bound.add_argument("--requests", type=positive_int, metavar="N", help="send N requests")
    parser.add_argument("--batch-files", type=positive_int, default=1, metavar="K",
                        help="images per request (%(default)s)")
    parser.add_argument("--top-k", type=positive_int, default=5,
                        help="labels requested (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help="unrecorded requests first (default: concurrency)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="per-request timeout in seconds (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("CA_API_KEY"),
                        help="API key sent as a Bearer token (default: $CA_API_KEY)")
    parser.add_argument("--out", type=Path, metavar="results.json", help="write JSON results")
    parser.add_argument("--plot", type=Path, metavar="latency.png", help="write a PNG")
    parser.add_argument("--triton", metavar="HOST:PORT",
                        help="drive Triton directly with preprocessed batches instead")
    parser.add_argument("--triton-protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--triton-model", help="Triton model (default: $CA_MODEL_NAME)")
    parser.add_argument("--model-repository", type=Path,
                        help="repository holding the model's spec.json "
                             "(default: $CA_MODEL_REPOSITORY or model_repository)")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="resend at once after a refusal (default: wait its Retry-After, "
                             "as the project's client does)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a target that is not a loopback address")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _make_target(args: argparse.Namespace, images: list[bytes]) -> Target:
    if args.triton is None:
        host = urlsplit(args.url).hostname or ""
        if not args.allow_remote:
            check_loopback(host)
        return GatewayTarget(args.url, images, batch=args.batch_files, top_k=args.top_k,
                             timeout_s=args.timeout, api_key=args.api_key, path=args.path)
    from service.gateway.settings import Settings
    from service.loadgen.triton import TritonTarget, load_spec, preprocessed_batches

    settings = Settings()  # CA_* environment variables, as the gateway reads them
    address = args.triton.split("://", 1)[-1]
    if not args.allow_remote:
        check_loopback(address.rsplit(":", 1)[0])
    model = args.triton_model or settings.model_name
    spec = load_spec(args.model_repository or settings.model_repository, model)
    batches = preprocessed_batches(images, spec, args.batch_files, settings.max_image_pixels)
    return TritonTarget(address, model=model, spec=spec, batches=batches,
                        protocol=args.triton_protocol, top_k=args.top_k,
                        timeout_s=args.timeout)


async def _run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    await target.start()
    try:
        run = LoadRun(
            target, args.concurrency,
            duration_s=args.duration if args.requests is None else None,
            requests=args.requests,
            warmup=args.concurrency if args.warmup is None else args.warmup,
            progress=not args.quiet,
            honor_retry_after=not args.ignore_retry_after,
        )
        if run.duration_s is None and run.requests is None:
            run.duration_s = 10.0
        samples = await run.run()
    finally:
        await target.close()
    config = {
        "target": target.description, "concurrency": args.concurrency,
        "batch_files": args.batch_files, "top_k": args.top_k,
        "duration_s": run.duration_s, "requests": run.requests, "warmup": run.warmup,
        "honor_retry_after": run.honor_retry_after,
    }
    summary = summarize(samples, run.elapsed_s, config)
    if args.plot is not None:
        from service.loadgen.plot import write_plot

        write_plot(samples, summary, args.plot)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run `ca-serve bench`; returns the exit status (2 when the target cannot be loaded)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        # Said before the run, not as a traceback after it (`make run` installs no plotting).
        parser.error("--plot needs matplotlib: .venv/bin/pip install -e '.[bench]'")
    try:
        images = load_images(args.images)
        target = _make_target(args, images)
        summary = asyncio.run(_run(args, target))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"ca-serve bench: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"results     {args.out}")
    if args.plot is not None:
        print(f"plot        {args.plot}")
    return 0 if summary["requests"]["ok"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
