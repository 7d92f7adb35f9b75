"""The hashing network: backbone -> (dual attention) -> global pool -> FC1 -> hash layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from ..codes import check_bits
from ..errors import DahpError
from .attention import DualAttention
from .registry import create_backbone


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved inside every model file.

    ``demote_uncertain`` (0, off, in the paper) is not the network's but how its outputs
    become a database's codes (:func:`dahp.codes.demoted_codes`): it travels with the model
    so that every index built from it stores the same codes.
    """

    bits: int = 48
    backbone: str = "resnet18"
    output_stride: int = 8
    small_stem: bool = False
    attention: bool = True
    hidden_dim: int = 1000
    hash_norm: bool = False
    head_channels: int | None = None
    residual_fusion: bool = False
    mirror_average: bool = False
    demote_uncertain: float = 0.0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not 0 <= self.demote_uncertain <= 1:
            raise DahpError(f"--demote-uncertain must be a ratio between 0 and 1, got {self.demote_uncertain}")
        if self.hidden_dim < 1:
            raise DahpError(f"hidden_dim must be positive, got {self.hidden_dim}")
        if self.head_channels is not None and self.head_channels < 1:
            raise DahpError(f"head_channels must be positive or None, got {self.head_channels}")

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

    ``head_channels`` (off in the paper's network) first reduces the backbone's map with a
    1x1 conv + BN + ReLU, as DANet does before its attention modules (2048 -> 512 there).
    Attention costs grow with the square of the channels: on EfficientNet-Lite's 1280, the
    dual attention took 3.0 s per batch of 128 (forward and backward, 5x5 map, 2 cores),
    where at 320 it took 0.7 s. The reduction is part of the head with or without attention,
    so the ablation v1 / v2 differs only in the attention.

    ``residual_fusion`` (off in the paper's network) makes the dual attention start as the
    identity (see :class:`DualAttention`), so v2 starts where v1 does.

    ``mirror_average`` (off in the paper's network) makes the outputs outside training the
    mean of the image's and its left-right mirror's, so an image and its mirrored copy get
    the same code (the training augmentation flips anyway): the codes of a test-time flip,
    at twice the encoding cost, in every encoder built on the network (folded copy, ONNX).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(
            config.backbone, output_stride=config.output_stride, small_stem=config.small_stem
        )
        channels: int = self.backbone.out_channels
        self.reduce: nn.Module = nn.Identity()
        if config.head_channels is not None:
            self.reduce = nn.Sequential(
                nn.Conv2d(channels, config.head_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(config.head_channels), nn.ReLU(inplace=True),
            )
            channels = config.head_channels
        self.attention: nn.Module = (
            DualAttention(channels, residual=config.residual_fusion) if config.attention else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Sequential(nn.Linear(channels, config.hidden_dim), nn.ReLU(inplace=True))
        self.hash_layer = nn.Linear(config.hidden_dim, config.bits)
        # Optional, off in the paper's network: batch-normalised outputs start spread around 0
        # with unit variance per bit, where a random-init network's outputs are nearly the same
        # for every image and a pairwise loss alone can sit at that saddle for many epochs.
        self.hash_norm: nn.Module = nn.BatchNorm1d(config.bits) if config.hash_norm else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        if self.config.mirror_average and not self.training:
            given, mirrored = self.head(self.backbone(torch.cat([images, images.flip(-1)]))).chunk(2)  # one pass
            return (given + mirrored) / 2
        return self.head(self.backbone(images))

    def head(self, features: Tensor) -> Tensor:
        """Everything after the backbone: the new layers, trained alone while the backbone is frozen."""
        features = self.attention(self.reduce(features))
        return self.hash_norm(self.hash_layer(self.fc1(self.pool(features).flatten(1))))
