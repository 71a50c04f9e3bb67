"""Load TorchServe exactly as `ca-serve bench` loads the gateway.

`ca-serve bench` posts to `<url>/classify` only; TorchServe answers on
`/predictions/<model>`. This drives a `Target` for that path with the bench's own
`LoadRun` (same workers, warm-up, bounds) and `summarize` (same statistics and JSON), so
the two differ only in the URL path. Loopback only.

`.venv/bin/python -m benchmarks.load --url http://127.0.0.1:8080 --images DIR
    --concurrency 8 --duration 12 --out result.json`
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from clients.bench import LoadRun, check_loopback, load_images
from clients.bench_stats import format_summary, summarize


class PathTarget:
    """`POST <url><path>` with one raw image body per request (the bench's raw mode)."""

    images_per_request = 1

    def __init__(self, url: str, path: str, images: list[bytes], *, concurrency: int,
                 timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.path = path
        self._images = images
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
        )

    @property
    def description(self) -> str:
        return f"{self.url}{self.path}"

    async def start(self) -> None:
        try:
            await self._http.get("/")
        except httpx.TransportError as exc:
            raise RuntimeError(f"cannot reach {self.url}: {exc}") from exc

    async def send(self, index: int) -> tuple[str | None, str | None, int]:
        data = self._images[index % len(self._images)]
        try:
            response = await self._http.post(self.path, content=data,
                                             headers={"Content-Type": "image/jpeg"})
        except httpx.TransportError as exc:
            return None, type(exc).__name__, 1
        status = str(response.status_code)
        return status, (f"{status}" if response.status_code >= 400 else None), 1

    async def close(self) -> None:
        await self._http.aclose()


async def drive(target: PathTarget, concurrency: int, duration_s: float | None,
                requests: int | None, warmup: int) -> dict[str, Any]:
    await target.start()
    try:
        run = LoadRun(target, concurrency, duration_s=duration_s, requests=requests,
                      warmup=warmup, progress=False)
        samples = await run.run()
    finally:
        await target.close()
    config = {"target": target.description, "concurrency": concurrency, "batch_files": 1,
              "top_k": 5, "duration_s": duration_s, "requests": requests, "warmup": warmup}
    return summarize(samples, run.elapsed_s, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", default="/predictions/ca_mobilenetv2")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    check_loopback(urlsplit(args.url).hostname or "")
    duration = args.duration if args.requests is None else None
    if duration is None and args.requests is None:
        duration = 10.0
    target = PathTarget(args.url, args.path, load_images(args.images),
                        concurrency=args.concurrency, timeout_s=args.timeout)
    warmup = args.concurrency if args.warmup is None else args.warmup
    summary = asyncio.run(drive(target, args.concurrency, duration, args.requests, warmup))
    print(format_summary(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
