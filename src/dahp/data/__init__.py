"""Data: image sources, collections, seeded protocols and the preprocessing saved with a model."""

from .collection import IMAGE_EXTENSIONS, ImageCollection, load_digits, one_hot
from .protocols import (
    PROTOCOLS,
    Protocol,
    describe,
    get_protocol,
    load_protocol,
    save_protocol,
    split_digest,
)
from .sources import (
    default_cache_dir,
    download_cifar10,
    drop_unreadable,
    load_archive,
    load_cifar10_batches,
    load_csv,
    load_image_tree,
    load_list_file,
    load_source,
    resolve_source,
    source_exists,
)
from .splits import Split, split_per_class
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, decode_image, default_preprocess, iterate_batches

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "PROTOCOLS",
    "ImageCollection",
    "Preprocess",
    "Protocol",
    "Split",
    "decode_image",
    "default_cache_dir",
    "default_preprocess",
    "describe",
    "download_cifar10",
    "drop_unreadable",
    "get_protocol",
    "iterate_batches",
    "load_archive",
    "load_cifar10_batches",
    "load_csv",
    "load_digits",
    "load_image_tree",
    "load_list_file",
    "load_protocol",
    "load_source",
    "one_hot",
    "resolve_source",
    "save_protocol",
    "source_exists",
    "split_digest",
    "split_per_class",
]
