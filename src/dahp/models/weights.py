"""Loading ImageNet weights into a backbone, from a file or a copy already on this machine.

Nothing here downloads: pretrained weights are used only when the user gives a file or
a local copy exists (torchvision's cache, an installed weights package); otherwise the
caller gets random init and a message saying how to get them. Each backbone says where
its copy lives and which state dict it expects in a :class:`PretrainedWeights` attribute,
``pretrained_weights`` (a class attribute, or set per instance by a multi-variant class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..errors import DahpError

TORCHVISION_RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1
TORCHVISION_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1


def _nowhere() -> Path | None:
    return None


@dataclass(frozen=True)
class PretrainedWeights:
    """How a backbone finds and reads its pretrained state dict."""

    description: str
    """The state dict expected, for error messages: ``"torchvision ResNet-18"``."""
    dropped_prefixes: tuple[str, ...] = ()
    """Keys of the classifier the backbone leaves out (``"fc."``)."""
    locate: Callable[[], Path | None] = _nowhere
    """The local copy of the weights, or None when this machine has none; never downloads."""
    how_to_get: str = "pass --weights PATH to use a file"
    """What a user can do to get them, for the random-init message."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    """The input normalisation the weights were trained with: another costs accuracy
    (ImageNet's mean and std cost EfficientNet-Lite0's [-1, 1] weights 5 points of probe accuracy)."""
    image_size: int = 224
    """The resolution they were trained at, the default input size."""

    def preprocess(self, image_size: int | None = None) -> Preprocess:
        """The preprocessing these weights expect, at ``image_size`` (default: their own)."""
        return Preprocess(image_size or self.image_size, self.mean, self.std)


def torchvision_checkpoint(filename: str) -> Path | None:
    """A file in torchvision's download cache (``$TORCH_HOME/hub/checkpoints``) if it is there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None


def torchvision_weights(model: str, title: str, filename: str, classifier: str) -> PretrainedWeights:
    """The spec of a torchvision ImageNet model: the file in its download cache, and how to
    put it there once online (``torchvision.models.<model>(weights='IMAGENET1K_V1')``)."""
    return PretrainedWeights(
        description=f"torchvision {title}",
        dropped_prefixes=(classifier,),
        locate=partial(torchvision_checkpoint, filename),
        how_to_get="pass --weights PATH to use a file, or cache torchvision's once online: "
        f"python -c \"import torchvision; torchvision.models.{model}(weights='IMAGENET1K_V1')\"",
    )


def weights_spec(backbone: nn.Module) -> PretrainedWeights:
    """The backbone's own spec; a backbone without one loads files key for key and has no local copy.

    Read from the instance, so a class covering several variants (EfficientNet-Lite0/1/2)
    can set each one's in ``__init__``; a class attribute serves every instance.
    """
    spec = getattr(backbone, "pretrained_weights", None)
    return spec if isinstance(spec, PretrainedWeights) else PretrainedWeights(type(backbone).__name__)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DahpError(f"--weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DahpError(f"--weights: {path} is not a readable PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DahpError(f"--weights: {path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy a pretrained state dict into ``backbone``; return the keys skipped.

    The classifier the backbone's spec names is dropped and a ``module.`` prefix (from
    DataParallel) stripped; a tensor whose shape differs (the small stem's 3x3 ``conv1``
    against ImageNet's 7x7) is skipped and reported, never silently reshaped.
    """
    spec = weights_spec(backbone)
    own = backbone.state_dict()
    state = {key.removeprefix("module."): value for key, value in state.items()}
    unexpected = sorted(key for key in state if key not in own and not key.startswith(spec.dropped_prefixes))
    missing = sorted(key for key in own if key not in state)
    if unexpected or missing:
        detail = f"unexpected keys {unexpected[:5]}" if unexpected else f"missing keys {missing[:5]}"
        raise DahpError(f"{source} is not a {spec.description} state dict: {detail}")
    skipped = sorted(key for key in own if state[key].shape != own[key].shape)
    usable = {key: state[key] for key in own if key not in skipped}
    backbone.load_state_dict(usable, strict=False)
    return skipped


def init_backbone(backbone: nn.Module, weights: str | None) -> str:
    """Initialise ``backbone`` from ``weights`` (a path, ``"none"`` or ``None`` = auto).

    Returns a one-line description of what was done, for the log and the model file.
    """
    if weights == "none":
        return "random init (--weights none)"
    if weights is None:
        spec = weights_spec(backbone)
        local = spec.locate()
        if local is None:
            return f"random init: no ImageNet weights on this machine ({spec.how_to_get})"
        path = local
    else:
        path = Path(weights)
    skipped = load_backbone_weights(backbone, load_state_dict_file(path), str(path))
    note = f" (skipped {', '.join(skipped)}: shape differs)" if skipped else ""
    return f"ImageNet weights from {path}{note}"
