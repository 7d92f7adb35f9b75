"""Training and encoding throughput of DAHP's network beside plain ResNet-18, in one run.

Measures images/s of a full training step (forward, DAHP loss, backward, SGD step) and
of encoding (inference forward + packing), for the network with and without dual
attention at the same input size and output stride, and prints the ratios.

    python benchmarks/throughput.py --image-size 32 --small-stem --output-stride 8
"""

from __future__ import annotations

import argparse
import time

import torch

from dahp.codes import pack_codes
from dahp.losses import DAHPLoss, anchor_targets
from dahp.models import HashingNetwork, ModelConfig


def _rate(step, batch: int, repeats: int) -> float:
    step()  # warm-up: allocator, oneDNN kernel selection
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - started)


def measure(config: ModelConfig, image_size: int, batch: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    net = HashingNetwork(config)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.eye(10)[torch.arange(batch) % 10]
    targets = anchor_targets(labels, torch.sign(torch.randn(10, config.bits)), torch.ones(config.bits))
    loss_fn = DAHPLoss()

    def train_step() -> None:
        net.train()
        loss, _ = loss_fn(net(images), labels, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def encode_step() -> None:
        net.eval()
        pack_codes(net(images).numpy())

    return _rate(train_step, batch, repeats), _rate(encode_step, batch, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.image_size} px, "
          f"{'small' if args.small_stem else 'standard'} stem, output stride {args.output_stride}, {args.bits} bits")
    rates = {}
    for name, attention in (("ResNet-18 (no attention)", False), ("DAHP (dual attention)", True)):
        config = ModelConfig(bits=args.bits, output_stride=args.output_stride, small_stem=args.small_stem,
                             attention=attention)
        rates[name] = measure(config, args.image_size, args.batch_size, args.repeats)
        print(f"{name:<26} train {rates[name][0]:8.1f} img/s   encode {rates[name][1]:8.1f} img/s")
    (plain_train, plain_encode), (dahp_train, dahp_encode) = rates.values()
    print(f"ratio DAHP / plain: train {dahp_train / plain_train:.2f}, encode {dahp_encode / plain_encode:.2f}")


if __name__ == "__main__":
    main()
