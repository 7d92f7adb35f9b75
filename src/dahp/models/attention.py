"""DAHP's dual attention (paper §III-D, eqs. 1-4; the modules of DANet, Fu et al. 2019).

Both modules add their attention output to the input through a learnable scale
(alpha, beta) that starts at 0, so at initialisation each module is the identity and a
pretrained backbone's features pass through untouched until training decides otherwise.

Cost on CPUs (the head runs on 4x4 maps for 32-px inputs, 12x12 for 96 px):

* Channel attention is ``softmax(A Aᵀ) A`` over C = 512 tokens of H*W dimensions.
  Written as ``bmm``/``softmax`` it materialises an (n, C, C) matrix (128 MiB for a
  batch of 128) and its gradient; ``scaled_dot_product_attention`` with ``scale=1``
  (the same unscaled softmax) runs CPU's fused flash kernel, which never stores it:
  measured on one thread, 4.6x faster forward and 2.7x with backward at H*W = 16,
  1.6x and 1.2x at H*W = 144.
* Position attention keeps ``bmm``: its queries and keys have C/8 dimensions but its
  values C, which the fused kernel does not take, and SDPA's unfused fallback is the
  same ``bmm``/softmax plus extra scaling and masking passes. Its (n, H*W, H*W) matrix
  is small; its cost is the 1x1 convs, so query, key and value run as one conv (the
  three weights concatenated; the parameters stay separate) on a channels-last map,
  whose (n, H*W, 2C/8 + C) output the two ``bmm`` read without a transpose.
* The two fusion convs also run channels-last, which oneDNN's 1x1 convs prefer: with
  the fused projections, 20% less time for the head at 12x12 (no change at 4x4).

The ONNX exporter traces channel attention's plain ``bmm``/``softmax`` form, which
every opset the exporter supports has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


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
        x = x.contiguous(memory_format=torch.channels_last)  # (n, H, W, C) in memory: positions x channels
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # one 1x1 conv for all three
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        tokens = F.conv2d(x, weight, bias).permute(0, 2, 3, 1).reshape(n, h * w, -1)  # (n, N, 2c' + C), a view
        reduced = self.query.out_channels
        query, key, value = tokens.split([reduced, reduced, c], dim=-1)  # (n, N, c'), (n, N, c'), (n, N, C)
        attention = torch.softmax(torch.bmm(query, key.transpose(1, 2)), dim=-1)  # S[j, i]: influence of i on j
        out = torch.bmm(attention, value).view(n, h, w, c).permute(0, 3, 1, 2)  # channels-last like x
        return torch.addcmul(x, self.alpha, out)  # x + alpha * out in one pass


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
        # (n, C, N): C tokens of N = H*W dimensions. Contiguous: from a channels-last map (an
        # inference_copy's backbone) flatten gives stride-1 tokens across C, and SDPA then falls
        # back to its unfused math path, 4x slower on Lite0's 1280 channels; NCHW input is not copied.
        flat = x.flatten(2).contiguous()
        if _exporting():
            attention = torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)  # X[j, i]
            out = torch.bmm(attention, flat)
        else:  # the same softmax(A Aᵀ) A, without materialising the (n, C, C) matrix
            out = F.scaled_dot_product_attention(flat, flat, flat, scale=1.0)
        return torch.addcmul(x, self.beta, out.view(n, c, h, w))


def _fusion_conv(channels: int, residual: bool) -> nn.Sequential:
    conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
    norm = nn.BatchNorm2d(channels)
    if residual:  # a residual branch that starts at 0 (its BN's scale at 0, as ResNets' last BN in a block)
        nn.init.zeros_(norm.weight)
        return nn.Sequential(conv, norm)
    # ReLU in place on BN's output (BN's backward reads its input): one (n, C, H, W) buffer less
    return nn.Sequential(conv, norm, nn.ReLU(inplace=True))


class DualAttention(nn.Module):
    """Position and channel attention in parallel, each transformed by a conv, then summed.

    The transforms are 1x1 conv + BN + ReLU (DANet uses 3x3): on a 512-channel map the
    1x1 keeps the head cheap next to the backbone, which matters on CPUs.

    With ``residual=True`` the sum is added to the input, ``relu(x + T_p(P(x)) + T_c(C(x)))``,
    and each transform is conv + BN with the BN's scale starting at 0. Why: alpha = beta = 0
    make the two attention modules the identity at initialisation, but the plain fusion still
    passes the features through two randomly initialised convs. The residual form starts as
    the identity on the non-negative maps it receives (every backbone and the reduction end in
    a ReLU) and learns the fusion from there. Measured at the ``cpu-transfer`` recipe of 2026-12-06 (every backbone stage fine-tuned), where the
    attention cost 0.023 mAP (Table III's v2 against v1): DAHP 0.7692 with it, 0.7645 without
    (one run each; docs/retrieval-quality.md).
    """

    def __init__(self, channels: int, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.position = PositionAttention(channels)
        self.channel = ChannelAttention()
        self.position_transform = _fusion_conv(channels, residual)
        self.channel_transform = _fusion_conv(channels, residual)

    def forward(self, x: Tensor) -> Tensor:
        channel = self.channel(x).contiguous(memory_format=torch.channels_last)  # as the position branch's output
        fused = self.position_transform(self.position(x)) + self.channel_transform(channel)
        return F.relu(fused.add_(x), inplace=True) if self.residual else fused
