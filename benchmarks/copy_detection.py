"""How far a user's edited copy of a database image lands from the original, and how often the original comes back first.

A search user's first test is often a photo they already indexed, mirrored and cropped a
little. This takes database images of a model's own split, makes from each a copy that is
mirrored left-right and cropped to 90% of its width and height at a random offset (saved
as a PNG and read back, as a user's file would be), encodes the copies and reports, over
the copies: the Hamming distance to their original (mean, median, 90th percentile), how
often the original is the nearest database image (no other strictly nearer; and alone at
that distance) and how often it is among the 10 nearest.

    python benchmarks/copy_detection.py runs/fbn/models/dahp-48/model.dahp --copies 500 --database-size 10000
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from model_split import model_split
from PIL import Image

from dahp.codes import hamming_distance
from dahp.data import ImageCollection
from dahp.data.transforms import open_image
from dahp.hasher import DeepHasher


def pixels(collection: ImageCollection, index: int) -> np.ndarray:
    """Image ``index`` of the collection as decoded ``(h, w, 3)`` uint8."""
    if isinstance(collection.images, np.ndarray):
        return collection.images[index]
    with open_image(collection.images[index]) as image:
        return np.asarray(image.convert("RGB"))


def edited_copy(image: np.ndarray, rng: np.random.Generator, keep: float = 0.9) -> io.BytesIO:
    """The image mirrored and cropped to ``keep`` of each side at a random offset, as PNG bytes."""
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height * keep)), max(1, round(width * keep))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    copy = Image.fromarray(np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w, :][:, ::-1]))
    stream = io.BytesIO()
    copy.save(stream, format="PNG")
    stream.seek(0)
    return stream


def copy_statistics(copy_codes: np.ndarray, database_codes: np.ndarray, originals: np.ndarray) -> dict[str, float]:
    """Where each copy's original lands among the database codes: bits away, and its rank."""
    distances = hamming_distance(copy_codes, database_codes)
    to_original = distances[np.arange(len(originals)), originals]
    nearer = (distances < to_original[:, None]).sum(axis=1)
    level = (distances == to_original[:, None]).sum(axis=1) - 1  # other images as near as the original
    return {
        "copies": len(originals), "database": len(database_codes),
        "mean_bits": float(to_original.mean()), "median_bits": float(np.median(to_original)),
        "p90_bits": float(np.percentile(to_original, 90)),
        "original_nearest": float((nearer == 0).mean()),
        "original_alone_nearest": float(((nearer == 0) & (level == 0)).mean()),
        "original_in_top_10": float((nearer < 10).mean()),
    }


def edited_copies(database: ImageCollection, copies: int, seed: int) -> tuple[np.ndarray, list[io.BytesIO]]:
    """``copies`` random database indices and an edited copy of each, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    originals = rng.choice(len(database), size=min(copies, len(database)), replace=False)
    return originals, [edited_copy(pixels(database, i), rng) for i in originals]


def copy_detection(hasher: DeepHasher, database: ImageCollection, copies: int, seed: int,
                   batch_size: int = 64) -> dict[str, float]:
    originals, files = edited_copies(database, copies, seed)
    database_codes = hasher.encode(database, progress=True, role="database")  # as an index stores them
    copy_codes = np.concatenate([hasher.encode_images(files[start:start + batch_size])
                                 for start in range(0, len(files), batch_size)])
    return {"bits": hasher.bits} | copy_statistics(copy_codes, database_codes, originals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model.dahp trained by dahp train or dahp benchmark")
    parser.add_argument("--data", help="the collection (default: the one the model records)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--copies", type=int, default=500)
    parser.add_argument("--database-size", type=int, default=0, help="a random subset of the database (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    hasher = DeepHasher.load(args.model, device="cpu")
    data, split = model_split(hasher, args.model, args.data, args.cache_dir, "copy_detection")
    database = split.database
    if 0 < args.database_size < len(database):
        database = np.sort(np.random.default_rng(args.seed).choice(database, args.database_size, replace=False))
    print(json.dumps(copy_detection(hasher, data.subset(database), args.copies, args.seed), indent=2))


if __name__ == "__main__":
    main()
