"""DHN — Deep Hashing Network (Zhu, Long, Wang & Cao, AAAI 2016).

The pairwise cross-entropy of DPSH's form on the inner products of the real-valued
outputs, ``softplus(θ) - s θ`` with ``θ = ½ z_iᵀ z_j``, plus DHN's smooth quantisation
loss ``λ Σ_k log cosh(|z_k| - 1)``, the log-cosh that replaces the non-smooth
``| |z| - 1 |``. The hash layer is linear (identity activation), as in DHN.
Both terms are means (over pairs, over images and bits), so λ = 0.1 here plays the
role DPSH's η plays in our averaged form.
Deviations: pairs against the run's pair source (the training-code memory by default)
instead of DHN's within-batch pairs, and DHN's AlexNet replaced by the run's backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..losses import HashLoss, LossInputs, batch_pairwise_nll, weighted_sum
from .registry import LossSettings, Method, quantization_weight, register_method, reject_anchor_weight


def log_cosh(values: Tensor) -> Tensor:
    """``log cosh(x)`` as ``|x| + softplus(-2|x|) - log 2``, which never overflows."""
    magnitude = values.abs()
    return magnitude + F.softplus(-2 * magnitude) - math.log(2.0)


def smooth_quantization(codes: Tensor) -> Tensor:
    """Mean over images and bits of ``log cosh(|z| - 1)``: 0 exactly at ±1."""
    return log_cosh(codes.abs() - 1).mean()


@dataclass(frozen=True)
class DHNLoss(HashLoss):
    quantization: float = 0.1

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        return weighted_sum({
            "pairwise": (1.0, batch_pairwise_nll(inputs)),
            "quantization": (self.quantization, smooth_quantization(inputs.codes)),
        })


def _dhn_loss(settings: LossSettings) -> DHNLoss:
    reject_anchor_weight("dhn", settings)
    return DHNLoss(quantization_weight(settings, 0.1))


register_method(Method(
    "dhn", "DHN", "Zhu, Long, Wang & Cao. Deep hashing network for efficient similarity retrieval. AAAI 2016",
    build_loss=_dhn_loss, paper_cifar10={12: 0.5550, 24: 0.5940, 32: 0.6030, 48: 0.6210},
))
