"""Networks: a backbone registry, DAHP's dual attention and the hashing network."""

from . import alexnet, efficientnet, resnet  # noqa: F401  (register the backbones)
from .attention import ChannelAttention, DualAttention, PositionAttention
from .hashing import HashingNetwork, ModelConfig
from .registry import create_backbone, list_backbones, register_backbone
from .weights import init_backbone, load_backbone_weights

__all__ = [
    "ChannelAttention",
    "DualAttention",
    "HashingNetwork",
    "ModelConfig",
    "PositionAttention",
    "create_backbone",
    "init_backbone",
    "list_backbones",
    "load_backbone_weights",
    "register_backbone",
]
