"""Data-parallel training under ``torchrun``: the process group and the few collectives training needs.

``torchrun --nproc_per_node N`` starts N copies of the program with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in their environment. Without it (or with N = 1) there is
no process group, the helpers here hand tensors and models back unchanged, and
training is the plain single-process loop.

The collectives keep a run on N processes equal to one process training on the same
global batch: codes are gathered so pairs span the whole batch, and batch
normalisation uses the statistics of the whole batch (``GlobalBatchNorm1d`` / ``2d``).
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel


def launched() -> bool:
    """Whether this process is one of several started by torchrun (read from its environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank; from the environment, so it holds before the group exists and after it is gone."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The rank on this machine, which picks this process's GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 alone writes files and prints, so N processes leave one model file and one log."""
    return rank() == 0


def world_size() -> int:
    """The number of processes sharing each batch: 1 unless a process group is running."""
    return dist.get_world_size() if dist.is_initialized() else 1


def setup(device: torch.device) -> None:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) and leave it at exit.

    Once per process: later calls (several models trained in one program) and plain
    runs do nothing. A group destroyed and created again reuses torchrun's rendezvous
    keys, where a process can meet its peers' stale addresses and hang, so the group
    lives until the interpreter exits.
    """
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(cleanup)


def cleanup() -> None:
    """Destroy the process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank, e.g. while rank 0 writes the model file, so no process exits before it is written."""
    if dist.is_initialized():
        dist.barrier()


def shard_sizes(batch: int, world: int) -> list[int]:
    """Rows of a global batch per rank, in rank order: contiguous, the first ``batch % world`` one larger."""
    return [batch // world + (r < batch % world) for r in range(world)]


class _AllGather(Function):
    """All-gather of equal-shaped tensors whose gradient flows back to every rank's input.

    The backward sums each slice's gradient over ranks (an all-reduce, which gloo and
    NCCL both have, where a reduce-scatter is NCCL-only), so each rank's input gets the
    gradient of the sum of all ranks' losses.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_rows(tensor: Tensor, sizes: Sequence[int]) -> Tensor:
    """Every rank's rows of one global batch, in rank order (``sizes[r]`` rows from rank r).

    Differentiable: with it a shard's codes are paired with the whole batch's and the
    gradient reaches the rank that computed each code. Shards may differ by a row, so
    they travel padded to the largest. Without a process group it returns ``tensor``.
    """
    if not dist.is_initialized():
        return tensor
    padded = torch.cat([tensor, tensor.new_zeros(max(sizes) - len(tensor), *tensor.shape[1:])])
    gathered = _AllGather.apply(padded)
    return torch.cat([gathered[r, :size] for r, size in enumerate(sizes)])


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The element-wise sum over ranks (no gradient), for logged losses; ``tensor`` itself without a group."""
    if not dist.is_initialized():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


class _GlobalBatchNorm(_BatchNorm):
    """Batch normalisation with the mean and variance of the global batch across ranks.

    ``nn.SyncBatchNorm`` does this on GPUs only: in torch 2.x its forward raises
    "SyncBatchNorm expected input tensor to be on GPU" for CPU tensors, so gloo runs
    could not match a single process. Each rank gathers (count, mean, sum of squared
    deviations) per channel and combines them exactly (Chan et al.), which avoids the
    cancellation of ``E[x²] - E[x]²``; the gather back-propagates, so gradients are
    those of the global batch too. Outside training with a process group it is the
    plain layer it extends, with the same state dict, so trained models load without it.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        channel = (-1, *[1] * (x.dim() - 2))  # broadcasts a per-channel vector over (C, ...)
        count = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        squares = (x - mean.view(channel)).pow(2).sum(dim=dims)
        gathered = _AllGather.apply(torch.stack([mean, squares, torch.full_like(mean, count)]))
        means, squares, counts = gathered[:, 0], gathered[:, 1], gathered[:, 2]
        total = counts.sum(dim=0)
        mean = (counts * means).sum(dim=0) / total
        variance = (squares + counts * (means - mean).pow(2)).sum(dim=0) / total
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), total)
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        return (x * scale.view(channel) + shift.view(channel)).to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, variance: Tensor, total: Tensor) -> None:
        """As the plain layer does: an exponential (or, with ``momentum=None``, cumulative)
        average of the mean and of the unbiased variance."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        unbiased = variance * total / (total - 1).clamp(min=1)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """``BatchNorm1d`` with the statistics of the global batch (see ``_GlobalBatchNorm``)."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """``BatchNorm2d`` with the statistics of the global batch (see ``_GlobalBatchNorm``)."""


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def _global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d`` / ``2d`` replaced by its global version, which
    shares its parameters and buffers (an optimiser built on the model sees the same ones)."""
    if type(module) in _GLOBAL:
        assert isinstance(module, _BatchNorm)
        replacement = _GLOBAL[type(module)](
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        replacement.weight, replacement.bias = module.weight, module.bias
        replacement.running_mean, replacement.running_var = module.running_mean, module.running_var
        replacement.num_batches_tracked = module.num_batches_tracked
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        module.add_module(name, _global_batch_norm(child))
    return module


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to call in training: ``model`` itself in a single process; under a
    process group, ``model`` with global batch normalisation (changed in place) inside
    ``DistributedDataParallel``, which averages gradients over ranks after backward.

    The global batch norm serves on GPUs too (rather than ``nn.SyncBatchNorm`` there), so
    the code that runs on every device is the code the CPU tests check.
    """
    if not dist.is_initialized():
        return model
    _global_batch_norm(model)
    # 1x1 convolutions' weight gradients differ from DDP's buckets in the strides of their
    # size-1 dimensions only, which do not matter, but DDP warns about it on every process.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
