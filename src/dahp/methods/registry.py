"""The method registry: a hashing method is one file that registers a ``Method``.

A deep method is a loss (``HashLoss``) plus the network variant it trains (attention
on or off, a fixed backbone or the run's); a shallow method is an estimator on fixed
feature vectors. The benchmark, the CLI and reports all look methods up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..errors import DahpError
from ..losses import HashLoss
from ..models import ModelConfig

PAPER_BITS = (12, 24, 32, 48)
# The rows of the DAHP paper's Table IV, in its order ("Ours" first; FastH is DLBHC).
TABLE_IV = ("dahp", "dbdh", "dagh", "dpsh", "hashnet", "dsh", "dlbhc", "dhn", "sdh", "itq")


class ShallowEncoder(Protocol):
    """What a shallow method builds: scikit-learn style ``fit`` / ``encode`` on feature rows.

    ``labels`` are the training rows' multi-hot labels (n, k); unsupervised methods ignore them."""

    def fit(self, features: np.ndarray, labels: np.ndarray | None = None) -> ShallowEncoder: ...

    def encode(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LossSettings:
    """The code length and the user's loss options; ``None`` means the method's published default.

    ``classes`` (the number of label classes) and ``network`` (the trained network's
    configuration) are for losses with a companion module: a classifier, a second network.
    """

    bits: int
    anchor_weight: float | None = None
    quantization_weight: float | None = None
    classes: int | None = None
    network: ModelConfig | None = None


@dataclass(frozen=True)
class Method:
    """One row of the paper's tables.

    ``paper_cifar10`` maps code length to the mAP@ALL the DAHP paper reports for this
    method on CIFAR-10 (Tables III and IV), printed beside measured figures.
    """

    name: str
    title: str
    citation: str
    build_loss: Callable[[LossSettings], HashLoss] | None = None
    build_shallow: Callable[[int, int], ShallowEncoder] | None = None
    attention: bool = False
    backbone: str | None = None
    paper_cifar10: dict[int, float] = field(default_factory=dict)

    @property
    def deep(self) -> bool:
        return self.build_loss is not None

    def loss(self, settings: LossSettings) -> HashLoss:
        if self.build_loss is None:
            raise DahpError(f"method {self.name!r} is shallow (fixed features): it has no network loss")
        return self.build_loss(settings)

    def model_config(
        self, base: ModelConfig, attention: bool | None = None, shared_backbone: bool = False
    ) -> ModelConfig:
        """``base`` with this method's network variant: its attention setting (unless
        ``attention`` overrides it) and, for a method tied to its own backbone, that
        backbone at its natural output stride (DPSH's AlexNet: 32) -- unless every method
        shares ``base``'s backbone (``shared_backbone``)."""
        changes: dict[str, object] = {"attention": self.attention if attention is None else attention}
        if not shared_backbone and self.backbone is not None and self.backbone != base.backbone:
            changes.update(backbone=self.backbone, output_stride=32, small_stem=False)
        return replace(base, **changes)

    def shallow(self, bits: int, seed: int) -> ShallowEncoder:
        if self.build_shallow is None:
            raise DahpError(f"method {self.name!r} trains a network; it is not a shallow encoder")
        return self.build_shallow(bits, seed)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if (method.build_loss is None) == (method.build_shallow is None):
        raise ValueError(f"method {method.name!r} needs exactly one of build_loss / build_shallow")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise DahpError(f"unknown method {name!r}; valid methods: {', '.join(list_methods())}") from None


def parse_methods(text: str) -> list[Method]:
    """``"dahp,dpsh"``, ``"all"`` (registry order) or ``"table-iv"`` (the paper's ten) -> methods, in order."""
    groups = {"all": list_methods(), "table-iv": list(TABLE_IV)}
    names = groups.get(text.strip()) or [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DahpError(f"--methods: expected comma-separated names, 'all' or 'table-iv'; "
                        f"valid methods: {', '.join(list_methods())}")
    methods = [get_method(name) for name in names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DahpError(f"--methods lists {', '.join(duplicates)} more than once")
    return methods


def reject_anchor_weight(method: str, settings: LossSettings) -> None:
    """Methods without an anchor term refuse an explicit anchor weight instead of ignoring it."""
    if settings.anchor_weight:
        raise DahpError(f"--anchor-weight: method {method!r} has no anchor loss (use dahp, or set it to 0)")


def reject_quantization_weight(method: str, settings: LossSettings) -> None:
    if settings.quantization_weight:
        raise DahpError(f"--quantization-weight: method {method!r} has no quantisation term")


def quantization_weight(settings: LossSettings, default: float) -> float:
    return default if settings.quantization_weight is None else settings.quantization_weight
