"""The hashing network: backbone -> (dual attention) -> global pool -> FC1 -> hash layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import Tensor, nn

from ..codes import check_bits
from ..errors import DahpError
from .attention import DualAttention
from .registry import create_backbone


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved inside every model file."""

    bits: int = 48
    backbone: str = "resnet18"
    output_stride: int = 8
    small_stem: bool = False
    attention: bool = True
    hidden_dim: int = 1000
    hash_norm: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.hidden_dim < 1:
            raise DahpError(f"hidden_dim must be positive, got {self.hidden_dim}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        known = {field.name for field in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DahpError(f"model config has unknown fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)  # type: ignore[arg-type]


class HashingNetwork(nn.Module):
    """Maps images to real-valued codes ``b = wᵀφ(x) + v`` (eq. 11); ``sign(b)`` is the hash.

    With ``attention=False`` this is the paper's ablation DAHP-v1 (plain ResNet-18).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(
            config.backbone, output_stride=config.output_stride, small_stem=config.small_stem
        )
        channels: int = self.backbone.out_channels
        self.attention: nn.Module = DualAttention(channels) if config.attention else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Sequential(nn.Linear(channels, config.hidden_dim), nn.ReLU(inplace=True))
        self.hash_layer = nn.Linear(config.hidden_dim, config.bits)
        # Optional, off in the paper's network: batch-normalised outputs start spread around 0
        # with unit variance per bit, where a random-init network's outputs are nearly the same
        # for every image and a pairwise loss alone can sit at that saddle for many epochs.
        self.hash_norm: nn.Module = nn.BatchNorm1d(config.bits) if config.hash_norm else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        features = self.attention(self.backbone(images))
        return self.hash_norm(self.hash_layer(self.fc1(self.pool(features).flatten(1))))
