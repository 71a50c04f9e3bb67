"""What the gateway knows about the model it serves: spec, labels, weights provenance.

Read at start-up (and the version's weights again when a rollout, `rollout.py`, switches
versions) from `<model_repository>/<model_name>/` (`spec.json`, the labels
file, `<version>/weights.json`). `CA_MODEL_NAME` is the one name of the served model: the
directory read here, the model the embedded backend loads and the model the Triton backend
asks Triton for; the spec must carry the same name. The Triton backend reads the same
files; its tensors are then checked against the spec through Triton's model metadata, and
the version it reports is the one Triton answers with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from service.gateway.settings import Settings
from service.spec import (
    WEIGHTS_FILENAME,
    ModelSpec,
    SpecError,
    WeightsInfo,
    load_labels,
    public_source,
)
from service.versions import missing_files, numbered_versions

logger = logging.getLogger("ca.gateway.model")

#: The embedded backend's model file in a version directory.
ONNX_FILENAME = "model.onnx"


@dataclass(frozen=True)
class ModelInfo:
    spec: ModelSpec
    labels: tuple[str, ...]
    weights: WeightsInfo | None
    model_dir: Path
    #: The version directory read: `CA_MODEL_VERSION`, or when that is empty the highest
    #: numbered one present (empty when there is none, as on a Triton-only gateway).
    version: str

    @property
    def onnx_path(self) -> Path:
        return self.model_dir / self.version / ONNX_FILENAME


def load_model_info(settings: Settings) -> ModelInfo:
    """Read spec, labels and weights info; raises `SpecError` naming what is missing."""
    model_dir = settings.model_dir
    spec = ModelSpec.load(model_dir)
    if spec.name != settings.model_name:
        raise SpecError(
            f"{model_dir / 'spec.json'} names the model {spec.name!r}, not "
            f"{settings.model_name!r} (CA_MODEL_NAME): one name for one model"
        )
    labels = load_labels(model_dir / spec.labels_file, expected=spec.num_classes)
    if len(set(labels)) != len(labels):
        logger.info("%s has repeated labels; clients should key on the index", model_dir)
    version = settings.model_version or newest_version(
        model_dir, model_file=ONNX_FILENAME if settings.backend == "embedded" else None
    )
    return ModelInfo(
        spec=spec,
        labels=tuple(labels),
        weights=read_weights(model_dir / version),
        model_dir=model_dir,
        version=version,
    )


def read_weights(version_dir: Path) -> WeightsInfo | None:
    """A version's `weights.json` (its source reduced to what may be shown), warning in
    the log when there is none or the weights are random; raises `SpecError` for a file
    that cannot be read."""
    try:
        weights = WeightsInfo.load(version_dir)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{version_dir} has an unreadable weights.json: {exc}") from exc
    if weights is not None:  # a repository built before sources were recorded as names
        weights = replace(weights, source=public_source(weights.source))
    if weights is None:
        logger.warning("no weights.json under %s: weights source unknown", version_dir)
    elif weights.random_init:
        logger.warning(
            "serving RANDOM-INIT weights from %s: predictions are meaningless", version_dir
        )
    return weights


def newest_version(model_dir: Path, model_file: str | None = None) -> str:
    """The highest numbered version directory under `model_dir` ("" when there is none):
    the version Triton serves by default, and so the one an unpinned gateway reads. With
    `model_file`, the highest that holds it and its `weights.json`, so an embedded gateway
    starting beside a version still being copied serves the one before (falling back to
    the highest when none does: start-up then says what is missing)."""
    versions = numbered_versions(model_dir)
    if model_file is not None:
        whole = [
            v for v in versions
            if not {model_file, WEIGHTS_FILENAME} & set(missing_files(model_dir / v, model_file))
        ]
        versions = whole or versions
    return versions[-1] if versions else ""
