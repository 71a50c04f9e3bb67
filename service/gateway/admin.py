"""The model admin routes: load another version of the served model without a restart.

`POST /v1/model/versions/{version}/load` verifies that version and switches to it, and
the gateway stays on it (the poll stops following newer versions): a rollout or a
rollback. `POST /v1/model/reload` returns to `CA_MODEL_VERSION`, or when that is empty to
the newest complete version, and loads it. Both answer once the change is done (seconds:
the new version is loaded and checked first) with what serves now; a version that fails
its check is a 409 `version_refused` and the old one keeps serving.

Guarded by `security.require_admin`: an API key, and off without keys unless
`CA_ALLOW_UNAUTHENTICATED_ADMIN` says otherwise. Each call reaches one gateway process:
with `CA_WORKERS` > 1, or several replicas, rely on the repository poll or
`CA_MODEL_VERSION` instead (docs/gateway.md, "Model versions").
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from service.errors import NotFound, VersionRefused
from service.gateway.rollout import Outcome, Rollout
from service.gateway.routes import RuntimeDep
from service.gateway.runtime import Runtime
from service.gateway.schemas import ErrorResponse, VersionChange
from service.gateway.security import Admin
from service.versions import MAX_VERSION_DIGITS

router = APIRouter(prefix="/v1/model", tags=["Model versions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 422, 503)
}
Version = Annotated[
    str,
    Path(
        description="A version directory of the served model (a positive number)",
        pattern=rf"^[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}}$",
    ),
]


def _rollout(runtime: Runtime) -> Rollout:
    if runtime.rollout is None:
        raise NotFound("this gateway's backend was handed in: its model version is fixed")
    return runtime.rollout


def _answer(runtime: Runtime, rollout: Rollout, outcome: Outcome) -> VersionChange:
    if outcome.result == "refused":
        raise VersionRefused(
            f"version refused: {outcome.detail}; version {outcome.version} keeps serving"
        )
    return VersionChange(
        result=outcome.result,
        model=runtime.model.spec.name,
        version=outcome.version,
        previous=outcome.previous,
        pinned=rollout.pinned,
        detail=outcome.detail,
    )


@router.post(
    "/versions/{version}/load",
    response_model=VersionChange,
    summary="Verify a version, serve it and stay on it (rollout or rollback)",
    responses=_ERRORS,
)
async def load_version(_admin: Admin, runtime: RuntimeDep, version: Version) -> VersionChange:
    rollout = _rollout(runtime)
    return _answer(runtime, rollout, await rollout.load(version))


@router.post(
    "/reload",
    response_model=VersionChange,
    summary="Return to CA_MODEL_VERSION or the newest version, verified",
    responses=_ERRORS,
)
async def reload(_admin: Admin, runtime: RuntimeDep) -> VersionChange:
    rollout = _rollout(runtime)
    return _answer(runtime, rollout, await rollout.reload())
