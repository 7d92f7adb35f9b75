"""DSH — Deep Supervised Hashing (Liu, Wang, Shan & Chen, CVPR 2016).

Contrastive loss on real-valued outputs: ``½ s D + ½ (1 - s) max(m - D, 0)`` with
``D = ||b_i - b_j||²`` and margin ``m = 2c``, plus ``alpha * || |b| - 1 ||_1`` pulling
outputs to ±1, alpha = 0.01 (the paper's settings). Averaged over pairs and images.
Deviation: pairs against the run's pair source (the training-code memory by default)
instead of DSH's within-batch pairs, and DSH's small CNN replaced by the run's backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import HashLoss, LossInputs, weighted_sum
from .registry import LossSettings, Method, quantization_weight, register_method, reject_anchor_weight


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i - b_j||²`` for all pairs, clamped at 0 against rounding."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp(min=0)


def contrastive(distances: Tensor, similar: Tensor, margin: float) -> Tensor:
    return (0.5 * similar * distances + 0.5 * (1 - similar) * (margin - distances).clamp(min=0)).mean()


def binary_regulariser(codes: Tensor) -> Tensor:
    """Mean over images of ``|| |b| - 1 ||_1``."""
    return (codes.abs() - 1).abs().sum(1).mean()


@dataclass(frozen=True)
class DSHLoss(HashLoss):
    bits: int
    alpha: float = 0.01

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        distances = squared_distances(inputs.codes, inputs.paired_codes)
        return weighted_sum({
            "contrastive": (1.0, contrastive(distances, inputs.similar, margin=2.0 * self.bits)),
            "regulariser": (self.alpha, binary_regulariser(inputs.codes)),
        })


def _dsh_loss(settings: LossSettings) -> DSHLoss:
    reject_anchor_weight("dsh", settings)
    return DSHLoss(settings.bits, alpha=quantization_weight(settings, 0.01))


register_method(Method(
    "dsh", "DSH", "Liu, Wang, Shan & Chen. Deep supervised hashing for fast image retrieval. CVPR 2016",
    build_loss=_dsh_loss, paper_cifar10={12: 0.6914, 24: 0.7577, 32: 0.7683, 48: 0.7761},
))
