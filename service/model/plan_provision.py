"""Put a verified plan at a model repository's `model.plan`, from the cache or a fresh build.

`provision` is what the TensorRT init step runs (`service.model.tensorrt`), with TensorRT
as the builder and runner; tests run it with a stand-in of both. Contract:

- Whatever lands at `target` was copied through a temp file in its directory, checked
  against the cache manifest's sha256 while copying (when cached), run against ONNX
  Runtime by `verify`, and only then renamed into place. `target` is never written in
  place, so Triton (or an earlier copy) never sees half a plan.
- A cached plan that fails its checksum or `verify` is discarded and rebuilt, once; a
  fresh plan that fails `verify` is an error, and nothing is cached or installed.
- `<target>.json` beside the plan is its manifest plus the check of this copy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.model.plan_cache import (
    Build,
    Manifest,
    PlanCache,
    PlanCacheError,
    PlanIdentity,
    Verify,
    build_verified,
    fsync_dir,
    temp_path,
    write_atomic,
)
from service.model.plan_check import PlanMismatch

log = logging.getLogger(__name__)

Source = Literal["cache", "built", "built-uncached"]
# Without a working flock, another builder's renames can land between ours: re-read a few
# times before calling the cache broken.
UNLOCKED_READ_ATTEMPTS = 5


@dataclass
class Outcome:
    """What `provision` installed and how it got it."""

    plan: Path
    manifest: Manifest
    source: Source
    verification: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def provision(
    target: Path,
    identity: PlanIdentity,
    build: Build,
    verify: Verify,
    cache: PlanCache | None = None,
) -> Outcome:
    """Install a verified plan for `identity` at `target`. Raises PlanMismatch (a plan that
    disagrees with the reference), PlanCacheError, or whatever `build` raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_own_temps(target)
    tmp = temp_path(target.parent, target.name)
    try:
        if cache is None:
            outcome = _build_uncached(tmp, identity, build, verify)
        else:
            outcome = _from_cache(tmp, identity, build, verify, cache)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    outcome.plan = target
    record = {"manifest": asdict(outcome.manifest), "installed_check": outcome.verification}
    write_atomic(target.with_name(target.name + ".json"), json.dumps(record, indent=2) + "\n")
    return outcome


def _remove_own_temps(target: Path) -> None:
    """The repository has one writer (this step): temp files there are from a killed run."""
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        path.unlink(missing_ok=True)


def _build_uncached(tmp: Path, identity: PlanIdentity, build: Build, verify: Verify) -> Outcome:
    manifest = build_verified(tmp, identity, build, verify)
    return Outcome(tmp, manifest, "built-uncached", manifest.verification)


def _from_cache(
    tmp: Path, identity: PlanIdentity, build: Build, verify: Verify, cache: PlanCache
) -> Outcome:
    notes: list[str] = []
    # Without the lock first: the common case is a whole plan another pod already built.
    hit = _checked_copy(cache, identity, tmp, verify, notes)
    if hit is not None:
        return Outcome(tmp, hit[0], "cache", hit[1], notes)
    with cache.lock(identity) as locked:
        attempts = 1 if locked else UNLOCKED_READ_ATTEMPTS
        # Another builder may have finished while this one waited for the lock.
        hit = _checked_copy(cache, identity, tmp, verify, notes)
        if hit is not None:
            return Outcome(tmp, hit[0], "cache", hit[1], notes)
        if cache.plan_path(identity).exists() or cache.manifest_path(identity).exists():
            cache.discard(identity)
            notes.append("discarded the cached plan that failed its checks")
        for stale in cache.remove_stale_temps(identity, locked=locked):
            notes.append(f"removed {stale.name}, left by a builder that died")
        log.info("building plan %s", identity.key())
        cache.store(identity, build, verify)
        for _ in range(attempts):
            manifest, why = cache.copy_out(identity, tmp)
            if manifest is not None:
                return Outcome(tmp, manifest, "built", verify(tmp), notes)
            time.sleep(cache.poll_s)
        raise PlanCacheError(f"the plan just stored in {cache.directory} reads back wrong: {why}")


def _checked_copy(
    cache: PlanCache, identity: PlanIdentity, tmp: Path, verify: Verify, notes: list[str]
) -> tuple[Manifest, dict[str, Any]] | None:
    """Copy the cached plan to `tmp` and verify that copy; None (with a note) on a miss."""
    manifest, why = cache.copy_out(identity, tmp)
    if manifest is None:
        if why != "not in the cache":
            notes.append(f"cached plan rejected: {why}")
            log.warning("cached plan %s rejected: %s", identity.key(), why)
        return None
    try:
        return manifest, verify(tmp)
    except PlanMismatch as exc:
        notes.append(f"cached plan failed verification: {exc}")
        log.warning("cached plan %s failed verification: %s", identity.key(), exc)
        return None
