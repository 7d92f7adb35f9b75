"""Inference images/s of a network beside its ``inference_copy`` (BatchNorm folded, channels-last), in one run.

For each backbone and input size it times the eval-mode forward of the same network three
ways -- as trained, with every Conv2d -> BatchNorm2d pair folded (NCHW), and folded with
channels-last weights (what ``inference_copy`` returns) -- and prints a table of images/s and
the speedups over the original. The networks alternate within each round, so a shared CPU
slows all alike; each rate is the best round's. By default it times the whole
``HashingNetwork`` (dual attention, hash head, batch-normalised outputs) in each backbone's
budget configuration (ResNet-18 at output stride 8 as budget ``cpu``, EfficientNet-Lite0 at
32 as ``cpu-pretrained``); weights are random but BatchNorm statistics are not trivial, and
speed does not depend on either.

    python benchmarks/inference_speed.py
    python benchmarks/inference_speed.py --backbones efficientnet_lite0 --sizes 128 224 --threads 2
    python benchmarks/inference_speed.py --backbone-only --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import add_clock_options, apply_clock_options
from torch import nn

from dahp.models import HashingNetwork, ModelConfig
from dahp.models.inference import inference_copy

DEFAULT_SIZES = {"resnet18": (32, 224), "efficientnet_lite0": (96, 128, 224)}
OUTPUT_STRIDES = {"resnet18": 8, "alexnet": 32}  # the budgets'; EfficientNets: 32
WAYS = ("original", "folded NCHW", "folded channels-last")


def build(backbone: str, attention: bool) -> HashingNetwork:
    """A seeded network with BatchNorm statistics and attention scales away from their initial values."""
    torch.manual_seed(0)
    config = ModelConfig(bits=48, backbone=backbone, output_stride=OUTPUT_STRIDES.get(backbone, 32),
                         attention=attention, hash_norm=True)
    net = HashingNetwork(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for name, parameter in net.named_parameters():
            if name.endswith(("alpha", "beta")):
                parameter.fill_(0.5)
    return net.eval()


def variants(net: HashingNetwork, backbone_only: bool) -> dict[str, nn.Module]:
    versions = {"original": net, "folded NCHW": inference_copy(net, channels_last=False),
                "folded channels-last": inference_copy(net)}
    return {way: version.backbone if backbone_only else version for way, version in versions.items()}


def best_rates(
    models: dict[str, nn.Module], images: torch.Tensor, rounds: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Images/s of each model's best round, the models alternating within each round."""
    seconds: dict[str, list[float]] = {way: [] for way in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up: oneDNN kernel selection, allocator, first-touch pages
            model(images)
        for _ in range(rounds):
            for way, model in models.items():
                started = clock()
                model(images)
                seconds[way].append(clock() - started)
    return {way: len(images) / min(times) for way, times in seconds.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="input sizes for every backbone (default: resnet18 32 224, efficientnet_lite0 96 128 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (the best one counts)")
    add_clock_options(parser)
    parser.add_argument("--no-attention", action="store_true", help="time the network without dual attention")
    parser.add_argument("--backbone-only", action="store_true", help="time the backbone alone, not the network")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    clock = apply_clock_options(args)
    part = "backbone" if args.backbone_only else "network " + ("without" if args.no_attention else "with") + " attention"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {part}, "
          f"best of {args.rounds} alternating rounds ({args.clock} clock); images/s")
    header = f"{'backbone':<20}{'px':>5}" + "".join(f"{way:>22}" for way in WAYS) + f"{'folded':>9}{'+ NHWC':>9}"
    print(header)
    for backbone in args.backbones:
        models = variants(build(backbone, attention=not args.no_attention), args.backbone_only)
        for size in args.sizes or DEFAULT_SIZES.get(backbone, (96, 224)):
            images = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(size))
            rates = best_rates(models, images, args.rounds, clock)
            base = rates["original"]
            print(f"{backbone:<20}{size:>5}" + "".join(f"{rates[way]:>22.1f}" for way in WAYS)
                  + f"{rates['folded NCHW'] / base:>8.2f}x{rates['folded channels-last'] / base:>8.2f}x")


if __name__ == "__main__":
    main()
