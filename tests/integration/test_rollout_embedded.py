"""New model versions taken without a restart by a real gateway process (embedded backend)
under closed-loop load: three swaps by the repository poll, three by the admin call, a
corrupt version refused, a half-written one left alone, a rollback by pinning.

Tiny models whose seed sets their answers serve the versions, so every answer's scores say
which version computed it (`tests/support/versions.py`); the checks on each answer are in
`tests/support/rollout_load.py`."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.gateway.settings import Settings
from service.spec import ModelSpec
from tests.support.gateway import TINY_MODEL, GatewayServer
from tests.support.rollout_load import (
    Change,
    Load,
    Seen,
    Timeline,
    check,
    latency_ms,
    wait_serving,
)
from tests.support.versions import tiny_answers, tiny_versioned_repository, write_tiny_version

SEEDS = {"1": 31, "2": 32, "3": 33, "4": 34, "5": 35}
POLL_S = 0.3
KEY = "rollout-admin-key"
CLIENTS = 3


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tiny_versioned_repository(tmp_path / "repo", seed=SEEDS["1"])


def settings_for(repository: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_repository": repository, "model_name": TINY_MODEL,
        "model_poll_interval_s": POLL_S, "max_batch_size": 4,
        "preprocess_threads": 2, "inference_threads": 2,
    }
    return Settings(**(values | overrides))


async def reloads(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    prefix = "ca_gateway_model_reloads_total{result=\""
    return {
        line[len(prefix):].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines() if line.startswith(prefix)
    }


async def hold(seconds: float) -> None:
    await asyncio.sleep(seconds)  # traffic keeps flowing meanwhile


def test_three_swaps_by_the_poll_under_load(repository: Path, photos: list[Path]) -> None:
    pictures = [p.read_bytes() for p in photos[:3]]
    answers = tiny_answers(pictures, ModelSpec.load(repository / TINY_MODEL), SEEDS)
    model_dir = repository / TINY_MODEL

    async def scenario(url: str) -> tuple[Timeline, list[Seen], dict[str, float]]:
        timeline = Timeline(first="1")
        load = Load(url, pictures, clients=CLIENTS)
        load.start()
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            await hold(0.5)
            for old, new in (("1", "2"), ("2", "3")):
                asked = time.monotonic()
                await asyncio.to_thread(write_tiny_version, repository, new, SEEDS[new])
                done = await wait_serving(client, new, within_s=20)
                timeline.changes.append(Change(asked, done, old, new))
                await hold(0.5)
            # A corrupt version 4 is refused; version 3 keeps serving.
            await asyncio.to_thread(write_tiny_version, repository, "4", SEEDS["4"],
                                    broken="truncated")
            for _ in range(200):
                if (await reloads(client)).get("refused") == 1:
                    break
                await asyncio.sleep(0.05)
            await hold(4 * POLL_S)  # not retried, still version 3
            # A half-written version 5 (its model file only) is left alone.
            shutil.rmtree(model_dir / "4")
            half = model_dir / "5"
            half.mkdir()
            await asyncio.to_thread(shutil.copy, model_dir / "3" / "model.onnx",
                                    half / "model.onnx")
            await hold(4 * POLL_S)
            counts = await reloads(client)
            # Completed (the rest written in place): the third swap.
            shutil.rmtree(half)
            asked = time.monotonic()
            await asyncio.to_thread(write_tiny_version, repository, "5", SEEDS["5"])
            done = await wait_serving(client, "5", within_s=20)
            timeline.changes.append(Change(asked, done, "3", "5"))
            await hold(0.5)
        return timeline, await load.stop(), counts

    settings = settings_for(repository)
    with GatewayServer(settings) as gateway:
        timeline, seen, counts = asyncio.run(scenario(gateway.url))
        log = gateway.log_text()
    per_version = check(seen, timeline, answers)
    assert counts == {"loaded": 2.0, "refused": 1.0}, "half-written version 5 was touched"
    assert set(per_version) == {"1", "2", "3", "5"} and min(per_version.values()) >= 10, per_version
    assert "refused version 4" in log and "cannot load it" in log
    assert "version 3 keeps serving" in log
    assert log.count("now serves version") == 3
    print(f"poll: {len(seen)} answers, all 200; per version {per_version}; "
          f"(answers, p50 ms, p99 ms) {latency_ms(seen, timeline)}")


def test_three_swaps_by_the_admin_call_and_a_rollback_under_load(
    repository: Path, photos: list[Path]
) -> None:
    pictures = [p.read_bytes() for p in photos[:3]]
    answers = tiny_answers(pictures, ModelSpec.load(repository / TINY_MODEL), SEEDS)
    auth = {"Authorization": f"Bearer {KEY}"}

    async def scenario(url: str) -> tuple[Timeline, list[Seen], list[httpx.Response]]:
        timeline = Timeline(first="1")
        load = Load(url, pictures, clients=CLIENTS, headers=auth)
        load.start()
        calls: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=url, timeout=60.0, headers=auth) as client:
            await hold(0.5)
            write_tiny_version(repository, "2", SEEDS["2"])
            write_tiny_version(repository, "3", SEEDS["3"])
            write_tiny_version(repository, "4", SEEDS["4"], broken="wrong_answers")
            steps = [("/v1/model/versions/2/load", "1", "2"),
                     ("/v1/model/versions/3/load", "2", "3"),
                     ("/v1/model/versions/4/load", "3", None),  # refused
                     ("/v1/model/versions/1/load", "3", "1"),  # rollback
                     ("/v1/model/reload", "1", "3")]  # newest complete: 4 is refused
            for path, old, new in steps:
                asked = time.monotonic()
                calls.append(await client.post(path))
                if new is not None:
                    done = await wait_serving(client, new, within_s=20)
                    timeline.changes.append(Change(asked, done, old, new))
                await hold(0.5)
        return timeline, await load.stop(), calls

    settings = settings_for(repository, model_poll_interval_s=0.0, api_keys=(KEY,))
    with GatewayServer(settings) as gateway:
        timeline, seen, calls = asyncio.run(scenario(gateway.url))
        log = gateway.log_text()
    per_version = check(seen, timeline, answers)
    statuses = [call.status_code for call in calls]
    assert statuses == [200, 200, 409, 200, 200], [c.text for c in calls]
    assert [c.json()["version"] for c in calls if c.status_code == 200] == ["2", "3", "1", "3"]
    assert "answers differ from its verification.json" in calls[2].json()["error"]["message"]
    assert [c.json()["pinned"] for c in calls if c.status_code == 200] == ["2", "3", "1", ""]
    assert set(per_version) == {"1", "2", "3"}, per_version
    assert "refused version 4" in log
    print(f"admin: {len(seen)} answers, all 200; per version {per_version}; "
          f"(answers, p50 ms, p99 ms) {latency_ms(seen, timeline)}")
