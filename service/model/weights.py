"""Which network `build-repo --weights` names: the authors' release, the demo weights,
seeded random weights or a checkpoint, and what `weights.json` says about it.

`default` falls back to the demo weights, with a loud warning, where the authors'
checkpoint cannot be loaded (no network, a damaged download); a checkpoint named
explicitly is an error if it cannot be loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.model.checkpoint import (
    AUTHORS_CHECKPOINT_URL,
    CheckpointError,
    load_checkpoint,
    resolve,
    sha256_of,
)
from service.model.demo import DEMO_NOTE, DEMO_SEED, DEMO_SOURCE, demo_network
from service.model.network import CAMobileNetV2, ca_mobilenet_v2
from service.spec import WeightsInfo, public_source

RANDOM_SEED = 0
DEFAULT_WEIGHTS = "default"
DEMO_WEIGHTS = "demo"
RANDOM_WEIGHTS = "random"
Progress = Callable[[str], None]


def random_network(num_classes: int = 1000) -> CAMobileNetV2:
    """Seeded, so two builds without a checkpoint serve identical (meaningless) weights.

    Every image gets the same near-uniform answer: for pipeline tests, not for people."""
    torch.manual_seed(RANDOM_SEED)
    return ca_mobilenet_v2(num_classes=num_classes).eval()


def demo_weights(notes: list[str] | None = None) -> tuple[CAMobileNetV2, WeightsInfo]:
    """The calibrated demo network (`service.model.demo`): answers differ per photo, and
    `weights.json` says `random_init: true` with a note that the labels are meaningless."""
    return demo_network(), WeightsInfo(
        source=DEMO_SOURCE, random_init=True, notes=[DEMO_NOTE, *(notes or [])]
    )


def fallback_warning(reason: str) -> str:
    """The banner `build-repo` prints when the authors' checkpoint cannot be loaded."""
    bar = "!" * 78
    return (
        f"{bar}\n!! WARNING: the authors' checkpoint could not be loaded:\n!!   {reason}\n"
        f"!! Serving DEMO weights ({DEMO_SOURCE}, seed {DEMO_SEED}): NOT ImageNet-trained,\n"
        "!! labels are meaningless (each photo still gets its own answer).\n"
        "!! Serve a real checkpoint with `make run WEIGHTS=PATH` "
        "(or `ca-serve build-repo --weights PATH`).\n"
        f"{bar}"
    )


def load_weights(weights: str, warn: Progress) -> tuple[CAMobileNetV2, WeightsInfo]:
    """Resolve `--weights`: `default` (the authors' release; where it cannot be loaded, the
    demo weights with a loud warning), `demo`, `random` (seeded, uniform answers: for
    pipeline tests), or a checkpoint path or URL (an error if it cannot be loaded)."""
    if weights == RANDOM_WEIGHTS:
        network = random_network()
        return network, WeightsInfo(source="random-init", random_init=True)
    if weights == DEMO_WEIGHTS:
        return demo_weights()
    source = AUTHORS_CHECKPOINT_URL if weights == DEFAULT_WEIGHTS else weights
    try:
        path = resolve(source)
        network = load_checkpoint(path)
    except CheckpointError as exc:
        if weights != DEFAULT_WEIGHTS:
            raise
        warn(fallback_warning(str(exc)))
        return demo_weights([f"fallback: {exc}"])
    # The URL or the file's name: the build machine's directories are nobody's business,
    # and the repository is served (GET /v1/model); the sha256 identifies the file.
    return network, WeightsInfo(
        source=public_source(str(source)), random_init=False, sha256=sha256_of(path)
    )
