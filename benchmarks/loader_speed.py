"""Is data loading fast enough? CIFAR-10 batches from the cache beside the network's training rate.

Loads CIFAR-10 (the JPEG archive, decoded once into the cache), then times shuffled
epochs of 128-image batches through ``iterate_batches`` with ``Preprocess(image_size=32)``
and, in the same run, SGD steps of DAHP's network on 32-px batches. Loading should be at
least 10x faster than training so it never starves the model.

    python benchmarks/loader_speed.py [--source PATH] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dahp.data import ImageCollection, Preprocess, iterate_batches, load_source
from dahp.losses import DAHPLoss, LossInputs, anchor_targets
from dahp.models import HashingNetwork, ModelConfig

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
TARGET_RATIO = 10.0


def loader_rate(collection: ImageCollection, batch: int, epochs: int, device: torch.device) -> float:
    """Images/s of shuffled epochs: batching, normalising, fetching labels and moving both to ``device``."""
    preprocess = Preprocess(image_size=32)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(epochs):
        for pixels, indices in iterate_batches(collection, rng.permutation(len(collection)), batch, preprocess):
            pixels.to(device), torch.from_numpy(collection.labels[indices]).float().to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return epochs * len(collection) / (time.perf_counter() - started)


def training_rate(batch: int, steps: int, device: torch.device) -> float:
    """Images/s of full SGD steps (forward, DAHP loss, backward, update) on 32-px inputs."""
    torch.manual_seed(0)
    config = ModelConfig(bits=48, output_stride=8, small_stem=True)
    net = HashingNetwork(config).train().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.04, momentum=0.9)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.eye(10, device=device)[torch.arange(batch, device=device) % 10]
    anchors = torch.sign(torch.randn(10, config.bits, device=device))
    targets = anchor_targets(labels, anchors, torch.ones(config.bits, device=device))
    loss_fn = DAHPLoss()

    def step() -> None:
        loss, _ = loss_fn(LossInputs.within_batch(net(images), labels, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator and kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", default=str(DEFAULT_SOURCE), help="CIFAR-10 spec (default: the shared JPEG archive)"
    )
    parser.add_argument("--cache-dir", default=None, help="where the decoded archive is cached")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where batches go and the network trains (cpu, cuda)")
    args = parser.parse_args()

    started = time.perf_counter()
    data = load_source(args.source, cache_dir=args.cache_dir)
    print(
        f"loaded {len(data)} images {tuple(data.images.shape[1:])} from {args.source} "
        f"in {time.perf_counter() - started:.2f} s (cache built on the first run)"
    )
    if not isinstance(data.images, np.ndarray):
        raise SystemExit("this benchmark needs an in-memory collection (small images)")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, batch {args.batch_size}")
    loading = loader_rate(data, args.batch_size, args.epochs, device)
    training = training_rate(args.batch_size, args.steps, device)
    ratio = loading / training
    print(f"loading   {loading:10.0f} img/s  ({args.epochs} shuffled epochs through iterate_batches)")
    print(f"training  {training:10.1f} img/s  (DAHP, 48 bits, output stride 8, small stem, 32 px)")
    print(f"ratio     {ratio:10.1f}x  (target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")


if __name__ == "__main__":
    main()
