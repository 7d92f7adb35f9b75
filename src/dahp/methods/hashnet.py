"""HashNet — Deep Learning to Hash by Continuation (Cao, Long, Wang & Yu, ICCV 2017).

Codes ``z = tanh(beta * f)`` with the continuation ``beta_t = sqrt(1 + 0.005 t)`` over
optimiser steps ``t`` (HashNet's schedule, updated every step here instead of every 200);
the weighted pairwise cross-entropy on ``alpha <z_i, z_j>`` with ``alpha = 10 / bits``
(its reference code's sigmoid parameter), similar and dissimilar pairs re-weighted to
equal total weight (its class-imbalance weights ``|S| / |S1|`` and ``|S| / |S0|``).
Deviation: pairs are formed against the run's pair source (the training-code memory by
default) rather than HashNet's two-stream batch, the same as every pairwise method here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DahpError
from ..losses import HashLoss, LossInputs, weighted_sum
from .registry import LossSettings, Method, register_method, reject_anchor_weight


def balanced_pairwise_cross_entropy(inner: Tensor, similar: Tensor) -> Tensor:
    """Mean loss over similar pairs plus mean over dissimilar pairs (a side with no pair adds 0)."""
    losses = F.softplus(inner) - similar * inner
    positives, negatives = similar.sum(), (1 - similar).sum()
    return (losses * similar).sum() / positives.clamp(min=1) + (losses * (1 - similar)).sum() / negatives.clamp(min=1)


@dataclass(frozen=True)
class HashNetLoss(HashLoss):
    bits: int
    gamma: float = 0.005

    def scale(self, step: int) -> float:
        return math.sqrt(1.0 + self.gamma * step)

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return torch.tanh(self.scale(step) * outputs)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        inner = (10.0 / self.bits) * inputs.codes @ inputs.paired_codes.T
        return weighted_sum({"pairwise": (1.0, balanced_pairwise_cross_entropy(inner, inputs.similar))})


def _hashnet_loss(settings: LossSettings) -> HashNetLoss:
    reject_anchor_weight("hashnet", settings)
    if settings.quantization_weight:
        raise DahpError("--quantization-weight: HashNet has no quantisation term (its continuation replaces one)")
    return HashNetLoss(settings.bits)


register_method(Method(
    "hashnet", "HashNet", "Cao, Long, Wang & Yu. HashNet: deep learning to hash by continuation. ICCV 2017",
    build_loss=_hashnet_loss, paper_cifar10={12: 0.7210, 24: 0.7632, 32: 0.7535, 48: 0.7489},
))
