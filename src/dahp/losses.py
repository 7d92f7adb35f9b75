"""DAHP's objective (paper eq. 10): pairwise likelihood plus lambda times the anchor loss.

Pairwise term: for a labelled pair (i, j) with ``theta_ij = ½ b_iᵀ b_j``, the negative
log-likelihood of ``s_ij`` is ``log(1 + e^theta) - s_ij * theta`` (eq. 9). It is computed
as ``softplus(theta) - s * theta``, which never overflows (``theta`` reaches ±c/2 and
beyond because b is unbounded), and averaged over pairs so the learning rate does not
depend on the batch size.

Anchor term: ``(1/n) Σ_i ||m_{y_i} - b_i||²``, the squared distance to the image's anchor
(sum over bits, mean over images), with ``m`` in {-1, +1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """``s_ij`` = 1 where two multi-hot label rows share at least one label."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def pairwise_nll(codes_a: Tensor, codes_b: Tensor, similar: Tensor) -> Tensor:
    """Mean over all (a, b) pairs of ``softplus(½ aᵀb) - s * ½ aᵀb``."""
    theta = 0.5 * codes_a @ codes_b.T
    return (F.softplus(theta) - similar * theta).mean()


def anchor_targets(labels: Tensor, anchors: Tensor, tie_breaker: Tensor) -> Tensor:
    """Each image's anchor in {-1, +1}: the anchor of its class, or for several labels
    the sign of the sum of their anchors, with a zero sum settled by ``tie_breaker``.

    ``labels`` is (n, k) multi-hot, ``anchors`` (k, c) in ±1, ``tie_breaker`` (c,) in ±1.
    Sums of ±1 are integers, so adding half the tie-breaker only decides the zeros.
    """
    summed = labels.to(anchors.dtype) @ anchors
    return torch.sign(summed + 0.5 * tie_breaker)


def anchor_mse(codes: Tensor, targets: Tensor) -> Tensor:
    return (codes - targets).pow(2).sum(dim=1).mean()


def quantization_error(codes: Tensor) -> Tensor:
    """DPSH's ``||b - sign(b)||²`` per element, as its reference code averages it."""
    return (codes - torch.sign(codes).detach()).pow(2).mean()


@dataclass(frozen=True)
class DAHPLoss:
    """The full objective (eq. 10) with DAHP's defaults.

    ``anchor_weight=0, quantization_weight=0.1`` is DPSH's loss (Li et al., IJCAI 2016,
    with the weight of its reference PyTorch code): the ablation DAHP-v1/v2 train with.
    Without either term the outputs can stall at b = 0, where theta = 0 for every pair.
    """

    anchor_weight: float = 0.05
    quantization_weight: float = 0.0

    def __call__(
        self,
        codes: Tensor,
        labels: Tensor,
        targets: Tensor,
        memory_codes: Tensor | None = None,
        memory_labels: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss for a batch; pairs are batch x batch, or batch x memory when one is given.

        The memory holds (detached) codes of the whole training set, DPSH's reference
        setup: every step then sees every class, not only those in the batch.
        """
        if memory_codes is None:
            pairwise = pairwise_nll(codes, codes, similarity(labels, labels))
        else:
            assert memory_labels is not None
            pairwise = pairwise_nll(codes, memory_codes, similarity(labels, memory_labels))
        loss = pairwise
        parts = {"pairwise": float(pairwise.detach())}
        if self.anchor_weight:
            anchor = anchor_mse(codes, targets)
            loss = loss + self.anchor_weight * anchor
            parts["anchor"] = float(anchor.detach())
        if self.quantization_weight:
            quantization = quantization_error(codes)
            loss = loss + self.quantization_weight * quantization
            parts["quantization"] = float(quantization.detach())
        return loss, parts
