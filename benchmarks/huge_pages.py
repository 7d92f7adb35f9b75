"""Transparent huge pages for PyTorch's CPU tensors, on and off, side by side in one run.

Importing dahp sets ``THP_MEM_ALLOC_ENABLE=1`` (unless the user set it): PyTorch's CPU
allocator then backs every tensor of 2 MB or more with 2 MB pages (``madvise``). Why: a
160-px batch's activations are hundreds of MB, which the allocator takes fresh from the
kernel at every step; with 4 KB pages the kernel spends much of the step faulting them in.

For each setting, in alternating rounds (a shared CPU slows both alike; each figure is the
best round's), a fresh process times the pretrained recipe's network (EfficientNet-Lite0,
160 px, budget ``cpu-transfer``): training steps (forward, backward, SGD) with the backbone's
BatchNorm on its running statistics, and encoding through the folded, channels-last inference copy that
``dahp`` encodes with. It prints images/s, the CPU time spent in the kernel and the page
faults. Needs Linux with transparent huge pages in ``madvise`` or ``always`` mode.

    python benchmarks/huge_pages.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SETTINGS = {"4 KB pages": "0", "huge pages": "1"}


def _measure(train_batch: int, encode_batch: int, images: int) -> dict[str, dict[str, float]]:
    """Images/s, kernel CPU share and page faults of training and of encoding, in this process."""
    import torch  # imported here, so that the parent's THP_MEM_ALLOC_ENABLE is the one torch reads

    from dahp.benchmark import Budget
    from dahp.models import HashingNetwork
    from dahp.models.inference import inference_copy
    from dahp.training import keep_batch_norm_statistics

    budget = Budget.load("cpu-transfer")
    torch.manual_seed(0)
    net = HashingNetwork(budget.network())
    size = budget.image_size

    def timed(step, batch: int) -> dict[str, float]:
        step()  # warm-up: first-touch allocations and kernel selection
        before, started, done = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
        while done < images:
            step()
            done += batch
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"images_per_s": done / wall, "kernel_share": (after.ru_stime - before.ru_stime) / cpu,
                "faults_per_image": (after.ru_minflt - before.ru_minflt) / done}

    net.train()
    keep_batch_norm_statistics(net.backbone)  # as training with frozen_batch_norm: the hash outputs' stays in training
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    train_images = torch.randn(train_batch, 3, size, size)

    def train_step() -> None:
        codes = net(train_images)
        loss = codes.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    encoder = inference_copy(net.eval())
    encode_images = torch.randn(encode_batch, 3, size, size)

    def encode_step() -> None:
        with torch.inference_mode():
            encoder(encode_images)

    return {"train": timed(train_step, train_batch), "encode": timed(encode_step, encode_batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=128, help="the budget's batch size")
    parser.add_argument("--encode-batch", type=int, default=256, help="dahp encode's default batch size")
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args.train_batch, args.encode_batch, args.images)))
        return
    best: dict[str, dict[str, dict[str, float]]] = {}
    for round_number in range(args.rounds):
        for label, value in SETTINGS.items():
            command = [sys.executable, __file__, "--worker", "--train-batch", str(args.train_batch),
                       "--encode-batch", str(args.encode_batch), "--images", str(args.images)]
            result = json.loads(subprocess.run(command, env={**os.environ, "THP_MEM_ALLOC_ENABLE": value},
                                               capture_output=True, text=True, check=True).stdout)
            print(f"round {round_number + 1}, {label}: " + ", ".join(
                f"{job} {figures['images_per_s']:.1f} img/s" for job, figures in result.items()))
            for job, figures in result.items():
                kept = best.setdefault(label, {}).get(job)
                if kept is None or figures["images_per_s"] > kept["images_per_s"]:
                    best[label][job] = figures
    print(f"\n{'job':8s} {'pages':11s} {'img/s':>7s} {'kernel CPU':>10s} {'faults/img':>11s}")
    for job in ("train", "encode"):
        for label in SETTINGS:
            figures = best[label][job]
            print(f"{job:8s} {label:11s} {figures['images_per_s']:7.1f} {figures['kernel_share']:10.0%} "
                  f"{figures['faults_per_image']:11.0f}")
        ratio = best["huge pages"][job]["images_per_s"] / best["4 KB pages"][job]["images_per_s"]
        print(f"{job:8s} huge pages / 4 KB pages = {ratio:.2f}x")


if __name__ == "__main__":
    main()
