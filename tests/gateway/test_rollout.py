"""Model versions in one process: the real app and embedded backend on tiny models whose
answers tell the versions apart, the repository watched by calling the poll by hand.

A new complete version is verified and swapped in; a half-written one is not touched; a
truncated one or one whose answers disagree with its record is refused and the old one
keeps serving; an admin load pins; the admin routes are guarded."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from service.errors import ContractError
from service.gateway.app import create_app
from service.gateway.rollout import Rollout
from service.gateway.settings import Settings
from service.spec import ModelSpec
from tests.gateway.conftest import open_client
from tests.support.gateway import TINY_MODEL
from tests.support.versions import (
    Answers,
    tiny_answers,
    tiny_versioned_repository,
    write_tiny_version,
)

SEEDS = {"1": 11, "2": 12, "3": 13}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tiny_versioned_repository(tmp_path / "repo", seed=SEEDS["1"])


@pytest.fixture
def answers(repository: Path, photos: list[Path]) -> Answers:
    spec = ModelSpec.load(repository / TINY_MODEL)
    return tiny_answers([p.read_bytes() for p in photos[:3]], spec, SEEDS)


def settings_for(repository: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_repository": repository, "model_name": TINY_MODEL, "model_poll_interval_s": 0.0,
        "allow_unauthenticated_admin": True, "max_batch_size": 2,
    }
    return Settings(**(values | overrides))


@pytest.fixture
async def client(repository: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(repository), registry=CollectorRegistry())
    async for c in open_client(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


def rollout_of(client: httpx.AsyncClient, app: object = None) -> Rollout:
    app = app or client.app  # type: ignore[attr-defined]
    rollout = app.state.runtime.rollout  # type: ignore[attr-defined]
    assert isinstance(rollout, Rollout)
    return rollout


async def served(client: httpx.AsyncClient, photos: list[Path], answers: Answers) -> list[str]:
    """For each photo: the version the answer names, checked against the scores that
    version's model gives (so a wrong label cannot pass)."""
    versions = []
    for i, photo in enumerate(photos[:3]):
        response = await client.post("/classify?top_k=1", content=photo.read_bytes(),
                                      headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        body = response.json()
        version = body["model"]["version"]
        best = body["results"][0]["predictions"][0]
        assert answers.matches(version, i, best["index"], best["score"]), (
            f"photo {i} answered {best} under version {version}"
        )
        versions.append(version)
    return versions


async def reloads(client: httpx.AsyncClient, result: str) -> float:
    text = (await client.get("/metrics")).text
    line = f'ca_gateway_model_reloads_total{{result="{result}"}} '
    return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


async def test_the_poll_takes_a_new_version_once_it_held_still_for_one_look(
    client: httpx.AsyncClient, repository: Path, photos: list[Path], answers: Answers
) -> None:
    rollout = rollout_of(client)
    assert await served(client, photos, answers) == ["1"] * 3
    assert await rollout.poll_once() is None  # nothing new
    write_tiny_version(repository, "2", SEEDS["2"])
    assert await rollout.poll_once() is None  # first sighting: wait one interval
    outcome = await rollout.poll_once()
    assert outcome is not None and (outcome.result, outcome.version, outcome.previous) == (
        "loaded", "2", "1")
    assert await served(client, photos, answers) == ["2"] * 3
    model = (await client.get("/v1/model")).json()
    assert (model["version"], model["weights"]["source"]) == ("2", "tiny-v2")
    assert (await client.get("/readyz")).json()["model"]["version"] == "2"
    text = (await client.get("/metrics")).text
    info = f'ca_gateway_model_info{{backend="embedded",model="{TINY_MODEL}",version='
    assert f'{info}"2"}} 1.0' in text and f'{info}"1"}} 0.0' in text
    assert await reloads(client, "loaded") == 1 and await reloads(client, "refused") == 0


async def test_a_half_written_version_is_left_alone_until_complete(
    client: httpx.AsyncClient, repository: Path, photos: list[Path], answers: Answers
) -> None:
    rollout = rollout_of(client)
    staging = write_tiny_version(repository, "2", SEEDS["2"])
    # A copy in progress: the directory and the model file are there, the records not yet.
    (staging / "verification.json").rename(repository / "verification.json.later")
    (staging / "weights.json").unlink()
    for _ in range(3):
        assert await rollout.poll_once() is None
    assert await reloads(client, "refused") == 0 and await reloads(client, "loaded") == 0
    assert await served(client, photos, answers) == ["1"] * 3
    (repository / "verification.json.later").rename(staging / "verification.json")
    (staging / "weights.json").write_text('{"source": "tiny-v2", "random_init": false}')
    assert await rollout.poll_once() is None
    outcome = await rollout.poll_once()
    assert outcome is not None and outcome.result == "loaded"
    assert await served(client, photos, answers) == ["2"] * 3


@pytest.mark.parametrize(
    ("broken", "reason"),
    [("truncated", "cannot load it"), ("wrong_answers", "answers differ from its verification")],
)
async def test_a_bad_version_is_refused_and_the_old_one_keeps_serving(
    client: httpx.AsyncClient, repository: Path, photos: list[Path], answers: Answers,
    caplog: pytest.LogCaptureFixture, broken: str, reason: str,
) -> None:
    rollout = rollout_of(client)
    write_tiny_version(repository, "2", SEEDS["2"], broken=broken)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="ca.gateway.rollout"):
        await rollout.poll_once()
        outcome = await rollout.poll_once()
    assert outcome is not None and outcome.result == "refused" and reason in outcome.detail
    assert (outcome.version, outcome.previous) == ("1", "1")
    assert any(
        "refused version 2" in r.message and reason in r.message
        and "version 1 keeps serving" in r.message for r in caplog.records
    )
    assert await served(client, photos, answers) == ["1"] * 3
    assert await reloads(client, "refused") == 1
    # Not tried again while its files stay as they are ...
    for _ in range(3):
        assert await rollout.poll_once() is None
    assert await reloads(client, "refused") == 1
    # ... and an explicit load says why, as a 409.
    answer = await client.post("/v1/model/versions/2/load")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "version_refused"
    assert reason in answer.json()["error"]["message"]
    # Fixed in place (rewritten): taken.
    shutil.rmtree(repository / TINY_MODEL / "2")
    write_tiny_version(repository, "2", SEEDS["2"])
    await rollout.poll_once()
    outcome = await rollout.poll_once()
    assert outcome is not None and outcome.result == "loaded"
    assert await served(client, photos, answers) == ["2"] * 3


