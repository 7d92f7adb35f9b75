"""The split a model was trained on, shared by the benchmark scripts that score a trained model."""

from __future__ import annotations

from pathlib import Path

from dahp.data import ImageCollection, Protocol, Split, load_source
from dahp.hasher import DeepHasher


def model_split(hasher: DeepHasher, model: Path, data: str | None, cache_dir: str | None,
                script: str) -> tuple[ImageCollection, Split]:
    """The collection the model records (or ``data``, the same images moved) and its split by the
    model's own protocol; exits naming ``script`` when the model records no split."""
    record = hasher.data_spec_
    if "protocol" not in record:
        raise SystemExit(f"{script}: {model} records no split; train it with dahp train or dahp benchmark")
    collection = load_source(data or record["source"], cache_dir=cache_dir)
    return collection, Protocol.from_dict(record["protocol"]).split(collection)
