"""Decoding and normalising images in batches, with the preprocessing saved in a model file."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DahpError
from .collection import ImageCollection

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # a 7,000 x 7,000 photo; decoding it takes about 150 MB
MAX_PIXELS_VARIABLE = "DAHP_MAX_IMAGE_PIXELS"


class ImageTooLarge(DahpError):
    """An image whose header declares more pixels than :func:`max_image_pixels` allows."""


def max_image_pixels() -> int:
    """The most pixels dahp decodes in one image: ``$DAHP_MAX_IMAGE_PIXELS`` or 50 million.

    Why: a small file can declare a huge image (a 165 KB PNG of 12,000 x 12,000 decodes to
    1.5 GB), below Pillow's own bomb threshold; the header is checked before any decoding.
    """
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    if value is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise DahpError(f"${MAX_PIXELS_VARIABLE} is {value!r}, expected a positive whole number of pixels")
    return int(value)


@contextmanager
def open_image(source: Path | IO[bytes], name: str | None = None) -> Iterator[Image.Image]:
    """``Image.open`` that refuses, before decoding, an image over :func:`max_image_pixels`."""
    with Image.open(source) as image:
        width, height = image.size
        limit = max_image_pixels()
        if width * height > limit:
            raise ImageTooLarge(f"image {name or source} is {width} x {height} = {width * height:,} pixels, over "
                                f"the limit of {limit:,} (set ${MAX_PIXELS_VARIABLE} to change it)")
        yield image


@dataclass(frozen=True)
class Preprocess:
    """Image -> normalised tensor; saved with the model so encoding matches training."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocess:
        """Raises ValueError naming the field that is out of range (a hand-edited or damaged file)."""
        size, mean, std = data["image_size"], tuple(data["mean"]), tuple(data["std"])  # type: ignore[arg-type]
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 4096:
            raise ValueError(f"preprocess.image_size is {size!r}, expected a whole number of pixels in 1..4096")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"preprocess.{name} is {list(values)!r}, expected three finite numbers")
        if min(std) <= 0:
            raise ValueError(f"preprocess.std is {list(std)!r}, expected positive numbers")
        return cls(size, mean, std)  # type: ignore[arg-type]

    def batch(self, images: np.ndarray) -> torch.Tensor:
        """(n, h, w, 3) uint8 -> (n, 3, s, s) float, resized when h or w differ from s."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        # contiguous NCHW: the permuted (channels-last strided) tensor made the network's
        # forward 1.75x slower (measured, ResNet-18 at 32 px on one CPU thread)
        return ((x - mean) / std).contiguous()


def default_preprocess(source: str, image_size: int | None = None) -> Preprocess:
    """Digits stay at their 8 px with a symmetric normalisation; photos get ImageNet's."""
    if source == "digits" and image_size is None:
        return Preprocess(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Preprocess(image_size or 224, IMAGENET_MEAN, IMAGENET_STD)


def decode_image(source: Path | IO[bytes], size: int, name: str | None = None) -> np.ndarray:
    """Read one image (a file or an open byte stream) as (size, size, 3) uint8.

    A clear error names the bad image (``name``, else the path).
    """
    try:
        with open_image(source, name) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    except ImageTooLarge:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DahpError(f"cannot read image {name or source}: {exc}") from None


class _FileBatches(torch.utils.data.Dataset):
    """Decodes a batch of files per item, so DataLoader workers decode in parallel."""

    def __init__(self, paths: Sequence[Path], batches: list[np.ndarray], preprocess: Preprocess) -> None:
        self.paths, self.batches, self.preprocess = paths, batches, preprocess

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, np.ndarray]:
        indices = self.batches[item]
        size = self.preprocess.image_size
        try:
            pixels = np.stack([decode_image(self.paths[i], size) for i in indices])
        except DahpError as exc:  # an image that became unreadable after the source was listed
            raise DahpError(f"{exc} (--skip-bad / skip_bad=True leaves unreadable images out)") from None
        return self.preprocess.batch(pixels), indices


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into consecutive batches of ``batch_size`` (the last one shorter)."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iterate_batches(
    collection: ImageCollection,
    order: np.ndarray,
    batch_size: int,
    preprocess: Preprocess,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(images, indices)`` batches over ``order``; files are decoded in ``workers`` processes."""
    return load_batches(collection, split_batches(order, batch_size), preprocess, workers)


def load_batches(
    collection: ImageCollection,
    batches: Sequence[np.ndarray],
    preprocess: Preprocess,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(images, indices)`` for the given batches of indices, in order.

    Callers that fix the batch boundaries themselves (a resumable ingest encodes each chunk
    in the same batches whichever process runs it) use this; files are decoded in
    ``workers`` processes, one loader for all the batches, so decoding never stalls between them.
    """
    if isinstance(collection.images, np.ndarray):
        for indices in batches:
            yield preprocess.batch(collection.images[indices]), indices
        return
    loader = torch.utils.data.DataLoader(
        _FileBatches(collection.images, [np.ascontiguousarray(b) for b in batches], preprocess),  # no negative strides
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
    )
    for images, indices in loader:  # the loader turns the index arrays into tensors
        yield images, indices.numpy()
