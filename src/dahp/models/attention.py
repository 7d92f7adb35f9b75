"""DAHP's dual attention (paper §III-D, eqs. 1-4; the modules of DANet, Fu et al. 2019).

Both modules add their attention output to the input through a learnable scale
(alpha, beta) that starts at 0, so at initialisation each module is the identity and a
pretrained backbone's features pass through untouched until training decides otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PositionAttention(nn.Module):
    """Each position becomes a softmax-weighted sum over all H*W positions (eqs. 1-2)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        reduced = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, reduced, kernel_size=1)
        self.key = nn.Conv2d(channels, reduced, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (n, N, c')
        key = self.key(x).flatten(2)  # (n, c', N)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # S[j, i]: influence of i on j
        value = self.value(x).flatten(2)  # (n, c, N)
        out = torch.bmm(value, attention.transpose(1, 2)).view(n, c, h, w)
        return self.alpha * out + x


class ChannelAttention(nn.Module):
    """Each channel becomes a softmax-weighted sum over all channels (eqs. 3-4).

    The affinity is ``softmax(A Aᵀ)`` as the paper writes it, not DANet code's
    ``softmax(max - A Aᵀ)`` variant.
    """

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        flat = x.flatten(2)  # (n, C, N)
        attention = torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)  # X[j, i]
        out = torch.bmm(attention, flat).view(n, c, h, w)
        return self.beta * out + x


def _fusion_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())


class DualAttention(nn.Module):
    """Position and channel attention in parallel, each transformed by a conv, then summed.

    The transforms are 1x1 conv + BN + ReLU (DANet uses 3x3): on a 512-channel map the
    1x1 keeps the head cheap next to the backbone, which matters on CPUs.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.position = PositionAttention(channels)
        self.channel = ChannelAttention()
        self.position_transform = _fusion_conv(channels)
        self.channel_transform = _fusion_conv(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.position_transform(self.position(x)) + self.channel_transform(self.channel(x))
