"""bfloat16 against float32 encoding on a CPU: speed, how many bits move, and the mAP, side by side in one run.

Why: encoding the 60,000 CIFAR-10 images is a sixth of the pretrained recipe's hour, and CPUs
with AMX (Intel Sapphire Rapids and later) multiply bfloat16 matrices in hardware. A code is
the sign of each output, so an output near zero can change sign when computed in bfloat16:
this counts how many do, and whether the retrieval figure notices.

It encodes the ``cifar10`` split's 1,000 queries and a fixed random 10,000 of its database
images with a trained model's folded, channels-last inference copy (what ``dahp`` encodes
with), in float32 and under ``torch.autocast(dtype=torch.bfloat16)``, and reports images/s
(loading and resizing included), mAP@ALL of each, and the share of bits and of codes that
differ. dahp itself encodes in float32 on a CPU.

    python benchmarks/encoding_precision.py runs/micro14/models/dahp-48/model.dahp \
        --data ../shared/datasets/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dahp.codes import pack_codes
from dahp.data import ImageCollection, get_protocol, load_batches, load_source, split_batches
from dahp.hasher import DeepHasher
from dahp.metrics import mean_average_precision
from dahp.models.inference import inference_copy


def _outputs(network: torch.nn.Module, hasher: DeepHasher, data: ImageCollection, bfloat16: bool) -> np.ndarray:
    outputs = []
    for images, _ in load_batches(data, split_batches(np.arange(len(data)), 256), hasher.preprocess):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            outputs.append(network(images).float().numpy())
    return np.concatenate(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained model.dahp (CIFAR-10)")
    parser.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--database", type=int, default=10_000, help="database images encoded (a fixed random subset)")
    args = parser.parse_args()
    collection = load_source(args.data, cache_dir=args.cache_dir)
    split = get_protocol("cifar10").split(collection)
    database = np.random.default_rng(0).choice(split.database, args.database, replace=False)
    query, database = collection.subset(split.query), collection.subset(database)
    hasher = DeepHasher.load(args.model, device="cpu")
    network = inference_copy(hasher.model_)
    results = {}
    for name, bfloat16 in (("float32", False), ("bfloat16", True)):
        started = time.perf_counter()
        results[name] = [_outputs(network, hasher, part, bfloat16) for part in (query, database)]
        rate = (len(query) + len(database)) / (time.perf_counter() - started)
        score = mean_average_precision(pack_codes(results[name][0]), pack_codes(results[name][1]),
                                       query.labels, database.labels, hasher.bits)
        print(f"{name:>9s}: {rate:6.1f} img/s, mAP@ALL {score:.4f} ({len(query)} queries, {len(database)} database images)")
    for part, single, half in zip(("queries", "database"), results["float32"], results["bfloat16"]):
        moved = (single > 0) != (half > 0)
        print(f"{part}: {moved.mean():.2%} of bits differ, {moved.any(axis=1).mean():.1%} of codes")


if __name__ == "__main__":
    main()
