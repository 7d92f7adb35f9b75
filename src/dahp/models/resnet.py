"""ResNet-18 with dilation, so DAHP's attention sees a 1/8-resolution feature map.

torchvision's ``BasicBlock`` refuses ``dilation > 1``, so this module re-implements
ResNet-18 with the same layer names as ``torchvision.models.resnet18`` (``conv1``,
``bn1``, ``layer1.0.conv1`` ...). A torchvision state dict therefore loads as is;
only its ``fc`` classifier is dropped.

Stride is replaced by dilation from the deepest stage up, as DANet does:
output stride 32 (plain ResNet), 16 (``layer4`` dilated by 2) or 8 (``layer3`` by 2,
``layer4`` by 4). The small-image stem (3x3 conv, stride 1, no max-pool) keeps 4x
more resolution for 32-px inputs, so its output strides are 8, 4 and 2.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import DahpError
from .registry import register_backbone
from .weights import TORCHVISION_RESNET18_FILE, torchvision_weights

STANDARD_STEM_STRIDE = 4
_STAGE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with dilation allowed (first conv keeps the previous dilation)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, first_dilation: int, dilation: int
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, dilation)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Backbone(nn.Module):
    """ResNet-18 feature extractor: image batch -> (N, 512, H/s, W/s) feature map."""

    out_channels = 512
    min_image_size = 1
    pretrained_weights = torchvision_weights("resnet18", "ResNet-18", TORCHVISION_RESNET18_FILE, "fc.")

    def __init__(self, output_stride: int = 8, small_stem: bool = False) -> None:
        super().__init__()
        stem_stride = 1 if small_stem else STANDARD_STEM_STRIDE
        allowed = tuple(stem_stride * factor for factor in (2, 4, 8))
        if output_stride not in allowed:
            stem = "small-image" if small_stem else "standard"
            raise DahpError(f"output_stride must be one of {allowed} with the {stem} stem, got {output_stride}")
        dilated_stages = {8: 0, 4: 1, 2: 2}[output_stride // stem_stride]
        self.output_stride = output_stride
        self.small_stem = small_stem

        if small_stem:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        in_channels, dilation = 64, 1
        for index, width in enumerate(_STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if index >= len(_STAGE_WIDTHS) - dilated_stages:
                dilation, stride = dilation * stride, 1
            blocks = nn.Sequential(
                BasicBlock(in_channels, width, stride, previous_dilation, dilation),
                BasicBlock(width, width, 1, dilation, dilation),
            )
            setattr(self, f"layer{index + 1}", blocks)
            in_channels = width
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, plus zero-init of each block's last BN (its
        # zero_init_residual option) so a random-init network starts near identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def stages(self) -> list[nn.Module]:
        """The layers in the order the forward pass runs them, a stage at a time: the stem, then layer1-4."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_backbone("resnet18")
def resnet18(output_stride: int = 8, small_stem: bool = False) -> ResNet18Backbone:
    """The paper's backbone (DAHP §III-C): ResNet-18, output stride 8 by default."""
    return ResNet18Backbone(output_stride=output_stride, small_stem=small_stem)
