"""DAHP and its ablations (paper Table III), all trained with ``dahp.losses.DAHPLoss``.

- ``dahp-v1``: ResNet-18 + DPSH's loss (pairwise likelihood + quantisation, no attention);
- ``dahp-v2``: v1 + dual attention;
- ``dahp`` (v3): v2 + the anchor loss (eq. 10, lambda = 0.05 by Table VI).
"""

from __future__ import annotations

from collections.abc import Callable

from ..losses import DAHPLoss
from .registry import LossSettings, Method, quantization_weight, register_method, reject_anchor_weight

DAHP_CITATION = "DAHP: deep attention-guided hashing with pairwise labels (this project's paper)"
DPSH_QUANTIZATION_WEIGHT = 0.1  # eta, in our averaged form: see methods/dpsh.py


def dpsh_loss(method: str) -> Callable[[LossSettings], DAHPLoss]:
    """DPSH's loss builder for ``method`` (DPSH itself and DAHP's v1/v2 ablations)."""

    def build(settings: LossSettings) -> DAHPLoss:
        reject_anchor_weight(method, settings)
        return DAHPLoss(0.0, quantization_weight(settings, DPSH_QUANTIZATION_WEIGHT))

    return build


def _dahp_loss(settings: LossSettings) -> DAHPLoss:
    anchor = 0.05 if settings.anchor_weight is None else settings.anchor_weight
    return DAHPLoss(anchor_weight=anchor, quantization_weight=quantization_weight(settings, 0.0))


register_method(Method(
    "dahp", "DAHP", DAHP_CITATION, build_loss=_dahp_loss, attention=True,
    paper_cifar10={12: 0.8194, 24: 0.8390, 32: 0.8445, 48: 0.8477},
))
register_method(Method(
    "dahp-v1", "DAHP-v1 (ResNet-18 + DPSH loss)", DAHP_CITATION + ", Table III",
    build_loss=dpsh_loss("dahp-v1"), attention=False, paper_cifar10={48: 0.7945},
))
register_method(Method(
    "dahp-v2", "DAHP-v2 (v1 + dual attention)", DAHP_CITATION + ", Table III",
    build_loss=dpsh_loss("dahp-v2"), attention=True, paper_cifar10={48: 0.8273},
))
