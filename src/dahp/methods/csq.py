"""CSQ — Central Similarity Quantization (Yuan et al., CVPR 2020).

Codes ``u = tanh(f)`` are pulled to their class's hash centre by a per-bit binary
cross-entropy between ``(u + 1) / 2`` and ``(centre + 1) / 2`` (torch clamps its logs at
-100, as CSQ's reference ``BCELoss`` does), plus
``lambda * mean((|u| - 1)²)`` with lambda = 1e-4 (its reference setting).
Deviation: the centres are the same anchors DAHP uses (``dahp.anchors``: Hadamard rows
when k ≤ 2c as CSQ does for powers of two, otherwise a code with a guaranteed minimum
distance instead of CSQ's Bernoulli samples), so DAHP against CSQ compares the losses,
not the centres; multi-label images take the sign of their centres' sum (DAHP's rule)
instead of CSQ's mean centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import HashLoss, LossInputs, weighted_sum
from .registry import LossSettings, Method, quantization_weight, register_method, reject_anchor_weight


def central_similarity(codes: Tensor, centres: Tensor) -> Tensor:
    """Mean per-bit BCE of ``(codes + 1) / 2`` against ``(centres + 1) / 2``; codes in [-1, 1]."""
    return F.binary_cross_entropy((codes + 1) / 2, (centres + 1) / 2)


@dataclass(frozen=True)
class CSQLoss(HashLoss):
    quantization: float = 1e-4

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return torch.tanh(outputs)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        codes = inputs.codes
        return weighted_sum({
            "central": (1.0, central_similarity(codes, inputs.targets)),
            "quantization": (self.quantization, (codes.abs() - 1).pow(2).mean()),
        })


def _csq_loss(settings: LossSettings) -> CSQLoss:
    reject_anchor_weight("csq", settings)
    return CSQLoss(quantization_weight(settings, 1e-4))


register_method(Method(
    "csq", "CSQ", "Yuan, Wang, Zhang, Feng, Tay, Feng & Zhang. Central similarity quantization for efficient "
    "image and video retrieval. CVPR 2020", build_loss=_csq_loss,
))