async def test_an_admin_load_pins_and_reload_follows_the_newest_again(
    client: httpx.AsyncClient, repository: Path, photos: list[Path], answers: Answers
) -> None:
    rollout = rollout_of(client)
    write_tiny_version(repository, "2", SEEDS["2"])
    answer = await client.post("/v1/model/versions/2/load")
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"detail": ""} == {
        "result": "loaded", "model": TINY_MODEL, "version": "2", "previous": "1",
        "pinned": "2", "detail": "",
    }
    again = (await client.post("/v1/model/versions/2/load")).json()
    assert (again["result"], again["version"]) == ("unchanged", "2")
    # Rollback: pin the old version. The poll then leaves a newer one alone.
    assert (await client.post("/v1/model/versions/1/load")).json()["version"] == "1"
    write_tiny_version(repository, "3", SEEDS["3"])
    for _ in range(2):
        assert await rollout.poll_once() is None
    assert await served(client, photos, answers) == ["1"] * 3
    # Reload: follow the newest again.
    answer = await client.post("/v1/model/reload")
    assert answer.json()["version"] == "3" and answer.json()["pinned"] == ""
    assert await served(client, photos, answers) == ["3"] * 3


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/model/versions/9/load", 404, "not_found"),
        ("/v1/model/versions/01/load", 422, "invalid_parameter"),
        ("/v1/model/versions/..%2F1/load", 404, "not_found"),
        ("/v1/model/versions/-1/load", 422, "invalid_parameter"),
        ("/v1/model/versions/12345678901234567890/load", 422, "invalid_parameter"),
    ],
)
async def test_admin_routes_refuse_versions_that_are_not_there(
    client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    answer = await client.post(path)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)


async def test_admin_routes_are_off_without_keys_and_need_a_key_with_them(
    repository: Path,
) -> None:
    closed = create_app(settings_for(repository, allow_unauthenticated_admin=False),
                        registry=CollectorRegistry())
    async for client in open_client(closed):
        answer = await client.post("/v1/model/reload")
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_disabled"
        assert "CA_API_KEYS" in answer.json()["error"]["message"]
        assert (await client.get("/v1/model")).status_code == 200  # the rest stays open
    keyed = create_app(settings_for(repository, allow_unauthenticated_admin=False,
                                    api_keys=("s3cret",)), registry=CollectorRegistry())
    async for client in open_client(keyed):
        assert (await client.post("/v1/model/reload")).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert (await client.post("/v1/model/reload", headers=bad)).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        answer = await client.post("/v1/model/reload", headers=good)
        assert answer.status_code == 200 and answer.json()["result"] == "unchanged"


