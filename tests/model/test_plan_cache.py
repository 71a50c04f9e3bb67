"""The TensorRT plan cache and the check before use, on CPU with a stand-in TensorRT.

The stand-in (`tests/model/plan_standin.py`) builds "plans" that are ONNX models and runs
them with ONNX Runtime; everything else is the init step's own code: `tensorrt.main`, the
cache, its lock, the verification against ONNX Runtime CPU and the install.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from service.model import tensorrt
from service.model.plan_cache import Manifest, PlanCache
from service.spec import ONNX_MODEL, TENSORRT_MODEL
from tests.model import plan_standin
from tests.model.plan_standin import GPU_MAX_BATCH, make_repository, temp_files


@pytest.fixture
def repository(tmp_path: Path, model_repository: Path) -> Path:
    return make_repository(tmp_path / "models", model_repository / ONNX_MODEL / "1" / "model.onnx")


def run(repository: Path, cache: Path, plan: str = "fp16", log: Path | None = None) -> int:
    argv = ["--repository", str(repository), "--cache", str(cache), "--standin-plan", plan]
    return plan_standin.main([*argv, *(["--standin-log", str(log)] if log else [])])


def builds(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("start")]


def installed(repository: Path) -> Path:
    return repository / TENSORRT_MODEL / "1" / "model.plan"


def cache_files(cache: Path, suffix: str) -> list[Path]:
    return sorted(cache.glob(f"*{suffix}"))


def test_a_plan_that_agrees_is_cached_installed_and_described(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    assert run(repository, cache, "fp16", log) == 0
    [plan] = cache_files(cache, ".plan")
    manifest = Manifest.from_json(plan.with_suffix(".json").read_text())
    onnx = repository / ONNX_MODEL / "1" / "model.onnx"
    assert installed(repository).read_bytes() == plan.read_bytes()
    assert manifest.sha256 == tensorrt.sha256_file(plan)
    assert manifest.size_bytes == plan.stat().st_size
    identity = manifest.identity
    assert identity.onnx_sha256 == tensorrt.sha256_file(onnx)
    assert identity.tensorrt_version == plan_standin.STANDIN_VERSION
    assert (identity.gpu_name, identity.compute_capability) == plan_standin.STANDIN_GPU
    assert (identity.precision, identity.min_batch, identity.opt_batch, identity.max_batch) == (
        "fp16", 1, GPU_MAX_BATCH // 2, GPU_MAX_BATCH
    )
    assert plan.name == f"{identity.key()}.plan" and "trt" + identity.tensorrt_version in plan.name
    assert manifest.built_at.endswith("Z") and manifest.build_seconds >= 0
    # The FP16 stand-in differs from ONNX Runtime a little, within the tolerance.
    check = manifest.verification
    assert 0 < check["max_abs_diff"] <= check["tolerance"] and check["top1_same"] == 3
    beside = json.loads((installed(repository).parent / "model.plan.json").read_text())
    assert beside["manifest"]["sha256"] == manifest.sha256
    assert beside["installed_check"]["photos"] == 3
    out = capsys.readouterr().out
    assert "stand-in TensorRT" in out and "(built;" in out and "same top-1 on 3" in out
    # A second pod on the same node type takes it from the cache.
    other = make_repository(tmp_path / "other", onnx)
    assert run(other, cache, "fp16", log) == 0
    assert len(builds(log)) == 1 and "(cache;" in capsys.readouterr().out
    assert installed(other).read_bytes() == plan.read_bytes()
    assert not temp_files(cache, repository, other)


def test_a_plan_that_disagrees_is_refused_and_nothing_is_kept(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert run(repository, cache, "wrong") == 1
    err = capsys.readouterr().err
    assert "error: PlanMismatch" in err and "disagrees with ONNX Runtime CPU" in err
    assert f"plan {plan_standin.WRONG_CLASS} / ONNX Runtime" in err
    assert not installed(repository).exists()
    assert not cache_files(cache, ".plan") and not cache_files(cache, ".json")
    assert not temp_files(cache, repository)


def test_a_plan_that_does_not_load_is_refused(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(plan_standin, "plan_bytes", lambda onnx, kind: b"not a plan")
    assert run(repository, tmp_path / "cache") == 1
    assert "stand-in runtime cannot load" in capsys.readouterr().err
    assert not installed(repository).exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete_manifest"])
def test_a_damaged_cached_plan_is_detected_and_rebuilt(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    assert run(repository, cache, "fp16", log) == 0
    [plan] = cache_files(cache, ".plan")
    good = plan.read_bytes()
    if damage == "truncate":
        plan.write_bytes(good[: len(good) // 2])
    elif damage == "flip_a_byte":
        # One bit in the middle of the weights: the plan still loads and runs.
        middle = len(good) // 2
        plan.write_bytes(good[:middle] + bytes([good[middle] ^ 0x01]) + good[middle + 1 :])
    else:
        plan.with_suffix(".json").unlink()
    damaged = plan.read_bytes()
    # A link to the damaged file: the rebuild must replace the name, not write through it.
    os.link(plan, tmp_path / "damaged.plan")
    other = make_repository(tmp_path / "other", repository / ONNX_MODEL / "1" / "model.onnx")
    assert run(other, cache, "fp16", log) == 0
    out = capsys.readouterr().out
    assert len(builds(log)) == 2, "the damaged plan was used instead of rebuilt"
    assert plan.read_bytes() == good and installed(other).read_bytes() == good
    assert (tmp_path / "damaged.plan").read_bytes() == damaged
    if damage == "truncate":
        assert "truncated or grown" in out
    elif damage == "flip_a_byte":
        assert "altered: sha256" in out
    assert not temp_files(cache, other)


def test_a_cached_plan_with_a_matching_checksum_is_still_verified(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong plan whose manifest matches it (a bug in an older builder, say) is caught by
    the check on use, discarded and rebuilt."""
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    assert run(repository, cache, "fp16", log) == 0
    [plan] = cache_files(cache, ".plan")
    manifest_path = plan.with_suffix(".json")
    wrong = plan_standin.plan_bytes(repository / ONNX_MODEL / "1" / "model.onnx", "wrong")
    plan.write_bytes(wrong)
    data = json.loads(manifest_path.read_text())
    data.update(sha256=tensorrt.sha256_file(plan), size_bytes=len(wrong))
    manifest_path.write_text(json.dumps(data))
    other = make_repository(tmp_path / "other", repository / ONNX_MODEL / "1" / "model.onnx")
    assert run(other, cache, "fp16", log) == 0
    out = capsys.readouterr().out
    assert "cached plan failed verification" in out and "discarded" in out
    assert len(builds(log)) == 2
    assert installed(other).read_bytes() != wrong and plan.read_bytes() != wrong


