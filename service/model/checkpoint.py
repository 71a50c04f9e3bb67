"""Loading CA-MobileNetV2 weights from a file or URL, loudly.

The failure to guard against is a silently random classifier: every load is `strict=True`,
and a mismatch names the offending keys and shapes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from service.model.network import CAMobileNetV2, ca_mobilenet_v2

# The authors' released ImageNet checkpoint (houqb/CoordAttention, `mbv2_ca.pth`).
AUTHORS_CHECKPOINT_URL = "https://github.com/houqb/CoordAttention/raw/main/mbv2_ca.pth"
DOWNLOAD_TIMEOUT_S = 30.0
_WRAPPER_KEYS = ("state_dict", "model")
_CLASSIFIER = "classifier.1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be fetched, read or matched to the network."""


def cache_dir() -> Path:
    """Where downloaded checkpoints live: `$CA_CACHE_DIR`, else `~/.cache/ca-serve`."""
    return Path(os.environ.get("CA_CACHE_DIR", Path.home() / ".cache" / "ca-serve"))


def is_url(value: str) -> bool:
    return urllib.parse.urlparse(value).scheme in ("http", "https")


def download(url: str, directory: Path | None = None) -> Path:
    """Fetch `url` once into the cache (streamed to a temporary file, then renamed)."""
    directory = directory or cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = directory / f"{digest}-{name}"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp, length=1 << 20)
        os.replace(tmp.name, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if "tmp" in locals():
            Path(tmp.name).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not download {url} ({exc}); pass a local file with --weights PATH "
            "(or --weights demo for seeded demo weights)"
        ) from exc
    return target


def resolve(path_or_url: str | Path) -> Path:
    """A local path for a checkpoint given as a path or an http(s) URL."""
    if isinstance(path_or_url, str) and is_url(path_or_url):
        return download(path_or_url)
    path = Path(path_or_url).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """Normalise the accepted layouts to the network's own key names.

    Accepts a plain state_dict, `{"state_dict": ...}` or `{"model": ...}` (as training
    scripts save them), `module.` prefixes (DataParallel), and the head stored flat as
    `classifier.weight/bias` (the released file) rather than `classifier.1.*`.
    """
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping), got {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and not isinstance(inner, Tensor):
            obj = inner
            break
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is not a tensor")
        while key.startswith("module."):
            key = key[len("module.") :]
        if key in ("classifier.weight", "classifier.bias"):
            key = f"{_CLASSIFIER}.{key.rsplit('.', 1)[1]}"
        state[key] = value
    return state


def num_classes_of(state: Mapping[str, Tensor]) -> int:
    weight = state.get(f"{_CLASSIFIER}.weight")
    if weight is None or weight.dim() != 2:
        raise CheckpointError(
            "checkpoint has no classifier (expected classifier.1.weight or classifier.weight "
            "with shape [num_classes, features]); refusing to serve a random head"
        )
    return int(weight.shape[0])


def check_compatible(model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise `CheckpointError` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_preview(mismatched)}")
    if problems:
        raise CheckpointError("checkpoint does not match CA-MobileNetV2: " + "; ".join(problems))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_checkpoint(path_or_url: str | Path, *, width_mult: float = 1.0) -> CAMobileNetV2:
    """Build CA-MobileNetV2 from a checkpoint file or URL, in eval mode.

    The number of classes comes from the checkpoint's classifier. Raises `CheckpointError`
    when the file cannot be fetched or read, or its keys or shapes do not match.
    """
    path = resolve(path_or_url)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    state = unwrap_state_dict(raw)
    model = ca_mobilenet_v2(num_classes=num_classes_of(state), width_mult=width_mult)
    check_compatible(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()