async def test_a_pinned_gateway_does_not_follow_new_versions(
    repository: Path, photos: list[Path], answers: Answers
) -> None:
    write_tiny_version(repository, "2", SEEDS["2"])
    app = create_app(settings_for(repository, model_version="1"), registry=CollectorRegistry())
    async for client in open_client(app):
        rollout = rollout_of(client, app)
        for _ in range(2):
            assert await rollout.poll_once() is None
        assert await served(client, photos, answers) == ["1"] * 3
        # reload returns to the pinned version: nothing to do.
        assert (await client.post("/v1/model/reload")).json()["result"] == "unchanged"


async def test_start_up_skips_a_bad_newest_version_unless_it_is_pinned(
    repository: Path, photos: list[Path], answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    write_tiny_version(repository, "2", SEEDS["2"], broken="wrong_answers")
    write_tiny_version(repository, "3", SEEDS["3"], broken="truncated")
    app = create_app(settings_for(repository), registry=CollectorRegistry())
    with caplog.at_level(logging.ERROR, logger="ca.gateway.rollout"):
        async for client in open_client(app):
            # A restart beside bad versions serves the newest good one ...
            assert await served(client, photos, answers) == ["1"] * 3
            assert await reloads(client, "refused") == 2
            # ... and the poll does not try them again as they are.
            rollout = rollout_of(client, app)
            assert await rollout.poll_once() is None and await rollout.poll_once() is None
            assert await reloads(client, "refused") == 2
    messages = [r.message for r in caplog.records]
    assert any("refused version 3" in m and "at start-up" in m and "cannot load" in m
               and "trying version 2" in m for m in messages), messages
    assert any("refused version 2" in m and "does not answer as recorded" in m
               and "trying version 1" in m for m in messages), messages
    # Pinned, the version serves or the gateway does not start.
    pinned = create_app(settings_for(repository, model_version="2"), registry=CollectorRegistry())
    with pytest.raises(ContractError, match="does not answer as recorded"):
        async for _ in open_client(pinned):
            pass


async def test_start_up_fails_when_no_version_answers_as_recorded(tmp_path: Path) -> None:
    repository = tiny_versioned_repository(tmp_path / "repo", seed=SEEDS["1"])
    shutil.rmtree(repository / TINY_MODEL / "1")
    write_tiny_version(repository, "1", SEEDS["1"], broken="wrong_answers")
    app = create_app(settings_for(repository), registry=CollectorRegistry())
    with pytest.raises(ContractError, match="version 1 of tiny_onnx does not answer as recorded"):
        async for _ in open_client(app):
            pass


async def test_the_old_version_is_closed_only_after_its_running_batch(repository: Path) -> None:
    """The rollout itself, with a scripted old backend whose batch is still running when
    the new version (real, embedded) is swapped in: the batch finishes on the old backend,
    which is closed after it, not before."""
    from service.gateway.backends.switch import BackendSwitch
    from service.gateway.metrics import GatewayMetrics
    from service.gateway.modelinfo import load_model_info
    from service.gateway.settings import resolve
    from tests.gateway.test_switch import BATCH, Scripted, until

    settings = settings_for(repository)
    model = load_model_info(settings)
    old = Scripted("1")
    switch = BackendSwitch(old)
    metrics = GatewayMetrics("embedded", CollectorRegistry())
    rollout = Rollout(settings, resolve(settings, model.spec), model, switch, metrics,
                      on_swap=lambda _: None)
    write_tiny_version(repository, "2", SEEDS["2"])
    running = asyncio.ensure_future(switch.infer(BATCH))
    await until(lambda: old.running == 1)
    change = asyncio.ensure_future(rollout.load("2"))
    await until(lambda: switch.model_id().version == "2")  # swapped in ...
    await asyncio.sleep(0.05)
    assert not change.done() and not old.closed  # ... the old one waits for its batch
    old.release.set()
    assert float((await running)[0, 0]) == 1.0
    outcome = await change
    assert outcome.result == "loaded" and old.closed and not old.closed_while_running
    await switch.close()
