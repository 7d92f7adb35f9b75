"""A trained model's codes against its mirror-averaged codes (``--mirror-average``), side by side in one run.

Why: a test-time flip is the cheapest quality lever left once a model is trained (no
retraining, twice the encoding), and a search user's mirrored copy of an indexed photo
should land on the original. This encodes the model's own split (queries and database,
or a fixed random subset of the database) twice with its folded inference copy, once as
given and once mirrored left-right; the mean of the two outputs is what a model with
``mirror_average`` computes (``tests/test_models.py`` checks it). It reports, for the codes
as trained and for the averaged ones: mAP@ALL (database-order and tie-aware), how many bits
an image's code and its mirror's code differ by, and where mirrored, 10%-cropped copies of
database images land (``copy_detection.py``'s copies).

    python benchmarks/mirror_average.py runs/cpu-transfer/models/dahp-48/model.dahp \
        --cache-dir /tmp/dahp-cache --database-size 10000
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from copy_detection import copy_statistics, edited_copies
from model_split import model_split

from dahp.codes import pack_codes
from dahp.data import ImageCollection, decode_image, load_batches, split_batches
from dahp.hasher import DeepHasher
from dahp.metrics import chance_map, mean_average_precision
from dahp.models.inference import inference_copy


def _given_and_mirrored(network: torch.nn.Module, batches) -> tuple[np.ndarray, np.ndarray]:
    given, mirrored = [], []
    with torch.inference_mode():
        for images in batches:
            given.append(network(images).numpy())
            mirrored.append(network(images.flip(-1)).numpy())
    return np.concatenate(given), np.concatenate(mirrored)


def _collection_outputs(network: torch.nn.Module, hasher: DeepHasher, data: ImageCollection):
    batches = (images for images, _ in load_batches(data, split_batches(np.arange(len(data)), 256), hasher.preprocess))
    return _given_and_mirrored(network, batches)


def _copy_outputs(network: torch.nn.Module, hasher: DeepHasher, files: list[io.BytesIO]):
    size = hasher.preprocess.image_size
    batches = (hasher.preprocess.batch(np.stack([decode_image(file, size) for file in files[start:start + 64]]))
               for start in range(0, len(files), 64))
    return _given_and_mirrored(network, batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model.dahp trained by dahp train or dahp benchmark")
    parser.add_argument("--data", help="the collection (default: the one the model records)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--database-size", type=int, default=0, help="a fixed random subset of the database (0: all)")
    parser.add_argument("--copies", type=int, default=500, help="edited copies of database images to look up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    hasher = DeepHasher.load(args.model, device="cpu")
    if hasher.model_config.mirror_average:
        raise SystemExit(f"mirror_average: {args.model} averages with the mirror already; give a model without it")
    data, split = model_split(hasher, args.model, args.data, args.cache_dir, "mirror_average")
    database = split.database
    if 0 < args.database_size < len(database):
        database = np.sort(np.random.default_rng(args.seed).choice(database, args.database_size, replace=False))
    network = inference_copy(hasher.model_)
    started = time.perf_counter()
    queries = _collection_outputs(network, hasher, data.subset(split.query))
    items = _collection_outputs(network, hasher, data.subset(database))
    seconds = time.perf_counter() - started
    originals, files = edited_copies(data.subset(database), args.copies, args.seed)
    copies = _copy_outputs(network, hasher, files)

    labels = data.labels[split.query], data.labels[database]
    report: dict[str, object] = {
        "model": str(args.model), "bits": hasher.bits, "queries": len(split.query), "database": len(database),
        "chance_map": chance_map(*labels),
        "encode_images_per_s_each_way": 2 * (len(split.query) + len(database)) / seconds,
        "bits_between_an_image_and_its_mirror": float(((items[0] > 0) != (items[1] > 0)).sum(axis=1).mean()),
    }
    for name, pick in (("as_trained", lambda pair: pair[0]), ("mirror_averaged", lambda pair: (pair[0] + pair[1]) / 2)):
        query_codes, database_codes = pack_codes(pick(queries)), pack_codes(pick(items))
        report[name] = {
            "map": mean_average_precision(query_codes, database_codes, *labels, hasher.bits),
            "map_tie_aware": mean_average_precision(query_codes, database_codes, *labels, hasher.bits,
                                                    ties="expected"),
            "copies": copy_statistics(pack_codes(pick(copies)), database_codes, originals),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
