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
from torch import Tensor, nn


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
class LossInputs:
    """What every hashing loss sees for one batch.

    ``codes`` are the batch's activated outputs (with gradient); ``paired_codes`` and
    ``paired_labels`` are what the batch is paired with: the batch itself, or the memory
    of (detached) codes of the whole training set. ``targets`` are each image's ±1 anchor
    (DAHP) or hash centre (CSQ). ``step`` counts optimiser steps (HashNet's continuation).
    ``images`` are the batch's (augmented) input images, for a loss whose companion
    network sees them too (DAgH's guiding stream).
    """

    codes: Tensor
    labels: Tensor
    targets: Tensor
    paired_codes: Tensor
    paired_labels: Tensor
    step: int = 0
    images: Tensor | None = None

    @property
    def similar(self) -> Tensor:
        """``s_ij`` of each batch image against each image it is paired with."""
        return similarity(self.labels, self.paired_labels)

    @classmethod
    def within_batch(cls, codes: Tensor, labels: Tensor, targets: Tensor, step: int = 0) -> LossInputs:
        return cls(codes, labels, targets, codes, labels, step)


class HashLoss:
    """A method's objective: ``activate`` maps raw outputs to codes, ``__call__`` scores a batch.

    Every loss is a mean over the batch's images (of per-image terms that may sum over
    pairs), so shards of one batch on several processes average to the same value.
    Codes are always ``sign(raw output)``: every ``activate`` must preserve signs.

    A loss may train a *companion* module beside the network (DLBHC's classifier, DAgH's
    guiding stream): the trainer optimises and checkpoints its parameters with the
    network's, and it is dropped after training (encoding needs only the network).
    """

    @property
    def companion(self) -> nn.Module | None:
        return None

    def attach(self, network: nn.Module) -> None:
        """Called once before training with the network being trained (before any resume)."""

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return outputs

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


def batch_pairwise_nll(inputs: LossInputs) -> Tensor:
    """The pairwise likelihood term (eq. 9) of the batch's codes against their pairs: DAHP, DPSH, DHN, DBDH."""
    return pairwise_nll(inputs.codes, inputs.paired_codes, inputs.similar)


def weighted_sum(terms: dict[str, tuple[float, Tensor]]) -> tuple[Tensor, dict[str, float]]:
    """The loss ``Σ weight * value`` and each unweighted value, for the training log."""
    total = sum(weight * value for weight, value in terms.values())
    return total, {name: float(value.detach()) for name, (_, value) in terms.items()}  # type: ignore[return-value]


@dataclass(frozen=True)
class DAHPLoss(HashLoss):
    """The full objective (eq. 10) with DAHP's defaults.

    ``anchor_weight=0, quantization_weight=0.1`` is DPSH's loss (Li et al., IJCAI 2016,
    with the weight of its reference PyTorch code): the ablation DAHP-v1/v2 train with.
    Without either term the outputs can stall at b = 0, where theta = 0 for every pair.
    """

    anchor_weight: float = 0.05
    quantization_weight: float = 0.0

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        codes = inputs.codes
        terms = {"pairwise": (1.0, batch_pairwise_nll(inputs))}
        if self.anchor_weight:
            terms["anchor"] = (self.anchor_weight, anchor_mse(codes, inputs.targets))
        if self.quantization_weight:
            terms["quantization"] = (self.quantization_weight, quantization_error(codes))
        return weighted_sum(terms)
