"""Data: image collections, seeded splits and the preprocessing saved with a model."""

from .collection import IMAGE_EXTENSIONS, ImageCollection, load_collection, load_digits, load_image_folder, one_hot
from .splits import Split, split_per_class
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, decode_image, default_preprocess, iterate_batches

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageCollection",
    "Preprocess",
    "Split",
    "decode_image",
    "default_preprocess",
    "iterate_batches",
    "load_collection",
    "load_digits",
    "load_image_folder",
    "one_hot",
    "split_per_class",
]
