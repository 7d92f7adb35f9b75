"""DBDH — Deep Balanced Discrete Hashing (Zheng, Zhang & Lu, Neurocomputing 2020).

The network's codes are discrete during training: the forward pass uses
``b = sign(u)`` and the backward pass the straight-through estimator (the gradient
of ``b`` is passed to ``u`` unchanged), so no continuous relaxation and no
quantisation loss is needed. The pairwise likelihood is the DPSH form on those codes,
``softplus(θ) - s θ`` with ``θ = ½ b_iᵀ b_j``, and a balance term
``β · mean_k (mean_i b_ik)²`` pushes every bit to be +1 on half of the batch
(β = 0.1 in our averaged form).
Deviations: pairs against the run's pair source (the memory holds the discrete codes
of the training set) and the run's backbone in place of DBDH's.

Known behaviour: while the codes carry no class information the pairwise likelihood
pulls every code towards 0 (``θ = 0`` scores log 2, random ±1 codes about 1.56). The
straight-through gradient follows that pull into the outputs' scale, not their signs,
until each bit's offset decides its sign for every image and the codes collapse;
``benchmarks/ste_probe.py`` shows it on synthetic clusters beside the same loss on
``clamp(u, -1, 1)``, which learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import HashLoss, LossInputs, batch_pairwise_nll, weighted_sum
from .registry import LossSettings, Method, register_method, reject_anchor_weight, reject_quantization_weight


def straight_through_sign(outputs: Tensor) -> Tensor:
    """``sign(u)`` forward, identity backward."""
    return outputs + (torch.sign(outputs) - outputs).detach()


def bit_balance(codes: Tensor) -> Tensor:
    """Mean over bits of the squared batch mean of each bit: 0 when every bit is half +1."""
    return codes.mean(dim=0).pow(2).mean()


@dataclass(frozen=True)
class DBDHLoss(HashLoss):
    balance: float = 0.1

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return straight_through_sign(outputs)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        return weighted_sum({
            "pairwise": (1.0, batch_pairwise_nll(inputs)),
            "balance": (self.balance, bit_balance(inputs.codes)),
        })


def _dbdh_loss(settings: LossSettings) -> DBDHLoss:
    reject_anchor_weight("dbdh", settings)
    reject_quantization_weight("dbdh", settings)  # its codes are discrete: there is nothing to quantise
    return DBDHLoss()


register_method(Method(
    "dbdh", "DBDH", "Zheng, Zhang & Lu. Deep balanced discrete hashing for image retrieval. Neurocomputing 2020",
    build_loss=_dbdh_loss, paper_cifar10={12: 0.7266, 24: 0.7356, 32: 0.7427, 48: 0.7483},
))
