"""A new model version rolled out to a real Triton (explicit model control) through the
gateway's admin call, under closed-loop load: Triton loads it beside the old one, the
gateway probes it on the verification photos, then asks for it; a version whose answers
disagree with its record is refused and unloaded, the old one serving throughout.

Version 1 is the repository built from the test checkpoint; version 2 is a tiny model with
the same contract (1000 classes), so every answer's scores say which version computed it."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL, ModelSpec
from tests.support.gateway import GatewayServer, tiny_onnx_model
from tests.support.rollout_load import (
    Change,
    Load,
    Seen,
    Timeline,
    check,
    latency_ms,
    wait_serving,
)
from tests.support.triton import TritonServer
from tests.support.versions import Answers, write_version

pytestmark = pytest.mark.slow

KEY = "rollout-admin-key"


def test_a_version_loaded_through_the_admin_call_takes_over_under_load(
    model_repository: Path, photos: list[Path], tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(model_repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
    model_dir = repository / ONNX_MODEL
    python_model = {"model.py": (model_dir / "1" / "model.py").read_bytes()}
    new = tiny_onnx_model(1000, seed=41)
    pictures = [p.read_bytes() for p in photos[:3]]
    answers = Answers(pictures, ModelSpec.load(model_dir),
                      {"1": (model_dir / "1" / "model.onnx").read_bytes(), "2": new})
    auth = {"Authorization": f"Bearer {KEY}"}

    args = ["--model-control-mode=explicit", f"--load-model={ONNX_MODEL}"]
    with TritonServer(repository, extra_args=args) as triton:
        settings = Settings(
            backend="triton", model_repository=repository, triton_url=triton.grpc_url,
            api_keys=(KEY,), triton_health_interval_s=0.25,
        )
        with GatewayServer(settings) as gateway:

            async def scenario() -> tuple[Timeline, list[Seen], list[httpx.Response]]:
                timeline = Timeline(first="1")
                load = Load(gateway.url, pictures, clients=3, headers=auth)
                load.start()
                calls = []
                async with httpx.AsyncClient(base_url=gateway.url, timeout=120.0,
                                             headers=auth) as client:
                    await asyncio.sleep(1.0)
                    # The new version reaches Triton's repository (and the gateway's copy).
                    await asyncio.to_thread(write_version, model_dir, "2", new,
                                            extra_files=python_model)
                    asked = time.monotonic()
                    calls.append(await client.post("/v1/model/versions/2/load"))
                    done = await wait_serving(client, "2", within_s=5)
                    timeline.changes.append(Change(asked, done, "1", "2"))
                    await asyncio.sleep(1.0)
                    # A version whose answers disagree with its record: refused.
                    await asyncio.to_thread(
                        write_version, model_dir, "3", tiny_onnx_model(1000, seed=42),
                        reference_model=tiny_onnx_model(1000, seed=43), extra_files=python_model,
                    )
                    calls.append(await client.post("/v1/model/versions/3/load"))
                    await asyncio.sleep(1.0)
                return timeline, await load.stop(), calls

            timeline, seen, calls = asyncio.run(scenario())
            log = gateway.log_text()
        control = httpclient.InferenceServerClient(triton.http_url)
        loaded = {v: control.is_model_ready(ONNX_MODEL, v) for v in ("1", "2", "3")}
        control.close()

    per_version = check(seen, timeline, answers)
    assert [call.status_code for call in calls] == [200, 409], [c.text for c in calls]
    first = calls[0].json()
    assert (first["result"], first["version"], first["previous"]) == ("loaded", "2", "1")
    assert first["pinned"] == "2"  # the gateway asks Triton for the version it loaded
    assert "answers differ from its verification.json" in calls[1].json()["error"]["message"]
    assert "refused version 3" in log and "version 2 keeps serving" in log
    # Triton keeps the serving version only: the old one and the refused one are unloaded.
    assert loaded == {"1": False, "2": True, "3": False}
    assert set(per_version) == {"1", "2"} and per_version["2"] >= 10, per_version
    print(f"triton: {len(seen)} answers, all 200; per version {per_version}; "
          f"(answers, p50 ms, p99 ms) {latency_ms(seen, timeline)}; {first['detail']}")
