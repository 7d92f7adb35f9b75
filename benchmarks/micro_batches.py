"""Training speed of the pretrained recipe by micro-batch size, memory layout and frozen stages, side by side in one run.

``--micro-batch-size`` runs each batch's forward and backward passes in chunks and adds up
their gradients before the one optimiser step. Why it can be faster on a CPU: a chunk's
activations are smaller, so fewer of them are taken fresh from the kernel and more stay in
cache. The layout: the trainer keeps the network and its batches NHWC (channels last) on a
CPU, where oneDNN's convolution backward passes run faster; ``--layouts nchw`` times the
default layout beside it. ``--frozen-stages`` keeps the backbone's first stages fixed, so
each step skips their backward pass. This times the real :class:`dahp.training.Trainer` (data loading, flip-crop
augmentation, the loss and its memory included) on the shipped ``cpu-transfer`` budget's
network and settings (EfficientNet-Lite0, 160 px, the backbone fine-tuned on its kept
BatchNorm statistics), on random 32x32 images resized as CIFAR-10's are, for each chunk size,
layout and number of frozen stages in alternating rounds: images/s of the second of two epochs (the first warms up), the best
round's. Random weights: the speed does not depend on them.

    python benchmarks/micro_batches.py --rounds 2
    python benchmarks/micro_batches.py --rounds 2 --sizes 32 --layouts nchw channels-last
    python benchmarks/micro_batches.py --rounds 2 --sizes 32 --frozen-stages 0 4 5
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

LAYOUTS = ("nchw", "channels-last")


def _images_per_s(micro_batch_size: int | None, channels_last: bool, frozen_stages: int, images: int) -> float:
    from dahp.benchmark import Budget
    from dahp.data import ImageCollection
    from dahp.models import HashingNetwork
    from dahp.training import TrainConfig, Trainer

    budget = Budget.load("cpu-transfer")
    rng = np.random.default_rng(0)
    data = ImageCollection(rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
                           np.eye(10, dtype=np.float32)[rng.integers(0, 10, images)], [str(c) for c in range(10)])
    train = {**budget.train, "epochs": 2, "frozen_epochs": 0, "min_steps": 0, "micro_batch_size": micro_batch_size,
             "frozen_stages": frozen_stages}
    torch.manual_seed(0)
    anchors = torch.where(torch.rand(10, 48) > 0.5, 1.0, -1.0)
    trainer = Trainer(HashingNetwork(budget.network()), anchors, budget.preprocess(budget.image_size),
                      TrainConfig.from_dict(train), torch.device("cpu"), progress=False,
                      channels_last=channels_last)
    return trainer.fit(data)[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=384, help="images per epoch (the budget's batch is 128)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 64, 32, 16], help="chunk sizes; 0: the whole batch")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["channels-last"],
                        help="memory layouts to time (the trainer's default on a CPU: channels-last)")
    parser.add_argument("--frozen-stages", type=int, nargs="+", default=[0],
                        help="numbers of the backbone's first stages to keep fixed (the stem counts as one)")
    args = parser.parse_args()
    best: dict[tuple[int, str, int], float] = {}
    started = time.perf_counter()
    for round_number in range(args.rounds):
        for key in itertools.product(args.sizes, args.layouts, args.frozen_stages):
            size, layout, frozen = key
            rate = _images_per_s(size or None, layout == "channels-last", frozen, args.images)
            best[key] = max(best.get(key, 0.0), rate)
            print(f"round {round_number + 1}, micro-batch {size or 'whole batch'}, {layout}, "
                  f"{frozen} frozen stages: {rate:.1f} img/s", flush=True)
    first = next(iter(best.values()))
    print(f"\n{'micro-batch':>12s} {'layout':>14s} {'frozen':>7s} {'img/s':>7s} {'vs the first':>13s}")
    for (size, layout, frozen), rate in best.items():
        print(f"{size or 'whole':>12} {layout:>14s} {frozen:>7d} {rate:7.1f} {rate / first:12.2f}x")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
