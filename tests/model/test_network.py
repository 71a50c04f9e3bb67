"""The network's structure, size and maths against the paper and the authors' code."""

from __future__ import annotations

import pytest
import torch

from service.model import CoordinateAttention, InvertedResidual, ca_mobilenet_v2
from service.model.network import HardSwish, make_divisible

AUTHORS_PARAMETERS = 3_950_648


def test_parameter_count_matches_the_released_model() -> None:
    model = ca_mobilenet_v2()
    assert sum(p.numel() for p in model.parameters()) == AUTHORS_PARAMETERS


def test_state_dict_keys_follow_the_authors_layout() -> None:
    state = ca_mobilenet_v2().state_dict()
    # Stem, a t=1 block (no expansion, no attention), an expanded block with CA at conv.6.
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.conv.3.weight"].shape == (16, 32, 1, 1)
    assert state["features.2.conv.6.conv1.weight"].shape == (8, 96, 1, 1)
    assert state["features.2.conv.6.bn1.running_var"].shape == (8,)
    assert state["features.2.conv.7.weight"].shape == (24, 96, 1, 1)
    assert state["conv.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert "features.1.conv.6.conv1.weight" not in state


def test_attention_only_in_expanded_blocks_with_h_swish_and_reduced_width() -> None:
    model = ca_mobilenet_v2()
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    for index, block in enumerate(blocks):
        attention = [m for m in block.conv if isinstance(m, CoordinateAttention)]
        if index == 0:  # the only t=1 block
            assert attention == []
            continue
        assert len(attention) == 1
        ca = attention[0]
        channels = ca.conv1.in_channels
        assert ca.conv1.out_channels == max(8, channels // 32)
        assert isinstance(ca.relu, HardSwish)
        assert ca.conv2.out_channels == ca.conv3.out_channels == channels


def test_coordinate_attention_matches_adaptive_pooling_formulation() -> None:
    torch.manual_seed(0)
    ca = CoordinateAttention(64, 64).eval()
    x = torch.randn(2, 64, 14, 10)
    with torch.no_grad():
        pool_h = torch.nn.AdaptiveAvgPool2d((None, 1))(x)
        pool_w = torch.nn.AdaptiveAvgPool2d((1, None))(x).permute(0, 1, 3, 2)
        y = ca.relu(ca.bn1(ca.conv1(torch.cat([pool_h, pool_w], dim=2))))
        y_h, y_w = torch.split(y, [14, 10], dim=2)
        expected = x * ca.conv3(y_w.permute(0, 1, 3, 2)).sigmoid() * ca.conv2(y_h).sigmoid()
        assert torch.allclose(ca(x), expected, atol=1e-6)


def test_h_swish_is_x_times_relu6_shifted() -> None:
    x = torch.linspace(-6, 6, 101)
    assert torch.allclose(HardSwish()(x), x * torch.clamp(x + 3, 0, 6) / 6)


def test_forward_shapes_and_other_widths() -> None:
    model = ca_mobilenet_v2(num_classes=10, width_mult=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 224, 224)).shape == (3, 10)


def test_make_divisible_never_drops_more_than_ten_percent() -> None:
    assert make_divisible(32 * 0.35, 8) == 16
    assert make_divisible(24, 8) == 24
    assert make_divisible(1280 * 1.4, 8) == 1792


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"num_classes": 0}, "num_classes"), ({"width_mult": 0}, "width_mult")]
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ca_mobilenet_v2(**kwargs)  # type: ignore[arg-type]


def test_bad_stride_raises_value_error() -> None:
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(16, 16, stride=3, expand_ratio=6)


def test_coordinate_attention_trains_on_the_joint_strips() -> None:
    """In training, bn1 normalises both pooled strips together (the authors' concat)."""
    torch.manual_seed(0)
    ca = CoordinateAttention(16, 16).train()
    x = torch.randn(4, 16, 12, 6)
    ca(x)
    strips = torch.cat([x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True).mT], dim=2)
    with torch.no_grad():
        joint_mean = ca.conv1(strips).mean(dim=(0, 2, 3))
    momentum = ca.bn1.momentum
    assert momentum is not None
    assert torch.allclose(ca.bn1.running_mean, momentum * joint_mean, atol=1e-6)
    assert int(ca.bn1.num_batches_tracked) == 1
