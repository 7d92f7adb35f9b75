"""AlexNet's convolution stack: DPSH's original network family (Krizhevsky et al., 2012).

The layers are torchvision's ``alexnet().features``, rebuilt under the same indices so a
torchvision AlexNet state dict (``features.0.weight`` ...) loads as is, without allocating
the 58M-parameter classifier only to drop it; ``avgpool`` and ``classifier`` are left out.
Five convolutions and three max-pools give a fixed output stride of 32; there is no dilated
or small-image variant, and inputs under 63 px leave nothing for the last pool.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import DahpError
from .registry import register_backbone
from .weights import TORCHVISION_ALEXNET_FILE, torchvision_weights

ALEXNET_OUTPUT_STRIDE = 32


class AlexNetBackbone(nn.Module):
    """AlexNet feature extractor: image batch -> (N, 256, h, w) feature map (6x6 at 224 px)."""

    out_channels = 256
    min_image_size = 63
    pretrained_weights = torchvision_weights("alexnet", "AlexNet", TORCHVISION_ALEXNET_FILE, "classifier.")

    def __init__(self, output_stride: int = ALEXNET_OUTPUT_STRIDE, small_stem: bool = False) -> None:
        super().__init__()
        if output_stride != ALEXNET_OUTPUT_STRIDE:
            raise DahpError(
                f"output_stride must be one of ({ALEXNET_OUTPUT_STRIDE},) for alexnet, got {output_stride}"
            )
        if small_stem:
            raise DahpError("small_stem must be False for alexnet: its 11x11 stride-4 stem has no small-image variant")
        self.output_stride = output_stride
        self.small_stem = small_stem
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def stages(self) -> list[nn.Module]:
        """The five convolutions in the order the forward pass runs them (pools and ReLUs hold no weights)."""
        return [layer for layer in self.features if isinstance(layer, nn.Conv2d)]

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@register_backbone("alexnet")
def alexnet(output_stride: int = ALEXNET_OUTPUT_STRIDE, small_stem: bool = False) -> AlexNetBackbone:
    """DPSH's backbone family (AlexNet / CNN-F), torchvision's definition; output stride 32 only."""
    return AlexNetBackbone(output_stride=output_stride, small_stem=small_stem)
