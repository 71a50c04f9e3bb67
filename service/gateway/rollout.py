"""Serving another model version without a restart: find it, verify it, switch to it.

A version is taken only when it is complete (`service.versions`) and answers the
verification photos as its weights did when `build-repo` wrote it (`verification.json`,
within the export gate's tolerance, `service.verification`). Until then the old version
serves every request; a version that fails is refused with one log line and
`ca_gateway_model_reloads_total{result="refused"}`, and is not tried again until its
files change.

- **Embedded**: the new version is loaded as a second backend beside the serving one,
  checked, then swapped in between batches (`backends/switch.py`): batches running on the
  old backend finish there, and it is closed after its last one. Unpinned
  (`CA_MODEL_VERSION` empty), the repository is polled every `CA_MODEL_POLL_INTERVAL_S`
  for a newer complete version, taken once its files have held still for one interval.
- **Triton**: every ready server loads the new version beside the old one (`stage`); the
  gateway asks for the old one meanwhile, probes the new one on each server, then asks for
  the new one and has the servers drop the old (`backends/triton_versions.py`).

An admin call (`load(version)`) pins the version it loads: the poll stops following newer
ones until `reload()`, which returns to `CA_MODEL_VERSION` (or the newest) and loads it.
Rollback is pinning the old version, by either means. One change runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from service.errors import NotFound
from service.gateway.backends import Backend, build_backend
from service.gateway.backends.switch import BackendSwitch
from service.gateway.metrics import GatewayMetrics
from service.gateway.modelinfo import ModelInfo, read_weights
from service.gateway.settings import EffectiveSettings, Settings
from service.gateway.version_check import MakeBackend, Probe
from service.spec import WEIGHTS_FILENAME, WeightsInfo
from service.verification import FP16, FP32, Check, Reference, compare
from service.versions import Fingerprint, fingerprint, missing_files, numbered_versions

logger = logging.getLogger("ca.gateway.rollout")

#: How long Triton may take to load or unload a version on one server.
TRITON_LOAD_TIMEOUT_S = 600.0

Result = Literal["loaded", "unchanged", "refused"]


@dataclass(frozen=True)
class Outcome:
    """How a change of version ended: `version` serves now (the new one, or when refused
    still `previous`); `detail` says why, for people."""

    result: Result
    version: str
    previous: str
    detail: str


class Refused(Exception):
    """A version that may not take traffic, and why."""


class Rollout:
    """Changes the version behind `switch`; `on_swap` receives the new `ModelInfo` at the
    moment the new version takes traffic."""

    def __init__(
        self,
        settings: Settings,
        effective: EffectiveSettings,
        model: ModelInfo,
        switch: BackendSwitch,
        metrics: GatewayMetrics,
        on_swap: Callable[[ModelInfo], None],
        *,
        probe: Probe | None = None,
        refused: dict[str, Fingerprint] | None = None,
        make_backend: MakeBackend = build_backend,
    ) -> None:
        self.settings = settings
        self.effective = effective
        self.model = model
        self.switch = switch
        self.metrics = metrics
        self._on_swap = on_swap
        self._make_backend = make_backend
        self._lock = asyncio.Lock()
        self._pinned = settings.model_version  # "" follows the newest version
        self._loaded: tuple[str, Fingerprint] = (model.version, self._fingerprint(model.version))
        self._refused: dict[str, Fingerprint] = dict(refused or {})
        self._sighted: tuple[str, Fingerprint] | None = None
        self._probe = probe or Probe(model.spec, effective.max_batch_size)
        self._poller: asyncio.Task[None] | None = None

    @property
    def embedded(self) -> bool:
        return self.settings.backend == "embedded"

    @property
    def pinned(self) -> str:
        """The version the gateway stays on ("" while it follows the newest). On Triton,
        the version it asks for: after any change it asks for the version it loaded."""
        if self.embedded:
            return self._pinned
        return str(getattr(self.switch.current, "version", "") or "")

    # -- lifecycle ---------------------------------------------------------------------
    def start_polling(self) -> None:
        """Poll the repository (embedded backend, `model_poll_interval_s` > 0)."""
        if self.embedded and self.settings.model_poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="model-version-poll"
            )

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # -- the admin calls ---------------------------------------------------------------
    async def reload(self) -> Outcome:
        """Return to `CA_MODEL_VERSION` (or, empty, the newest complete version not
        refused as it is) and load it if it is not the one serving."""
        self._pinned = self.settings.model_version
        target = self._pinned or self._newest_complete() or self.model.version
        return await self._change(target, trigger="reload", pin=False)

    async def load(self, version: str) -> Outcome:
        """Load `version` and stay on it (rollback: an older one). Raises `NotFound` when
        the repository has no such version."""
        if version not in numbered_versions(self.model.model_dir):
            raise NotFound(
                f"{self.model.spec.name} has no version {version}; the repository holds "
                f"{', '.join(numbered_versions(self.model.model_dir)) or 'none'}"
            )
        return await self._change(version, trigger="admin", pin=True)

    # -- the poll ----------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_interval_s)
            try:
                await self.poll_once()
            except Exception:  # the poll must outlive a bad tick
                logger.exception("model version poll failed")

    async def poll_once(self) -> Outcome | None:
        """One look at the repository: load the newest complete version if it differs
        from the one serving, was not refused as it is, and looked the same last time."""
        if self._pinned:
            return None
        found = await asyncio.to_thread(self._newest_complete_fingerprint)
        if found is None or found == self._loaded:
            self._sighted = None
            return None
        if found != self._sighted:  # wait one interval: a copy may still be writing it
            self._sighted = found
            return None
        self._sighted = None
        return await self._change(found[0], trigger="poll", pin=False)

    def _newest_complete(self) -> str | None:
        found = self._newest_complete_fingerprint()
        return found[0] if found else None

    def _newest_complete_fingerprint(self) -> tuple[str, Fingerprint] | None:
        """The newest version that is complete and was not refused as it is now."""
        for version in reversed(numbered_versions(self.model.model_dir)):
            if not missing_files(self.model.model_dir / version, self._model_file):
                stamp = self._fingerprint(version)
                if self._refused.get(version) != stamp:
                    return version, stamp
        return None

    @property
    def _model_file(self) -> str:
        # Triton servers hold the model file; the gateway's copy needs the records only.
        return self.model.onnx_path.name if self.embedded else WEIGHTS_FILENAME

    def _fingerprint(self, version: str) -> Fingerprint:
        return fingerprint(self.model.model_dir / version, self._model_file)

    # -- one change --------------------------------------------------------------------
    async def _change(self, version: str, *, trigger: str, pin: bool) -> Outcome:
        async with self._lock:
            previous = self.switch.model_id().version
            stamp = await asyncio.to_thread(self._fingerprint, version)
            if (version, stamp) == self._loaded and version == previous:
                if pin:
                    self._pinned = version
                return Outcome("unchanged", version, previous, f"version {version} serves")
            try:
                reference, weights = await asyncio.to_thread(self._records, version)
                if self.embedded:
                    check = await self._switch_embedded(version, reference, weights)
                else:
                    check = await self._switch_triton(version, previous, reference, weights)
            except Refused as exc:
                self._refused[version] = stamp
                self.metrics.model_reloads.labels("refused").inc()
                logger.error(
                    "refused version %s of %s (%s): %s; version %s keeps serving",
                    version, self.model.spec.name, trigger, exc, previous,
                )
                return Outcome("refused", previous, previous, str(exc))
            self._loaded = (version, stamp)
            self._refused.pop(version, None)
            if pin:
                self._pinned = version
            self.metrics.model_reloads.labels("loaded").inc()
            detail = f"version {version} verified ({check.describe()}) and serving"
            logger.info(
                "%s now serves version %s (was %s; %s): verified, %s",
                self.model.spec.name, version, previous, trigger, check.describe(),
            )
            return Outcome("loaded", version, previous, detail)

    def _records(self, version: str) -> tuple[Reference, WeightsInfo | None]:
        """The version's reference answers and weights info; raises `Refused` for an
        incomplete version or an unreadable record."""
        version_dir = self.model.model_dir / version
        missing = missing_files(version_dir, self._model_file)
        if missing:
            raise Refused(f"incomplete: {version_dir} lacks {', '.join(missing)}")
        try:
            reference = Reference.load(version_dir)
            weights = read_weights(version_dir)
        except ValueError as exc:  # SpecError
            raise Refused(str(exc)) from exc
        if reference is None:  # checked by missing_files; the file may have gone since
            raise Refused(f"no verification.json in {version_dir}")
        return reference, weights

    async def _switch_embedded(
        self, version: str, reference: Reference, weights: WeightsInfo | None
    ) -> Check:
        model = replace(self.model, version=version, weights=weights)
        candidate = self._make_backend(self.settings, model, self.effective)
        swapped = False
        try:
            try:
                await candidate.start()
                check = await self._probe.check(candidate, reference)
            except Exception as exc:  # a corrupt file, a contract mismatch, a crash
                raise Refused(f"cannot load it: {type(exc).__name__}: {exc}") from exc
            if not check.passed:
                raise Refused(f"answers differ from its verification.json: {check.describe()}")
            old = self.switch.swap(candidate)
            swapped = True
            self._took_traffic(model, candidate)
        finally:
            if not swapped:
                await candidate.close()
        await self.switch.retire(old)  # after its last batch
        return check

    async def _switch_triton(
        self, version: str, serving: str, reference: Reference, weights: WeightsInfo | None
    ) -> Check:
        from service.gateway.backends import triton_versions
        from service.gateway.backends.triton import TritonBackend

        backend = self.switch.current
        assert isinstance(backend, TritonBackend)
        if not serving:
            raise Refused("no triton server has answered yet: nothing to verify against")
        backend.pin(serving)  # keep asking for the serving version while both are loaded
        try:
            await triton_versions.stage(backend, serving, version, TRITON_LOAD_TIMEOUT_S)
            batch = await self._probe.batch()
            answers = await triton_versions.probe(
                backend, batch, version, self.effective.max_batch_size
            )
        except Exception as exc:
            await triton_versions.unstage(backend, serving, TRITON_LOAD_TIMEOUT_S)
            raise Refused(f"triton could not serve it: {type(exc).__name__}: {exc}") from exc
        tolerance = FP16 if backend.half_precision else FP32
        checks = [(address, compare(probs, reference.probs, tolerance)) for address, probs
                  in answers]
        failed = [f"{address}: {check.describe()}" for address, check in checks if not check.passed]
        if failed:
            await triton_versions.unstage(backend, serving, TRITON_LOAD_TIMEOUT_S)
            raise Refused(f"answers differ from its verification.json on {'; '.join(failed)}")
        backend.pin(version)
        self._took_traffic(replace(self.model, version=version, weights=weights), backend)
        await triton_versions.release(backend, version, TRITON_LOAD_TIMEOUT_S)
        return max((check for _, check in checks), key=lambda check: check.max_abs_diff)

    def _took_traffic(self, model: ModelInfo, backend: Backend) -> None:
        self.model = model
        self._on_swap(model)
        self.metrics.set_engine(getattr(backend, "engine", None))
        self.metrics.model_answered(backend.model_id())
