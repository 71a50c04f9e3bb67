"""The served model's data contract, written once and read by everyone.

A `ModelSpec` travels with each model in the repository as `<model>/spec.json`. The
repository writer creates it, the gateway derives its preprocessing from it, and the
clients read it through `GET /v1/model`: preprocessing constants exist only here.
`WeightsInfo` (`<model>/<version>/weights.json`) records where the built weights came from.

Torch-free on purpose: the gateway imports this module.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILENAME = "spec.json"
WEIGHTS_FILENAME = "weights.json"
#: A version's reference answers on the verification photos (`service.verification`).
VERIFICATION_FILENAME = "verification.json"
LABELS_FILENAME = "labels.txt"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The Triton model names of the repository (docs/architecture.md, the model spec contract).
TORCHSCRIPT_MODEL = "ca_mobilenetv2"
ONNX_MODEL = "ca_mobilenetv2_onnx"
TENSORRT_MODEL = "ca_mobilenetv2_trt"


class SpecError(ValueError):
    """A spec, labels or weights file is missing or does not describe a usable model."""


@dataclass(frozen=True)
class ModelSpec:
    """What a caller must know to feed the model and read its answer.

    The graph takes `dtype` images shaped `[N, input_size, input_size, 3]` (`layout`, RGB)
    and returns probabilities `[N, num_classes]`; normalisation with `mean`/`std` happens
    inside the graph, so callers only resize and crop.
    """

    name: str
    input_name: str = "IMAGE"
    output_name: str = "PROBS"
    input_size: int = 224
    resize_shorter: int = 256
    interpolation: str = "bilinear"
    layout: str = "NHWC"
    dtype: str = "uint8"
    color: str = "RGB"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    normalized_in_graph: bool = True
    num_classes: int = 1000
    max_batch_size: int = 32
    labels_file: str = LABELS_FILENAME
    architecture: str = "ca_mobilenet_v2"
    width_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.resize_shorter < self.input_size:
            raise SpecError(
                f"resize_shorter ({self.resize_shorter}) must be >= input_size ({self.input_size})"
            )
        if self.num_classes < 1 or self.max_batch_size < 1:
            raise SpecError("num_classes and max_batch_size must be positive")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's shape, without the batch dimension."""
        return (self.input_size, self.input_size, 3)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown spec fields: {sorted(unknown)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def load(cls, model_dir: Path) -> ModelSpec:
        """Read `<model_dir>/spec.json`; raises `SpecError` naming the file."""
        path = model_dir / SPEC_FILENAME
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise SpecError(f"no model spec at {path}: build the repository first") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise SpecError(f"{path} is not a valid model spec: {exc}") from exc


@dataclass(frozen=True)
class WeightsInfo:
    """Where a built model's weights came from. `random_init` is the loud case."""

    source: str
    random_init: bool
    sha256: str | None = None
    num_parameters: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, version_dir: Path) -> WeightsInfo | None:
        """Read `<version_dir>/weights.json`, or None where the build left none."""
        path = version_dir / WEIGHTS_FILENAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**data)


def public_source(source: str) -> str:
    """What may be shown of where weights came from: a URL without credentials, query or
    fragment (a signed URL carries its token there); the base name of a file path, never
    the directories of the machine that built or serves the model; a plain label
    (`random-init`) as it is."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme not in ("", "file") and parts.netloc:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    path = parts.path if parts.scheme == "file" else source
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def load_labels(path: Path, expected: int | None = None) -> list[str]:
    """One label per line, index = line number. Raises `SpecError` on a count mismatch."""
    try:
        labels = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise SpecError(f"no labels file at {path}") from exc
    if expected is not None and len(labels) != expected:
        raise SpecError(f"{path} has {len(labels)} labels, the model has {expected} classes")
    return labels


def default_labels_path() -> Path:
    """The 1000 ImageNet-1k class names shipped with the package (index 0 is tench)."""
    return Path(__file__).parent / "data" / "imagenet_labels.txt"
