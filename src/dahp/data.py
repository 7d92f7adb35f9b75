"""Labelled image collections, seeded splits and the preprocessing saved with a model.

A collection holds either decoded images in memory (a uint8 ``(n, h, w, 3)`` array,
e.g. scikit-learn's digits) or image file paths decoded on demand. Labels are always a
multi-hot ``(n, k)`` uint8 matrix, so single- and multi-label data share one code path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import DahpError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageCollection:
    """Images (in memory or as paths) with multi-hot labels and class names."""

    images: np.ndarray | list[Path]
    labels: np.ndarray
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DahpError(f"dataset {self.source or '(unnamed)'} is empty: expected at least one image")
        if self.labels.ndim != 2 or len(self.labels) != len(self.images):
            raise DahpError(
                f"dataset {self.source}: labels must be ({len(self.images)}, classes), got {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    def names(self) -> list[str]:
        """A printable name per image: its path, or ``source[index]`` for in-memory data."""
        if isinstance(self.images, np.ndarray):
            return [f"{self.source}[{i}]" for i in range(len(self))]
        return [str(path) for path in self.images]

    def subset(self, indices: np.ndarray) -> "ImageCollection":
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        return ImageCollection(images, self.labels[indices], self.class_names, self.source)


def one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.zeros((len(classes), num_classes), dtype=np.uint8)
    labels[np.arange(len(classes)), classes] = 1
    return labels


def load_digits() -> ImageCollection:
    """scikit-learn's digits: 1,797 real 8x8 greyscale scans of 10 digits, no download."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return ImageCollection(rgb, one_hot(bunch.target, 10), [str(d) for d in range(10)], "digits")


def load_image_folder(root: str | Path) -> ImageCollection:
    """``root/<class>/<image>`` trees (torchvision's ImageFolder layout), classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DahpError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    paths: list[Path] = []
    classes: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths.extend(files)
        classes.extend([index] * len(files))
    if not paths:
        raise DahpError(f"no images found under {root}: expected {root}/<class>/<image>.jpg")
    return ImageCollection(paths, one_hot(np.array(classes), len(class_dirs)), [p.name for p in class_dirs], str(root))


def load_collection(source: str) -> ImageCollection:
    """``"digits"`` (embedded) or a path to an image folder."""
    if source == "digits":
        return load_digits()
    return load_image_folder(source)


@dataclass(frozen=True)
class Split:
    query: np.ndarray
    train: np.ndarray
    database: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"query": len(self.query), "train": len(self.train), "database": len(self.database)}


def split_per_class(labels: np.ndarray, query_per_class: int, train_per_class: int, seed: int) -> Split:
    """The CIFAR-10 protocol of the deep hashing field, for any single-label collection.

    Per class, a seeded shuffle gives ``query_per_class`` queries and the next
    ``train_per_class`` images for training; the database is every non-query image
    (training images included, as in the paper).
    """
    if (labels.sum(axis=1) != 1).any():
        raise DahpError("per-class splits need exactly one label per image; this collection is multi-label")
    if query_per_class < 0 or train_per_class < 0:
        raise DahpError("--query-per-class and --train-per-class must be >= 0")
    classes = labels.argmax(axis=1)
    rng = np.random.default_rng(seed)
    query, train = [], []
    for cls in range(labels.shape[1]):
        members = np.flatnonzero(classes == cls)
        needed = query_per_class + train_per_class
        if len(members) < needed:
            raise DahpError(
                f"class {cls} has {len(members)} images but the split needs {needed} "
                f"({query_per_class} query + {train_per_class} train)"
            )
        members = rng.permutation(members)
        query.append(members[:query_per_class])
        train.append(members[query_per_class:needed])
    query_idx = np.sort(np.concatenate(query))
    database = np.setdiff1d(np.arange(len(labels)), query_idx)
    return Split(query_idx, np.sort(np.concatenate(train)), database)


@dataclass(frozen=True)
class Preprocess:
    """Image -> normalised tensor; saved with the model so encoding matches training."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Preprocess":
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))  # type: ignore[arg-type]

    def batch(self, images: np.ndarray) -> torch.Tensor:
        """(n, h, w, 3) uint8 -> (n, 3, s, s) float, resized when h or w differ from s."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def default_preprocess(source: str, image_size: int | None = None) -> Preprocess:
    """Digits stay at their 8 px with a symmetric normalisation; photos get ImageNet's."""
    if source == "digits" and image_size is None:
        return Preprocess(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Preprocess(image_size or 224, IMAGENET_MEAN, IMAGENET_STD)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read one image file as (size, size, 3) uint8; a clear error names a bad file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DahpError(f"cannot read image {path}: {exc}") from None


class _FileBatches(torch.utils.data.Dataset):
    """Decodes a batch of files per item, so DataLoader workers decode in parallel."""

    def __init__(self, paths: Sequence[Path], batches: list[np.ndarray], preprocess: Preprocess) -> None:
        self.paths, self.batches, self.preprocess = paths, batches, preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, np.ndarray]:
        indices = self.batches[item]
        size = self.preprocess.image_size
        pixels = np.stack([decode_image(self.paths[i], size) for i in indices])
        return self.preprocess.batch(pixels), indices


def iterate_batches(
    collection: ImageCollection,
    order: np.ndarray,
    batch_size: int,
    preprocess: Preprocess,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(images, indices)`` batches over ``order``; files are decoded in ``workers`` processes."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if isinstance(collection.images, np.ndarray):
        for indices in batches:
            yield preprocess.batch(collection.images[indices]), indices
        return
    loader = torch.utils.data.DataLoader(
        _FileBatches(collection.images, batches, preprocess),
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
    )
    for images, indices in loader:  # the loader turns the index arrays into tensors
        yield images, indices.numpy()


@dataclass
class DataSpec:
    """Where training data came from and how it was split; saved so a run can be repeated."""

    source: str
    query_per_class: int = 0
    train_per_class: int = 0
    split_seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
