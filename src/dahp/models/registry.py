"""Backbone registry: adding a backbone is one decorated constructor."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import DahpError

BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs: object) -> nn.Module:
    """Build a registered backbone; it exposes ``out_channels`` and returns a feature map."""
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise DahpError(f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}") from None
    return factory(**kwargs)
