"""SIGTERM under load on the real model: every request the gateway accepted gets its
answer (no resets for accepted ones), and the process exits 0 once drained."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.soak import web_photos
from service.gateway.settings import Settings
from tests.support.gateway import GatewayServer


def accepted_ids(log: str) -> dict[str, int]:
    """request id -> status, from the gateway's access log (requests it handled)."""
    out = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("logger") == "ca.gateway.access" and entry.get("route") == "/classify":
            out[entry["request_id"]] = int(entry["status"])
    return out


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request(model_repository: Path) -> None:
    settings = Settings(model_repository=model_repository, graceful_shutdown_s=20)
    photos = web_photos()
    answers: dict[str, int] = {}
    failures: dict[str, str] = {}

    async def user(url: str, number: int, stop_at: float) -> None:
        # Keep-alive connections, as real clients use; each request carries its own id.
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            n = 0
            while time.monotonic() < stop_at:
                rid = f"u{number}-{n}"
                n += 1
                try:
                    r = await client.post("/classify", content=photos[n % len(photos)],
                                          headers={"Content-Type": "image/jpeg",
                                                   "X-Request-ID": rid})
                    answers[rid] = r.status_code
                except httpx.ConnectError:
                    return  # the listener is gone: not accepted, fine
                except httpx.HTTPError as exc:
                    failures[rid] = type(exc).__name__
                    await asyncio.sleep(0.05)

    with GatewayServer(settings) as server:
        assert server.process is not None

        async def scenario() -> None:
            stop_at = time.monotonic() + 8.0
            users = [asyncio.ensure_future(user(server.url, i, stop_at)) for i in range(16)]
            await asyncio.sleep(2.0)
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.gather(*users)

        asyncio.run(scenario())
        code = server.wait(30)
        log = server.log_text()
    handled = accepted_ids(log)
    print(f"answered {len(answers)} ({sum(s == 200 for s in answers.values())} x 200), "
          f"accepted by the gateway {len(handled)}, client-side failures {len(failures)}")
    assert code == 0, log[-2000:]
    assert handled, "no traffic reached the gateway"
    lost = {rid: failures[rid] for rid in handled if rid not in answers}
    assert not lost, f"accepted but never answered: {lost}"
    assert all(answers[rid] == status for rid, status in handled.items())
    assert set(answers.values()) <= {200, 503}, set(answers.values())
    # Whatever the client saw fail was never seen by the gateway (closed keep-alive).
    assert not set(failures) & set(handled)
