"""`ca_mobilenet_v2()` against the authors' `mbv2_ca.py`, key for key and output for output.

Keys: `tests/data/authors_mbv2_ca_state_dict.json` records the authors' state_dict (names
in order, shapes), read off their module tree; it says where from. Outputs: the network
is re-stated below as plain functional PyTorch over a state_dict, following the paper and
the authors' structure (coordinate attention as they wrote it: adaptive pooling of each
strip, one concatenation through conv1/bn1/h_swish, a split, one gate per direction).
The same weights go into both, and real photos through both, in eval and in training,
in float64 so that a tolerance of 1e-9 separates a different function from float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from service.model import ca_mobilenet_v2
from service.model.network import CAMobileNetV2
from service.preprocess import preprocess
from service.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from tests.conftest import photo_paths
from tests.support.checkpoints import calibrated_network

AUTHORS = Path(__file__).resolve().parents[1] / "data" / "authors_mbv2_ca_state_dict.json"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# t (expansion), c (output channels), n (repeats), s (first stride): the paper's table.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def authors_keys() -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads(AUTHORS.read_text())
    assert data["source"]["repository"] == "houqb/CoordAttention"
    return [(name, tuple(shape)) for name, shape in data["keys"]]


# -- key for key ---------------------------------------------------------------------------
def test_state_dict_is_the_authors_key_for_key_and_shape_for_shape() -> None:
    ours = [(name, tuple(t.shape)) for name, t in ca_mobilenet_v2().state_dict().items()]
    theirs = authors_keys()
    assert [n for n, _ in ours] == [n for n, _ in theirs]  # same names, same order
    wrong = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    assert not wrong, wrong[:5]


def test_the_recorded_keys_add_up_to_the_released_parameter_count() -> None:
    data = json.loads(AUTHORS.read_text())
    count = sum(
        int(np.prod(shape)) for name, shape in authors_keys() if not name.endswith(BUFFERS)
    )
    assert count == data["num_parameters"] == 3_950_648


# -- output for output: an independent re-statement -----------------------------------------
class Restated:
    """CA-MobileNetV2 as functions over a state_dict. In training, batch norm uses the
    batch's statistics and updates this object's own copies of the running ones."""

    def __init__(self, state: dict[str, Tensor], training: bool) -> None:
        self.p = {name: t.clone() for name, t in state.items()}
        self.training = training

    def bn(self, x: Tensor, at: str) -> Tensor:
        p = self.p
        if self.training:
            p[f"{at}.num_batches_tracked"] += 1
        return F.batch_norm(
            x, p[f"{at}.running_mean"], p[f"{at}.running_var"], p[f"{at}.weight"],
            p[f"{at}.bias"], training=self.training, momentum=BN_MOMENTUM, eps=BN_EPS,
        )

    def conv(self, x: Tensor, at: str, stride: int = 1, groups: int = 1) -> Tensor:
        weight = self.p[f"{at}.weight"]
        padding = weight.shape[-1] // 2
        return F.conv2d(x, weight, self.p.get(f"{at}.bias"), stride, padding, 1, groups)

    @staticmethod
    def h_swish(x: Tensor) -> Tensor:
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0

    def coordinate_attention(self, x: Tensor, at: str) -> Tensor:
        _, _, h, w = x.shape
        along_h = F.adaptive_avg_pool2d(x, (h, 1))  # [N, C, H, 1]: each row's mean
        along_w = F.adaptive_avg_pool2d(x, (1, w)).transpose(2, 3)  # [N, C, W, 1]
        y = torch.cat([along_h, along_w], dim=2)
        y = self.h_swish(self.bn(self.conv(y, f"{at}.conv1"), f"{at}.bn1"))
        y_h, y_w = y[:, :, :h], y[:, :, h:]
        gate_h = torch.sigmoid(self.conv(y_h, f"{at}.conv2"))  # [N, C, H, 1]
        gate_w = torch.sigmoid(self.conv(y_w.transpose(2, 3), f"{at}.conv3"))  # [N, C, 1, W]
        return x * gate_w * gate_h

    def block(self, x: Tensor, at: str, stride: int, expand: int, out: int) -> Tensor:
        y = x
        if expand != 1:
            y = F.relu6(self.bn(self.conv(y, f"{at}.conv.0"), f"{at}.conv.1"))
            dw, project = 3, 7
        else:
            dw, project = 0, 3
        channels = y.shape[1]
        y = self.conv(y, f"{at}.conv.{dw}", stride, groups=channels)
        y = F.relu6(self.bn(y, f"{at}.conv.{dw + 1}"))
        if expand != 1:
            y = self.coordinate_attention(y, f"{at}.conv.6")
        y = self.bn(self.conv(y, f"{at}.conv.{project}"), f"{at}.conv.{project + 1}")
        return x + y if stride == 1 and x.shape[1] == out else y

    def __call__(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn(self.conv(x, "features.0.0", stride=2), "features.0.1"))
        index = 1
        for expand, out, repeats, first_stride in STAGES:
            for i in range(repeats):
                x = self.block(x, f"features.{index}", first_stride if i == 0 else 1, expand, out)
                index += 1
        x = F.relu6(self.bn(self.conv(x, "conv.0"), "conv.1"))
        x = x.mean(dim=(2, 3))
        x = F.dropout(x, 0.1, training=self.training)
        return F.linear(x, self.p["classifier.1.weight"], self.p["classifier.1.bias"])


@pytest.fixture(scope="module")
def network() -> CAMobileNetV2:
    """Calibrated weights (image-dependent answers, well-separated rankings), in float64."""
    return calibrated_network(seed=3).double()


@pytest.fixture(scope="module")
def photos() -> Tensor:
    """The test photos as the gateway preprocesses them, normalised as the graph does."""
    spec = ModelSpec(name="authors")
    images = np.stack(
        [preprocess(p.read_bytes(), spec, max_image_pixels=40_000_000) for p in photo_paths()]
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).double()


def test_eval_outputs_equal_the_restatement_on_real_photos(
    network: CAMobileNetV2, photos: Tensor
) -> None:
    network.eval()
    with torch.no_grad():
        ours = network(photos)
        theirs = Restated(network.state_dict(), training=False)(photos)
    assert ours.shape == theirs.shape == (len(photos), 1000)
    # Eval runs attention in its export form (each strip through conv1/bn1 on its own):
    # the same function, summed in another order.
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9), (ours - theirs).abs().max()
    assert torch.equal(ours.topk(5).indices, theirs.topk(5).indices)
    assert theirs.softmax(1).max() > 0.05  # the photos get real, distinct answers
    assert len({tuple(row) for row in theirs.topk(5).indices.tolist()}) > 1


def test_training_forward_and_running_statistics_equal_the_restatement(
    network: CAMobileNetV2, photos: Tensor
) -> None:
    """In training, bn1 normalises both pooled strips together: outputs and every
    BatchNorm's updated running statistics must match the re-statement's."""
    state = {name: t.clone() for name, t in network.state_dict().items()}
    training = ca_mobilenet_v2().double()
    training.load_state_dict(state)
    training.train()
    restated = Restated(state, training=True)
    torch.manual_seed(7)  # the same dropout mask in both (their only random draw)
    with torch.no_grad():
        ours = training(photos)
    torch.manual_seed(7)
    with torch.no_grad():
        theirs = restated(photos)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9), (ours - theirs).abs().max()
    after = training.state_dict()
    for name in state:
        if name.endswith(BUFFERS):
            assert torch.allclose(after[name].double(), restated.p[name].double(), atol=1e-9), name
    moved = sum(not torch.equal(after[n], state[n]) for n in state if n.endswith("running_mean"))
    assert moved == sum(n.endswith("running_mean") for n in state)  # every BN saw the batch
