"""DLBHC ("FastH" in the DAHP paper) — Deep Learning of Binary Hash Codes for fast
image retrieval (Lin, Yang, Hsiao & Chen, CVPR Workshops 2015).

A latent layer of ``c`` sigmoid units between the network and a linear classifier;
the network is trained with the classification loss alone (softmax cross-entropy,
its only objective), and an image's code is its latent activations thresholded at
0.5. Here the latent layer is the hash layer: ``h = σ(f)``, and ``h > 0.5`` exactly
where ``f > 0``, i.e. the package's codes ``sign(f)``. ``activate`` returns
``2h - 1`` (= ``tanh(f / 2)``, sign-preserving) and the loss maps it back to ``h``.
The classifier is the loss's companion module: trained with the network, dropped
after training. Multi-label images take the cross-entropy against their labels'
uniform distribution (for one label, the usual cross-entropy).
Deviations: DLBHC's AlexNet is replaced by the run's backbone, and the network is
trained from the run's initialisation rather than fine-tuned in two stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DahpError
from ..losses import HashLoss, LossInputs, weighted_sum
from .registry import LossSettings, Method, register_method, reject_anchor_weight, reject_quantization_weight


def latent_classification(latent: Tensor, labels: Tensor, classifier: nn.Module) -> Tensor:
    """Softmax cross-entropy of ``classifier(latent)`` against each row's labels, spread uniformly."""
    targets = labels / labels.sum(dim=1, keepdim=True).clamp(min=1)
    return F.cross_entropy(classifier(latent), targets)


@dataclass(frozen=True)
class DLBHCLoss(HashLoss):
    classifier: nn.Linear

    @property
    def companion(self) -> nn.Module:
        return self.classifier

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return 2 * torch.sigmoid(outputs) - 1

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        latent = (inputs.codes + 1) / 2
        return weighted_sum({"classification": (1.0, latent_classification(latent, inputs.labels, self.classifier))})


def _dlbhc_loss(settings: LossSettings) -> DLBHCLoss:
    reject_anchor_weight("dlbhc", settings)
    reject_quantization_weight("dlbhc", settings)
    if not settings.classes:
        raise DahpError("method 'dlbhc' needs the number of classes for its classifier")
    return DLBHCLoss(nn.Linear(settings.bits, settings.classes))


register_method(Method(
    "dlbhc", "DLBHC (FastH)", "Lin, Yang, Hsiao & Chen. Deep learning of binary hash codes for fast image retrieval. "
    "CVPR Workshops 2015", build_loss=_dlbhc_loss,
    paper_cifar10={12: 0.6365, 24: 0.7004, 32: 0.6849, 48: 0.6367},
))
