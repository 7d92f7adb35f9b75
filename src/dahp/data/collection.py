"""Labelled image collections: decoded images in memory or image files on disk.

A collection holds either decoded images (a uint8 ``(n, h, w, 3)`` array, e.g.
scikit-learn's digits) or image file paths decoded on demand. Labels are always a
multi-hot ``(n, k)`` uint8 matrix, so single- and multi-label data share one code path.
Optionally a collection remembers each image's official partition (e.g. CIFAR-10's
``"train"``/``"test"``) so protocols can reproduce a dataset's own split, and the
images dropped as unreadable at load time so reports can list them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DahpError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageCollection:
    """Images (in memory or as paths) with multi-hot labels and class names."""

    images: np.ndarray | list[Path]
    labels: np.ndarray
    class_names: list[str]
    source: str = ""
    partition: np.ndarray | None = None
    """Per image, the dataset's own partition name (``"train"``, ``"test"``, ...), or None."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(image, reason)`` of every unreadable image left out when the collection was loaded."""

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DahpError(f"dataset {self.source or '(unnamed)'} is empty: expected at least one image")
        if self.labels.ndim != 2 or len(self.labels) != len(self.images):
            raise DahpError(
                f"dataset {self.source}: labels must be ({len(self.images)}, classes), got {self.labels.shape}"
            )
        if self.partition is not None and self.partition.shape != (len(self.images),):
            raise DahpError(
                f"dataset {self.source}: partition must name one part per image ({len(self.images)}), "
                f"got shape {self.partition.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    def names(self) -> list[str]:
        """A printable name per image: its path, or ``source[index]`` for in-memory data."""
        return [self.name(i) for i in range(len(self))]

    def name(self, index: int) -> str:
        """Image ``index``'s printable name, without listing all of them (chunks of a large collection)."""
        if isinstance(self.images, np.ndarray):
            return f"{self.source}[{index}]"
        return str(self.images[index])

    def subset(self, indices: np.ndarray) -> ImageCollection:
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        partition = None if self.partition is None else self.partition[indices]
        return ImageCollection(
            images, self.labels[indices], self.class_names, self.source, partition, list(self.skipped)
        )


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
