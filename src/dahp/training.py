"""The training loop: one epoch at a time, an atomic checkpoint after each.

Reproducibility on CPU: the network is initialised from ``seed``, and epoch ``e``
visits the training images in a permutation drawn from ``(seed, e)`` alone, so a run
resumed from the checkpoint of epoch ``e`` replays epochs ``e+1...`` exactly as an
uninterrupted run would (the checkpoint also holds optimiser, schedule and memory).

Under ``torchrun --nproc_per_node N`` (``dahp.distributed``) ``batch_size`` is the global
batch: every process walks the same order, takes a contiguous shard of each batch, and
the run equals one process training on the whole batch, up to float rounding (pairs
span the whole batch, batch normalisation uses its statistics, and each shard's loss is
weighted by its share of the batch). Rank 0 alone writes checkpoints and shows progress.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .data import ImageCollection, Preprocess, iterate_batches
from .errors import DahpError
from .losses import LossInputs, anchor_targets
from .methods import LossSettings, get_method
from .models import ModelConfig
from .models.inference import inference_copy
from .serialization import load_file, reading, save_file

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
PAIR_MODES = ("memory", "batch")
AUGMENTATIONS = ("none", "flip", "flip-crop", "resized-crop")
RESIZED_CROP_AREA = (0.35, 1.0)  # of the image, as torchvision's RandomResizedCrop draws it
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the paper's (§IV-A: SGD, batch 128, lr 0.04);
    the paper gives no schedule or weight decay, so those default to none / DPSH's 1e-5.

    ``method`` names the loss (``dahp.methods``); ``anchor_weight`` and
    ``quantization_weight`` left at ``None`` take that method's published values.

    Transfer learning from a pretrained backbone (all off by default, as in the paper):
    ``frozen_epochs`` first train only the new layers (attention and head) on the frozen
    backbone's features, so their random initial gradients never reach the pretrained
    weights; ``backbone_lr_scale`` then fine-tunes the backbone at ``lr`` times that scale;
    ``min_steps`` raises the epochs so a small training set still gets that many
    optimiser steps (:meth:`sized_for`): 4 epochs of 200 images are 8 steps.
    ``micro_batch_size`` runs each batch's forward and backward passes in chunks of that
    many images and adds up their gradients before the one optimiser step: on a CPU a
    smaller chunk's activations stay in cache and need fewer fresh pages, so the same step
    runs faster (docs/retrieval-quality.md). It is the whole batch's step up to two things:
    layers that normalise by batch statistics (the hash outputs' BatchNorm; the backbone's
    too unless ``frozen_batch_norm``) see each chunk's, and the memory of training codes
    holds the later chunks' codes from their previous visit. Pairs within a batch need the
    whole batch at once, so it needs ``pairs="memory"``, and one process.
    ``frozen_batch_norm`` keeps the backbone's BatchNorm layers in eval mode while it is
    fine-tuned: their running statistics stay the pretrained ones (their scale and shift
    still train), so the first fine-tuning step sees the features the head learned on. The
    backbone's updates still move them, and without batch statistics to normalise its
    gradients a rate that suits BatchNorm in training mode can wreck them (measured in
    docs/retrieval-quality.md: better on 5,000 CIFAR-10 images, far worse on 200).
    ``frozen_stages`` keeps the backbone's first that many stages (the stem counts as one;
    EfficientNet-Lite has 9, ResNet-18 and AlexNet 5) at their pretrained weights and BatchNorm
    statistics for the whole run: no gradient flows into them, so every step skips their
    backward pass, the costliest part of fine-tuning at high resolution, where they run.
    """

    method: str = "dahp"
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 1e-5
    optimizer: str = "sgd"
    schedule: str = "constant"
    anchor_weight: float | None = None
    quantization_weight: float | None = None
    pairs: str = "memory"
    augment: str = "none"
    seed: int = 0
    workers: int = 0
    frozen_epochs: int = 0
    backbone_lr_scale: float = 1.0
    frozen_batch_norm: bool = False
    min_steps: int = 0
    micro_batch_size: int | None = None
    frozen_stages: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            ((self.anchor_weight or 0) >= 0, f"--anchor-weight must be >= 0, got {self.anchor_weight}"),
            ((self.quantization_weight or 0) >= 0, f"--quantization-weight must be >= 0, got {self.quantization_weight}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.pairs in PAIR_MODES, f"--pairs must be one of {PAIR_MODES}, got {self.pairs!r}"),
            (self.augment in AUGMENTATIONS, f"--augment must be one of {AUGMENTATIONS}, got {self.augment!r}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (0 <= self.frozen_epochs < self.epochs,
             f"--frozen-epochs must be >= 0 and below --epochs ({self.epochs}), got {self.frozen_epochs}"),
            (self.backbone_lr_scale >= 0 and math.isfinite(self.backbone_lr_scale),
             f"--backbone-lr-scale must be a number >= 0, got {self.backbone_lr_scale}"),
            (self.min_steps >= 0, f"--min-steps must be >= 0, got {self.min_steps}"),
            (self.frozen_stages >= 0, f"--frozen-stages must be >= 0, got {self.frozen_stages}"),
            (self.micro_batch_size is None or 2 <= self.micro_batch_size <= self.batch_size,
             f"--micro-batch-size must be >= 2 and at most --batch-size ({self.batch_size}), got {self.micro_batch_size}"),
            (self.micro_batch_size in (None, self.batch_size) or self.pairs == "memory",
             f"--micro-batch-size needs --pairs memory (pairs within a batch need the whole batch), got --pairs {self.pairs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DahpError(message)
        if not get_method(self.method).deep:
            raise DahpError(f"--method {self.method} works on fixed features; it does not train a network")

    def steps_per_epoch(self, images: int) -> int:
        """Optimiser steps in one epoch of ``images`` (a last batch of one image is dropped)."""
        return max(1, images // self.batch_size + (images % self.batch_size >= 2))

    def sized_for(self, images: int) -> TrainConfig:
        """These settings for a training set of ``images``: epochs raised to give ``min_steps``
        steps, and the frozen epochs scaled with them (the same share of the run)."""
        epochs = max(self.epochs, math.ceil(self.min_steps / self.steps_per_epoch(images)))
        if epochs == self.epochs:
            return self
        return replace(self, epochs=epochs, frozen_epochs=self.frozen_epochs * epochs // self.epochs)

    def loss_settings(self, bits: int, classes: int | None = None, network: ModelConfig | None = None) -> LossSettings:
        return LossSettings(bits, self.anchor_weight, self.quantization_weight, classes, network)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TrainingDiverged(DahpError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names; under torchrun a CUDA device is this process's own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DahpError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DahpError("--device cuda was asked for but no CUDA device is available")
    if device.type == "cuda" and distributed.launched():
        return torch.device("cuda", distributed.local_rank())
    return device


def _optimizer(backbone: list[nn.Parameter], new: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The backbone's parameters at ``lr * backbone_lr_scale``, the new layers' at ``lr``."""
    groups = [{"params": backbone, "lr": config.lr * config.backbone_lr_scale}, {"params": new, "lr": config.lr}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine to 0, or x0.1 at 50% and 75% of the epochs."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        milestones = [config.epochs // 2, (3 * config.epochs) // 4]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def augment_batch(
    images: torch.Tensor, mode: str, generator: torch.Generator, rows: slice | None = None, batch: int | None = None
) -> torch.Tensor:
    """Random horizontal flips (``flip``), plus random crops from a zero-padded image
    (padding 1/8 of the side, CIFAR's usual 4 px at 32 px) for ``flip-crop``, or plus a
    random-resized crop for ``resized-crop``: a window of 35–100% of the area and aspect
    3:4–4:3 scaled back to the full size (torchvision's RandomResizedCrop, narrower than its
    8–100% so the object stays in view). The stronger one needs more epochs: at the
    ``cpu-transfer`` recipe's 14 it underfit CIFAR-10 and scored 0.019 below ``flip-crop``
    (docs/retrieval-quality.md).

    ``images`` may be the ``rows`` of a batch of ``batch`` images (one process's shard):
    the draws are made for the whole batch, so every image gets the same flip and crop
    as when one process augments the whole batch.
    Zero padding happens after normalisation, i.e. it pads with the mean colour.
    """
    if mode == "none":
        return images
    n, _, height, width = images.shape
    rows, batch = rows or slice(0, n), batch or n
    flip = (torch.rand(batch, generator=generator) < 0.5)[rows]
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if mode == "flip":
        return images
    if mode == "resized-crop":
        return resized_crops(images, torch.rand(batch, 4, generator=generator)[rows])
    pad = max(1, height // 8)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)[rows].tolist()
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)])


def resized_crops(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Each image's crop, from four uniform draws per image (area, aspect, x, y), resampled
    bilinearly to the image's size in one batched ``grid_sample``."""
    low, high = RESIZED_CROP_AREA
    area = low + (high - low) * draws[:, 0]
    log_low, log_high = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[:, 1])
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = width, height  # in [-1, 1] coordinates: a fraction of the side
    theta[:, 0, 2] = (2 * draws[:, 2] - 1) * (1 - width)
    theta[:, 1, 2] = (2 * draws[:, 3] - 1) * (1 - height)
    grid = nn.functional.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return nn.functional.grid_sample(
        images, grid.to(images.device), mode="bilinear", padding_mode="border", align_corners=False
    )


def _fixed_stages(backbone: nn.Module | None, count: int) -> list[nn.Module]:
    """The first ``count`` stages of ``backbone`` (its ``stages()``), checked to exist."""
    if not count:
        return []
    stages = getattr(backbone, "stages", None)
    if stages is None:
        raise DahpError("--frozen-stages needs a network whose backbone lists its stages "
                        f"(ResNet-18, AlexNet, EfficientNet-Lite), got {type(backbone).__name__}")
    available = stages()
    if count > len(available):
        raise DahpError(f"--frozen-stages must be at most {len(available)} (the stages of this backbone, "
                        f"the stem counting as one), got {count}")
    return available[:count]


def keep_batch_norm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer inside ``module`` in eval mode: it normalises by its running
    statistics and stops updating them, while the rest of ``module`` stays in training mode."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


@dataclass
class Trainer:
    """Trains a hashing network against anchors on one collection; checkpoints each epoch.

    Under torchrun it joins the process group (``dahp.distributed.setup``, which leaves
    it at exit). HashNet is the one loss that is then not exactly the single-process
    one: its class-balance weights count the similar and dissimilar pairs of each
    process's shard, not of the whole batch. A loss with a companion module (DLBHC's
    classifier, DAgH's guiding stream) trains it with the network's optimiser and
    keeps it in the checkpoint; such losses run in one process only (the companion is
    not wrapped for DDP, so its gradients would not be averaged).

    On a CPU the network and its batches are kept channels-last (NHWC) unless
    ``channels_last=False``: the same training, faster; the model it leaves behind keeps
    that layout, which loading, saving and encoding do not depend on.
    """

    model: nn.Module
    anchors: torch.Tensor  # (k, c) in ±1
    preprocess: Preprocess
    config: TrainConfig
    device: torch.device
    checkpoint_path: Path | None = None
    checkpoint_header: dict[str, Any] | None = None
    progress: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        distributed.setup(self.device)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if self.config.batch_size < self.world:
            raise DahpError(f"--batch-size is the global batch, split over the {self.world} processes; "
                            f"it must be at least {self.world}, got {self.config.batch_size}")
        self.model.to(self.device)
        # oneDNN's CPU convolutions run their backward passes faster on NHWC tensors: 1.4x for
        # the pretrained recipe's training step (benchmarks/micro_batches.py --layouts).
        self.memory_format = torch.channels_last if self.channels_last and self.device.type == "cpu" else None
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
        backbone = getattr(self.model, "backbone", None)
        self.fixed_stages = _fixed_stages(backbone, self.config.frozen_stages)
        for stage in self.fixed_stages:  # before DDP, which syncs the gradients of what requires them
            stage.requires_grad_(False)
        self.network = distributed.wrap_model(self.model, self.device)  # self.model itself in one process
        settings = self.config.loss_settings(self.anchors.shape[1], self.anchors.shape[0], getattr(self.model, "config", None))
        self.loss = get_method(self.config.method).loss(settings)
        self.companion = self.loss.companion
        in_backbone_all = list(backbone.parameters()) if backbone is not None else []
        backbone_parameters = [parameter for parameter in in_backbone_all if parameter.requires_grad]
        in_backbone = {id(parameter) for parameter in in_backbone_all}
        parameters = [p for p in self.model.parameters() if id(p) not in in_backbone]
        if self.config.micro_batch_size is not None and self.world > 1:
            raise DahpError("--micro-batch-size trains in one process; under torchrun leave it out")
        if self.config.frozen_epochs and (backbone is None or self.world > 1):
            raise DahpError("--frozen-epochs needs a network with a backbone, trained in one process (not under torchrun)")
        if self.companion is not None:
            if self.world > 1:
                raise DahpError(f"--method {self.config.method} trains a companion module beside the network, "
                                "which is not supported under torchrun; train it in one process")
            self.companion.to(self.device)
            self.loss.attach(self.model)
            parameters += list(self.companion.parameters())
        self.optimizer = _optimizer(backbone_parameters, parameters, self.config)
        self.scheduler = _scheduler(self.optimizer, self.config)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.memory: torch.Tensor | None = None
        tie_rng = np.random.default_rng([self.config.seed, 1])
        self.tie_breaker = torch.from_numpy(tie_rng.choice([-1.0, 1.0], size=self.anchors.shape[1])).float()
        self.amp = self.device.type == "cuda"
        self.progress = self.progress and distributed.is_main_process()

    def fit(self, data: ImageCollection) -> list[dict[str, float]]:
        if data.num_classes != self.anchors.shape[0]:
            raise DahpError(f"data has {data.num_classes} classes but there are {self.anchors.shape[0]} anchors")
        labels = torch.from_numpy(data.labels).float().to(self.device)
        targets = anchor_targets(labels, self.anchors.to(self.device), self.tie_breaker.to(self.device))
        if self.config.pairs == "memory" and self.memory is None:
            self.memory = torch.zeros(len(data), self.anchors.shape[1], device=self.device)
        for epoch in range(self.start_epoch, self.config.epochs):
            self._run_epoch(epoch, data, labels, targets)
            self.scheduler.step()
            if self.checkpoint_path is not None and distributed.is_main_process():
                self.save_checkpoint(epoch + 1)
        return self.history

    def _shards(self, order: np.ndarray) -> tuple[list[tuple[np.ndarray, list[int], slice]], np.ndarray]:
        """The epoch's global batches with their shard sizes and this rank's rows, and this
        rank's shards end to end (the images it loads).

        BatchNorm cannot train on one image, nor can a process on none, so a last batch of
        fewer than ``max(2, world)`` images is dropped (its images come again next epoch).
        A partial last batch never gives a rank more rows than a full one, so fixed-size
        chunks of this rank's shards end to end are exactly its shards.
        """
        batches = [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        if len(batches[-1]) < max(2, self.world):
            batches.pop()
        plan = []
        for batch in batches:
            sizes = distributed.shard_sizes(len(batch), self.world)
            start = sum(sizes[: self.rank])
            plan.append((batch, sizes, slice(start, start + sizes[self.rank])))
        return plan, np.concatenate([batch[rows] for batch, _, rows in plan]) if plan else order[:0]

    def _run_epoch(self, epoch: int, data: ImageCollection, labels: torch.Tensor, targets: torch.Tensor) -> None:
        frozen = epoch < self.config.frozen_epochs
        self.network.train()
        frozen_backbone = None
        if frozen:  # pretrained BatchNorm statistics stay as they are while the head learns
            self.model.backbone.eval()
            frozen_backbone = inference_copy(self.model.backbone)  # the same features, about 2x faster
        elif self.config.frozen_batch_norm:  # and while the backbone is fine-tuned: its features stay comparable
            keep_batch_norm_statistics(self.model.backbone)
        for stage in self.fixed_stages:
            stage.eval()
        if self.companion is not None:
            self.companion.train()
        plan, mine = self._shards(epoch_order(len(data), self.config.seed, epoch))
        totals: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        bar = tqdm(
            total=len(data), desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="img",
            disable=not self.progress, leave=False,
        )
        shard_size = plan[0][1][self.rank] if plan else 1
        shards = iterate_batches(data, mine, shard_size, self.preprocess, self.config.workers)
        steps_per_epoch = math.ceil(len(data) / self.config.batch_size)
        for step, ((batch, sizes, rows), (images, indices)) in enumerate(zip(plan, shards)):
            global_step = epoch * steps_per_epoch + step
            if self.config.augment != "none":  # drawn from (seed, step) alone, so a resumed run replays it
                step_seed = int(np.random.default_rng([self.config.seed, 2, global_step]).integers(2**62))
                images = augment_batch(
                    images, self.config.augment, torch.Generator().manual_seed(step_seed), rows, len(batch)
                )
            images = images.to(self.device, non_blocking=True)
            if self.memory_format is not None:
                images = images.contiguous(memory_format=self.memory_format)
            self.optimizer.zero_grad(set_to_none=True)
            values: dict[str, float] = {}
            for chunk in self._chunks(len(indices)):
                loss, parts = self._loss(images[chunk], indices[chunk], batch, sizes, labels, targets, global_step,
                                         frozen_backbone)
                # Losses are means over images, so the chunks' and ranks' losses weighted by their
                # share of the batch add up to the batch's mean loss (logged below). DDP averages
                # the gradients over ranks, hence the extra factor world: the step is the batch's.
                share = len(indices[chunk]) / len(batch)
                logged = torch.tensor([*parts.values(), float(loss.detach())], dtype=torch.float64, device=self.device)
                for name, value in zip([*parts, "loss"], distributed.sum_over_ranks(logged * share).tolist()):
                    values[name] = values.get(name, 0.0) + value
                if not math.isfinite(values["loss"]):
                    bar.close()
                    kept = f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path else "no checkpoint"
                    raise TrainingDiverged(
                        f"loss became {values['loss']} at epoch {epoch + 1}, step {step + 1}; training stopped, "
                        f"{kept} (untouched); try a lower --lr"
                    )
                (loss * (share * self.world)).backward()
            self.optimizer.step()
            seen += len(batch)
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value * len(batch)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
        bar.close()
        seconds = time.perf_counter() - started
        record = {name: total / seen for name, total in totals.items()}
        record.update(epoch=epoch + 1, seconds=seconds, images_per_s=seen / seconds, lr=self.scheduler.get_last_lr()[-1])  # the new layers' (--lr)
        self.history.append(record)

    def _chunks(self, rows: int) -> list[np.ndarray]:
        """This shard's rows in nearly equal chunks of at most ``micro_batch_size`` rows, but never
        a chunk of one image, which the hash outputs' BatchNorm cannot normalise (3 rows in
        chunks of 2 stay one chunk); one chunk without ``micro_batch_size``."""
        micro = self.config.micro_batch_size or rows
        return np.array_split(np.arange(rows), max(1, min(math.ceil(rows / micro), rows // 2)))

    def _loss(
        self, images: torch.Tensor, indices: np.ndarray, batch: np.ndarray, sizes: list[int], labels: torch.Tensor,
        targets: torch.Tensor, global_step: int, frozen_backbone: nn.Module | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of these rows of the batch (all of this rank's shard, or a micro-batch of it)."""
        index, batch_index = torch.from_numpy(indices).to(self.device), torch.from_numpy(batch).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if frozen_backbone is not None:
                with torch.no_grad():
                    features = frozen_backbone(images)
                outputs = self.model.head(features.contiguous())
            else:
                outputs = self.network(images)
        codes = self.loss.activate(outputs.float(), global_step)
        if self.memory is not None:  # every rank stores the whole batch's codes, as one process would
            self.memory[index if self.world == 1 else batch_index] = distributed.gather_rows(codes.detach(), sizes)
            inputs = LossInputs(codes, labels[index], targets[index], self.memory, labels, global_step, images)
        else:  # this shard's rows against the whole batch, with gradients to every rank's codes
            paired = distributed.gather_rows(codes, sizes)
            inputs = LossInputs(codes, labels[index], targets[index], paired, labels[batch_index], global_step, images)
        return self.loss(inputs)

    def save_checkpoint(self, epochs_done: int) -> None:
        assert self.checkpoint_path is not None
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "memory": self.memory,
            "companion": None if self.companion is None else self.companion.state_dict(),
            "epochs_done": epochs_done,
            "history": self.history,
        }
        header = {**(self.checkpoint_header or {}), "epochs_done": epochs_done, "train_config": self.config.to_dict()}
        save_file(self.checkpoint_path, "checkpoint", header, payload)

    def restore(self, path: Path) -> dict[str, Any]:
        """Continue from a checkpoint; returns its header. Only ``epochs`` may grow since then."""
        header, payload = load_file(path, "checkpoint")
        with reading(path, "checkpoint"):
            return self._restore(path, header, payload)

    def _restore(self, path: Path, header: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        saved = TrainConfig.from_dict(header["train_config"])
        if saved.to_dict() | {"epochs": 0} != self.config.to_dict() | {"epochs": 0}:
            differing = sorted(k for k, v in saved.to_dict().items() if k != "epochs" and self.config.to_dict()[k] != v)
            raise DahpError(f"{path} was trained with different settings ({', '.join(differing)}); "
                            "resume with the same options or start a new --out directory")
        self.model.load_state_dict(payload["model"])
        if self.companion is not None:
            self.companion.load_state_dict(payload["companion"])
        if len(payload["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            # one parameter group: written before the backbone had its own learning rate
            raise DahpError(f"{path} was written by an older dahp (one learning rate for all layers); "
                            "start a new --out directory")
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.memory = None if payload["memory"] is None else payload["memory"].to(self.device)
        self.start_epoch = int(payload["epochs_done"])
        self.history = list(payload["history"])
        return header