def test_a_manifest_for_another_tensorrt_is_a_miss(repository: Path, tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    assert run(repository, cache, "fp16", log) == 0
    [manifest_path] = cache_files(cache, ".json")
    data = json.loads(manifest_path.read_text())
    data["identity"]["tensorrt_version"] = "10.0.0.1"
    manifest_path.write_text(json.dumps(data))
    assert run(repository, cache, "fp16", log) == 0
    assert len(builds(log)) == 2


def test_the_repository_copy_replaces_model_plan_by_rename(
    repository: Path, tmp_path: Path
) -> None:
    target = installed(repository)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an older plan")
    os.link(target, tmp_path / "older.plan")
    leftover = target.parent / ".model.plan.host.1.dead.tmp"
    leftover.write_bytes(b"half a plan from a killed run")
    assert run(repository, tmp_path / "cache") == 0
    assert (tmp_path / "older.plan").read_bytes() == b"an older plan"
    assert target.read_bytes() != b"an older plan" and not leftover.exists()


def test_without_a_cache_the_plan_is_still_verified_before_use(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--repository", str(repository), "--standin-plan", "wrong"]
    assert plan_standin.main(argv) == 1
    assert "disagrees" in capsys.readouterr().err and not installed(repository).exists()
    assert plan_standin.main([*argv[:2], "--standin-plan", "fp16"]) == 0
    assert "(built-uncached;" in capsys.readouterr().out


def test_a_builder_waits_for_the_lock_then_gives_up_clearly(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert run(repository, cache) == 0
    [plan] = cache_files(cache, ".plan")
    plan.write_bytes(b"")  # a miss, so the builder needs the lock
    with (cache / plan.name.replace(".plan", ".lock")).open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        argv = ["--repository", str(repository), "--cache", str(cache), "--lock-timeout-s", "1"]
        assert plan_standin.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: PlanCacheError: another builder has held" in err


def test_stale_temp_files_of_other_plans_go_once_old(tmp_path: Path) -> None:
    from service.model import plan_cache

    cache = PlanCache(tmp_path)
    identity = plan_cache.PlanIdentity("ab" * 32, "10.11.0.33", "NVIDIA H200", "9.0", "fp16",
                                       1, 64, 128)
    mine = plan_cache.temp_path(tmp_path, identity.key())
    fresh, old = tmp_path / ".other-key.h.1.a.tmp", tmp_path / ".older-key.h.2.b.tmp"
    for path in (mine, fresh, old):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert sorted(cache.remove_stale_temps(identity, locked=False)) == [old]
    assert sorted(cache.remove_stale_temps(identity, locked=True)) == [mine]
    assert fresh.exists()
