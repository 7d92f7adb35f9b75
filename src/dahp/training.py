"""The training loop: one epoch at a time, an atomic checkpoint after each.

Reproducibility on CPU: the network is initialised from ``seed``, and epoch ``e``
visits the training images in a permutation drawn from ``(seed, e)`` alone, so a run
resumed from the checkpoint of epoch ``e`` replays epochs ``e+1...`` exactly as an
uninterrupted run would (the checkpoint also holds optimiser, schedule and memory).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import ImageCollection, Preprocess, iterate_batches
from .errors import DahpError
from .losses import DAHPLoss, anchor_targets
from .serialization import load_file, save_file

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
PAIR_MODES = ("memory", "batch")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the paper's (§IV-A: SGD, batch 128, lr 0.04);
    the paper gives no schedule or weight decay, so those default to none / DPSH's 1e-5."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 1e-5
    optimizer: str = "sgd"
    schedule: str = "constant"
    anchor_weight: float = 0.05
    quantization_weight: float = 0.0
    pairs: str = "memory"
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.anchor_weight >= 0, f"--anchor-weight must be >= 0, got {self.anchor_weight}"),
            (self.quantization_weight >= 0, f"--quantization-weight must be >= 0, got {self.quantization_weight}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.pairs in PAIR_MODES, f"--pairs must be one of {PAIR_MODES}, got {self.pairs!r}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DahpError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TrainingDiverged(DahpError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DahpError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DahpError("--device cuda was asked for but no CUDA device is available")
    return device


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


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


@dataclass
class Trainer:
    """Trains a hashing network against anchors on one collection; checkpoints each epoch."""

    model: nn.Module
    anchors: torch.Tensor  # (k, c) in ±1
    preprocess: Preprocess
    config: TrainConfig
    device: torch.device
    checkpoint_path: Path | None = None
    checkpoint_header: dict[str, Any] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.optimizer = _optimizer(self.model, self.config)
        self.scheduler = _scheduler(self.optimizer, self.config)
        self.loss = DAHPLoss(self.config.anchor_weight, self.config.quantization_weight)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.memory: torch.Tensor | None = None
        tie_rng = np.random.default_rng([self.config.seed, 1])
        self.tie_breaker = torch.from_numpy(tie_rng.choice([-1.0, 1.0], size=self.anchors.shape[1])).float()
        self.amp = self.device.type == "cuda"

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
            if self.checkpoint_path is not None:
                self.save_checkpoint(epoch + 1)
        return self.history

    def _run_epoch(self, epoch: int, data: ImageCollection, labels: torch.Tensor, targets: torch.Tensor) -> None:
        self.model.train()
        order = epoch_order(len(data), self.config.seed, epoch)
        totals: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        bar = tqdm(
            total=len(data), desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="img",
            disable=not self.progress, leave=False,
        )
        batches = iterate_batches(data, order, self.config.batch_size, self.preprocess, self.config.workers)
        for step, (images, indices) in enumerate(batches):
            if len(indices) < 2:  # BatchNorm cannot train on one image; it is seen again next epoch
                continue
            index = torch.from_numpy(indices).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                codes = self.model(images.to(self.device, non_blocking=True))
            codes = codes.float()
            if self.memory is not None:
                self.memory[index] = codes.detach()
                loss, parts = self.loss(codes, labels[index], targets[index], self.memory, labels)
            else:
                loss, parts = self.loss(codes, labels[index], targets[index])
            if not torch.isfinite(loss):
                bar.close()
                kept = f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path else "no checkpoint"
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; training stopped, "
                    f"{kept} (untouched); try a lower --lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            seen += len(indices)
            parts["loss"] = float(loss.detach())
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value * len(indices)
            bar.update(len(indices))
            bar.set_postfix(loss=f"{parts['loss']:.4f}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
        bar.close()
        seconds = time.perf_counter() - started
        record = {name: total / seen for name, total in totals.items()}
        record.update(epoch=epoch + 1, seconds=seconds, images_per_s=seen / seconds, lr=self.scheduler.get_last_lr()[0])
        self.history.append(record)

    def save_checkpoint(self, epochs_done: int) -> None:
        assert self.checkpoint_path is not None
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "memory": self.memory,
            "epochs_done": epochs_done,
            "history": self.history,
        }
        header = {**(self.checkpoint_header or {}), "epochs_done": epochs_done, "train_config": self.config.to_dict()}
        save_file(self.checkpoint_path, "checkpoint", header, payload)

    def restore(self, path: Path) -> dict[str, Any]:
        """Continue from a checkpoint; returns its header. Only ``epochs`` may grow since then."""
        header, payload = load_file(path, "checkpoint")
        saved = TrainConfig.from_dict(header["train_config"])
        if saved.to_dict() | {"epochs": 0} != self.config.to_dict() | {"epochs": 0}:
            differing = sorted(k for k, v in saved.to_dict().items() if k != "epochs" and self.config.to_dict()[k] != v)
            raise DahpError(f"{path} was trained with different settings ({', '.join(differing)}); "
                            "resume with the same options or start a new --out directory")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.memory = None if payload["memory"] is None else payload["memory"].to(self.device)
        self.start_epoch = int(payload["epochs_done"])
        self.history = list(payload["history"])
        return header
