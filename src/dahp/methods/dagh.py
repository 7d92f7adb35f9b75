"""DAgH — Deep Attention-guided Hashing (Yang, Raymond, Sun & Long, IEEE Access 7, 2019).

Two streams. The *first* (guiding) stream is an attention network — a small fully
convolutional network that turns the image into a pixel-wise mask in (0, 1) — and a
first hashing network that hashes the masked image; it is trained with a semantic
loss (the pairwise likelihood, ``softplus(θ) - s θ`` with ``θ = ½ gᵢᵀgⱼ`` over the
batch's pairs, plus DPSH's quantisation term) and an attention loss. Its codes
``sign(g)`` are the *attention-guided codes*, which supervise the *second* hashing
network — the one kept for retrieval — as labels: ``mean (b - sign(g))²``. At search
time only the second network runs.

Our reading, since only the published description was at hand: the attention loss
is the mean mask value (weight 0.1), so the mask keeps what the semantic loss needs
and drops the rest (the salient region); the first stream's hashing network has the
run's architecture without attention and starts from the second's backbone weights
(pretrained where the run is); both streams train together, each step, rather than in
alternation. The guiding stream is the loss's companion module (``HashLoss.companion``).
Deviations: the run's backbone instead of DAgH's, and the first stream's pairs are
within the batch while the second network has no pairwise term of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..errors import DahpError
from ..losses import HashLoss, LossInputs, pairwise_nll, quantization_error, similarity, weighted_sum
from ..models import HashingNetwork, ModelConfig
from .dahp import DPSH_QUANTIZATION_WEIGHT
from .registry import LossSettings, Method, register_method, reject_anchor_weight, reject_quantization_weight


class AttentionMask(nn.Module):
    """A three-layer fully convolutional network: image -> (n, 1, h, w) mask in (0, 1).

    The dilated middle layer widens the receptive field at full resolution; the last
    bias starts at 2, so the mask starts near 0.88 everywhere and training carves it.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )
        nn.init.constant_(self.layers[-1].bias, 2.0)

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(images))


class GuidingStream(nn.Module):
    """DAgH's first stream: the attention mask, then a hashing network on the masked image."""

    def __init__(self, network: ModelConfig) -> None:
        super().__init__()
        self.attention = AttentionMask()
        self.hashing = HashingNetwork(replace(network, attention=False))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.attention(images)
        return self.hashing(images * mask), mask


@dataclass(frozen=True)
class DAgHLoss(HashLoss):
    stream: GuidingStream
    quantization: float = DPSH_QUANTIZATION_WEIGHT
    attention: float = 0.1

    @property
    def companion(self) -> nn.Module:
        return self.stream

    def attach(self, network: nn.Module) -> None:
        """The first stream starts from the second network's backbone (its pretrained weights, if any)."""
        self.stream.hashing.backbone.load_state_dict(network.backbone.state_dict())

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        if inputs.images is None:
            raise DahpError("DAgH's guiding stream needs the batch's images (LossInputs.images)")
        guide, mask = self.stream(inputs.images)
        guided_codes = torch.sign(guide).detach()
        return weighted_sum({
            "semantic": (1.0, pairwise_nll(guide, guide, similarity(inputs.labels, inputs.labels))),
            "quantization": (self.quantization, quantization_error(guide)),
            "attention": (self.attention, mask.mean()),
            "guidance": (1.0, (inputs.codes - guided_codes).pow(2).mean()),
        })


def _dagh_loss(settings: LossSettings) -> DAgHLoss:
    reject_anchor_weight("dagh", settings)
    reject_quantization_weight("dagh", settings)
    if settings.network is None:
        raise DahpError("method 'dagh' needs the trained network's configuration for its guiding stream")
    return DAgHLoss(GuidingStream(replace(settings.network, bits=settings.bits)))


register_method(Method(
    "dagh", "DAgH", "Yang, Raymond, Sun & Long. Deep attention-guided hashing. IEEE Access 7, 2019",
    build_loss=_dagh_loss, paper_cifar10={12: 0.731, 24: 0.777, 32: 0.809, 48: 0.821},
))
