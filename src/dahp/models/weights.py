"""Loading ImageNet weights into the backbone, from a file or torchvision's local cache.

Nothing here downloads: pretrained weights are used only when the user gives a file
or torchvision has already cached them; otherwise the caller gets random init and
a message saying so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DahpError

TORCHVISION_RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1


def torchvision_cached_weights() -> Path | None:
    """torchvision's ResNet-18 ImageNet file if it is already on this machine."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_RESNET18_FILE
    return path if path.is_file() else None


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
    """Copy a torchvision ResNet-18 state dict into ``backbone``; return the keys skipped.

    The classifier (``fc.*``) is dropped; a tensor whose shape differs (the small stem's
    3x3 ``conv1`` against ImageNet's 7x7) is skipped and reported, never silently reshaped.
    """
    own = backbone.state_dict()
    state = {key.removeprefix("module."): value for key, value in state.items()}
    unexpected = sorted(key for key in state if key not in own and not key.startswith("fc."))
    missing = sorted(key for key in own if key not in state)
    if unexpected or missing:
        detail = f"unexpected keys {unexpected[:5]}" if unexpected else f"missing keys {missing[:5]}"
        raise DahpError(f"{source} is not a torchvision ResNet-18 state dict: {detail}")
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
        cached = torchvision_cached_weights()
        if cached is None:
            return "random init: no ImageNet weights on this machine (pass --weights PATH to use a file)"
        path = cached
    else:
        path = Path(weights)
    skipped = load_backbone_weights(backbone, load_state_dict_file(path), str(path))
    note = f" (skipped {', '.join(skipped)}: shape differs)" if skipped else ""
    return f"ImageNet weights from {path}{note}"
