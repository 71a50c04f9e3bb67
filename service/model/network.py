"""CA-MobileNetV2: MobileNetV2 with Coordinate Attention (Hou et al., CVPR 2021).

Module layout and state_dict keys follow the authors' public `mbv2_ca.py`
(houqb/CoordAttention), so their released `mbv2_ca.pth` loads with `strict=True`:
3,950,648 parameters at width 1.0 with 1000 classes. Written in the file order block ->
network -> builder; the stage layout is a table, not code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# t: expansion ratio, c: output channels, n: repeats, s: stride of the first repeat.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
ATTENTION_REDUCTION = 32
ATTENTION_MIN_CHANNELS = 8


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10%."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, spelled with primitive ops so every exporter and TensorRT takes it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) / 6.0


class HardSwish(nn.Module):
    """x * hard_sigmoid(x): the non-linearity inside coordinate attention (`h_swish`)."""

    def __init__(self) -> None:
        super().__init__()
        # Named `sigmoid` to mirror the authors' module tree (it holds no parameters).
        self.sigmoid = HardSigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(x)


class CoordinateAttention(nn.Module):
    """Coordinate attention: channel attention factorised along height and width.

    Pools along W and along H, mixes both strips with one shared 1x1 conv, then gates the
    input with a per-row and a per-column sigmoid map. Shapes: `[N, C, H, W] -> [N, C, H, W]`.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = ATTENTION_REDUCTION):
        super().__init__()
        mid_channels = max(ATTENTION_MIN_CHANNELS, in_channels // reduction)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu = HardSwish()
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size=1)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self._joint_forward(x)
        # Inference: conv1, bn1 (running statistics) and h_swish act on each position on
        # its own, so running the two strips through them separately is the same function
        # as concatenating them and splitting after. Pooling with a fixed kernel, no
        # concat/split/permute and one product of the two gates export to an ONNX graph
        # without shape arithmetic that ONNX Runtime keeps in its blocked layout: 12.5 ->
        # 10.3 ms per image on one thread (docs/performance.md). Same outputs within 3e-6.
        height, width = int(x.shape[2]), int(x.shape[3])
        pooled_h = F.avg_pool2d(x, (1, width))  # [N, C, H, 1]
        pooled_w = F.avg_pool2d(x, (height, 1))  # [N, C, 1, W]
        gate_h = self.conv2(self.relu(self.bn1(self.conv1(pooled_h)))).sigmoid()
        gate_w = self.conv3(self.relu(self.bn1(self.conv1(pooled_w)))).sigmoid()
        return x * (gate_h * gate_w)

    def _joint_forward(self, x: Tensor) -> Tensor:
        """The authors' formulation. Training needs it: bn1's batch statistics are those
        of both strips together."""
        height, width = x.shape[2], x.shape[3]
        pooled_h = x.mean(dim=3, keepdim=True)  # [N, C, H, 1]
        pooled_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # [N, C, W, 1]
        y = self.relu(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        strip_h, strip_w = torch.split(y, [height, width], dim=2)
        gate_h = self.conv2(strip_h).sigmoid()  # [N, C, H, 1]
        gate_w = self.conv3(strip_w.permute(0, 1, 3, 2)).sigmoid()  # [N, C, 1, W]
        return x * gate_w * gate_h


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> nn.Sequential:
    """Conv -> BN -> ReLU6, the stem and the last 1x1 stage (keys `.0`, `.1`, `.2`)."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


AttentionFactory = Callable[[int], nn.Module]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> attention -> project 1x1.

    Blocks with `expand_ratio == 1` have no expansion and, as in the authors' network, no
    attention. The attention module is appended (never replaced by `nn.Identity`) so the
    `conv.<index>` keys stay those of the released checkpoint.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        attention: AttentionFactory | None = None,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
        ]
        if expand_ratio != 1 and attention is not None:
            layers.append(attention(hidden))
        layers += [
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


def _coordinate_attention(channels: int) -> nn.Module:
    return CoordinateAttention(channels, channels)


class CAMobileNetV2(nn.Module):
    """MobileNetV2 whose expanded blocks carry coordinate attention. `[N,3,H,W] -> logits`."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        attention: AttentionFactory | None = _coordinate_attention,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        divisor = 4 if width_mult == 0.1 else 8
        channels = make_divisible(STEM_CHANNELS * width_mult, divisor)
        layers: list[nn.Module] = [conv_bn_relu6(3, channels, 3, 2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(c * width_mult, divisor)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, t, attention))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        # The head only widens past 1280 channels, as in the authors' code.
        last = (
            make_divisible(LAST_CHANNELS * width_mult, divisor)
            if width_mult > 1.0
            else LAST_CHANNELS
        )
        self.conv = conv_bn_relu6(channels, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self.num_classes = num_classes
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # The authors' initialisation: He-normal over fan-out for convs, N(0, 0.01) for the head.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                nn.init.normal_(
                    module.weight, 0.0, math.sqrt(2.0 / (kh * kw * module.out_channels))
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.features(x))
        # flatten(1) rather than view(size(0), -1): keeps the batch dimension symbolic in exports.
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def ca_mobilenet_v2(*, num_classes: int = 1000, width_mult: float = 1.0) -> CAMobileNetV2:
    """CA-MobileNetV2 with randomly initialised weights (see `load_checkpoint` for weights)."""
    return CAMobileNetV2(num_classes=num_classes, width_mult=width_mult)
