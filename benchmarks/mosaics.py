"""Build two test collections from CIFAR-10 that the shared data sets lack: many classes, and multi-label.

Users run dahp on collections unlike CIFAR-10: a hundred classes with a few images each, or
posters with several genres. Neither kind is installed here, so this script composes 2x2
mosaics of CIFAR-10 images (each CIFAR image used at most once, so no two mosaics share a
tile):

* ``--kind pairs`` (many classes): every unordered pair of CIFAR classes {a, b}, a == b
  included, is a class: 55 classes, each mosaic two tiles of a and two of b in random
  places. Written as an image folder ``OUT/<a+b>/<n>.png``; split it with
  ``--protocol per-class``.
* ``--kind multilabel``: each mosaic draws one to three classes and fills its four tiles so
  that every drawn class appears; its labels are those classes. Written as ``OUT/images/``
  and ``OUT/labels.csv`` (``path,labels`` with ``a|b``); split it with ``--protocol random``
  and report mAP@1000, as the paper does for multi-label data.

    python benchmarks/mosaics.py --kind pairs --per-class 150 --out data/cifar-pairs
    python benchmarks/mosaics.py --kind multilabel --count 10000 --out data/cifar-mosaics
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from dahp.data import load_source


class TilePool:
    """CIFAR images by class, handed out without replacement."""

    def __init__(self, images: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> None:
        self.images = images
        self.queues = {c: list(rng.permutation(np.flatnonzero(classes == c))) for c in np.unique(classes)}

    def take(self, cls: int) -> np.ndarray:
        if not self.queues[cls]:
            raise SystemExit(f"mosaics: class {cls} has no unused CIFAR-10 image left; ask for fewer mosaics")
        return self.images[self.queues[cls].pop()]


def mosaic(tiles: list[np.ndarray]) -> Image.Image:
    top, bottom = np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)
    return Image.fromarray(np.concatenate([top, bottom], axis=0))


def build_pairs(pool: TilePool, names: list[str], per_class: int, out: Path, rng: np.random.Generator) -> int:
    count = 0
    for a, b in itertools.combinations_with_replacement(range(len(names)), 2):
        folder = out / f"{names[a]}+{names[b]}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            tile_classes = rng.permutation([a, a, b, b])
            mosaic([pool.take(c) for c in tile_classes]).save(folder / f"{n:04d}.png")
            count += 1
    return count


def build_multilabel(pool: TilePool, names: list[str], count: int, out: Path, rng: np.random.Generator) -> int:
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        for n in range(count):
            drawn = rng.choice(len(names), size=rng.integers(1, 4), replace=False)
            tile_classes = rng.permutation(np.concatenate([drawn, rng.choice(drawn, 4 - len(drawn))]))
            path = Path("images") / f"{n:05d}.png"
            mosaic([pool.take(c) for c in tile_classes]).save(out / path)
            writer.writerow([path.as_posix(), "|".join(names[c] for c in sorted(drawn))])
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("pairs", "multilabel"), required=True)
    parser.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz", help="CIFAR-10 source")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--per-class", type=int, default=150, help="pairs: mosaics per class")
    parser.add_argument("--count", type=int, default=10_000, help="multilabel: mosaics in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"mosaics: {args.out} exists; remove it or choose another --out")

    cifar = load_source(args.data, cache_dir=args.cache_dir)
    if not isinstance(cifar.images, np.ndarray) or cifar.labels.sum(axis=1).max() != 1:
        raise SystemExit(f"mosaics: {args.data} must be single-label images decoded in memory (a CIFAR-10 source)")
    rng = np.random.default_rng(args.seed)
    pool = TilePool(cifar.images, cifar.labels.argmax(axis=1), rng)
    build = build_pairs if args.kind == "pairs" else build_multilabel
    size = args.per_class if args.kind == "pairs" else args.count
    written = build(pool, cifar.class_names, size, args.out, rng)
    print(f"{written} mosaics of 64x64 px written to {args.out}")


if __name__ == "__main__":
    main()
