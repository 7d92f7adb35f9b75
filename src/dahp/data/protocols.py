"""Named, seeded query / train / database protocols, saved as JSON so a run can be repeated.

A :class:`Protocol` is a name from :data:`PROTOCOLS`, a seed and that protocol's
parameters (defaults filled in, so a saved record is complete on its own):

``cifar10``
    the paper's: 100 queries + 500 training images per class drawn from every image
    (official partition ignored); database = every non-query image (59,000 on CIFAR-10).
``cifar10-disjoint``
    the same draw; the database leaves the training images out (54,000).
``cifar10-official`` / ``official``
    the dataset's own partition: test images are the queries, training images are the
    training set and the database (10,000 / 50,000 / 50,000 on CIFAR-10).
``per-class``
    ``query_per_class``, ``train_per_class`` (0 = all remaining) and
    ``database`` = ``"rest"`` | ``"rest-minus-train"`` on any single-label collection.
``random``
    ``query`` and ``train`` images drawn from the whole collection (multi-label data,
    e.g. list files); ``train`` = 0 means all remaining; ``database`` as above.
``all``
    no split: every image is training and database image, no queries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DahpError
from ..serialization import atomic_write_bytes
from .collection import ImageCollection
from .splits import Split, split_per_class

Parameter = int | str
DATABASE_CHOICES = ("rest", "rest-minus-train")


@dataclass(frozen=True)
class ProtocolKind:
    """How one named protocol splits a collection, and the parameters it takes with their defaults."""

    splitter: Callable[[Protocol, ImageCollection], Split]
    defaults: Mapping[str, Parameter]
    summary: str


@dataclass(frozen=True)
class Protocol:
    """A named, seeded split recipe; ``parameters`` always holds every parameter of the kind."""

    name: str
    seed: int = 0
    parameters: Mapping[str, Parameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = _kind(self.name)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise DahpError(f"protocol {self.name}: seed must be an integer, got {self.seed!r}")
        unknown = sorted(set(self.parameters) - set(kind.defaults))
        if unknown:
            raise DahpError(
                f"protocol {self.name} has no parameter(s) {unknown}; it takes {sorted(kind.defaults) or 'none'}"
            )
        parameters = {**kind.defaults, **self.parameters}
        for key, value in parameters.items():
            _check_parameter(self.name, key, value, kind.defaults[key])
        object.__setattr__(self, "parameters", parameters)

    def split(self, collection: ImageCollection) -> Split:
        """The query / train / database indices for ``collection``; the same every time."""
        return _kind(self.name).splitter(self, collection)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "parameters": dict(self.parameters)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        if not isinstance(data, Mapping) or not isinstance(data.get("parameters", {}), Mapping) or "name" not in data:
            raise DahpError(f"a protocol record needs 'name', 'seed' and 'parameters', got {data!r}")
        return cls(str(data["name"]), data.get("seed", 0), dict(data.get("parameters", {})))


def _kind(name: str) -> ProtocolKind:
    if name not in PROTOCOLS:
        raise DahpError(f"unknown protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_parameter(name: str, key: str, value: object, default: Parameter) -> None:
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DahpError(f"protocol {name}: {key} must be an integer >= 0, got {value!r}")
    elif key == "database" and value not in DATABASE_CHOICES:
        raise DahpError(f"protocol {name}: database must be one of {list(DATABASE_CHOICES)}, got {value!r}")
    elif not isinstance(value, str) or not value:
        raise DahpError(f"protocol {name}: {key} must be a non-empty string, got {value!r}")


def get_protocol(name: str, seed: int = 0, **parameters: Parameter) -> Protocol:
    """The protocol called ``name`` with ``seed`` and any parameters overriding its defaults."""
    return Protocol(name, seed, parameters)


# --- splitters ---------------------------------------------------------------------------------


def _database(protocol: Protocol, query: np.ndarray, train: np.ndarray, size: int) -> np.ndarray:
    """Every non-query image, without the training images for ``rest-minus-train``."""
    database = np.setdiff1d(np.arange(size), query)
    if protocol.parameters["database"] == "rest-minus-train":
        database = np.setdiff1d(database, train)
    if len(database) == 0:
        raise DahpError(
            f"protocol {protocol.name} leaves no images for the database; draw fewer queries or training images"
        )
    return database


def _per_class(protocol: Protocol, collection: ImageCollection) -> Split:
    labels = collection.labels
    if (labels.sum(axis=1) != 1).any():
        raise DahpError(
            f"protocol {protocol.name} draws per class and needs one label per image, but {collection.source} "
            "has multi-label or unlabelled images: use the 'random' protocol"
        )
    queries, train_count = int(protocol.parameters["query_per_class"]), int(protocol.parameters["train_per_class"])
    needed = queries + max(train_count, 1)
    counts = labels.sum(axis=0)
    short = [f"{collection.class_names[c]!r} has {counts[c]}" for c in np.flatnonzero(counts < needed)]
    if short:
        wanted = f"{queries} query + {train_count or 'at least 1'} train"
        raise DahpError(
            f"protocol {protocol.name} needs {needed} images per class ({wanted}), but in {collection.source} "
            f"class {', class '.join(short[:5])}{' and more' if len(short) > 5 else ''}"
        )
    split = split_per_class(labels, queries, train_count, protocol.seed)
    train = split.train if train_count else split.database
    return Split(split.query, train, _database(protocol, split.query, train, len(collection)))


def _random(protocol: Protocol, collection: ImageCollection) -> Split:
    queries, train_count = int(protocol.parameters["query"]), int(protocol.parameters["train"])
    if queries + max(train_count, 1) > len(collection):
        raise DahpError(
            f"protocol {protocol.name} needs {queries} query + {train_count or 'at least 1'} train images, "
            f"but {collection.source} has {len(collection)}"
        )
    order = np.random.default_rng(protocol.seed).permutation(len(collection))
    query = np.sort(order[:queries])
    train = np.sort(order[queries : queries + train_count] if train_count else order[queries:])
    return Split(query, train, _database(protocol, query, train, len(collection)))


def _official(protocol: Protocol, collection: ImageCollection) -> Split:
    partition = collection.partition
    if partition is None:
        raise DahpError(
            f"protocol {protocol.name} uses the dataset's own train/test partition, but {collection.source} has none "
            "(it comes from CIFAR python batches or a tree with train/ and test/ directories)"
        )

    def members(key: str) -> np.ndarray:
        indices = np.flatnonzero(partition == protocol.parameters[key])
        if len(indices) == 0:
            raise DahpError(
                f"protocol {protocol.name}: {collection.source} has no images in partition "
                f"{protocol.parameters[key]!r} ({key}); its partitions are {sorted(set(partition.tolist()))}"
            )
        return indices

    return Split(members("query_partition"), members("train_partition"), members("database_partition"))


def _everything(protocol: Protocol, collection: ImageCollection) -> Split:
    everything = np.arange(len(collection))
    return Split(np.zeros(0, dtype=np.int64), everything, everything)


_PAPER = {"query_per_class": 100, "train_per_class": 500}
_OFFICIAL = {"query_partition": "test", "train_partition": "train", "database_partition": "train"}
PROTOCOLS: dict[str, ProtocolKind] = {
    "cifar10": ProtocolKind(_per_class, {**_PAPER, "database": "rest"}, "100 query + 500 train per class; db = rest"),
    "cifar10-disjoint": ProtocolKind(
        _per_class, {**_PAPER, "database": "rest-minus-train"}, "as cifar10; db excludes the training images"
    ),
    "cifar10-official": ProtocolKind(_official, _OFFICIAL, "official split: test = queries, train = train + db"),
    "official": ProtocolKind(_official, _OFFICIAL, "the dataset's partitions as queries / train / db"),
    "per-class": ProtocolKind(_per_class, {**_PAPER, "database": "rest"}, "seeded per-class draw, any sizes"),
    "random": ProtocolKind(_random, {"query": 2000, "train": 5000, "database": "rest"}, "seeded draw, multi-label"),
    "all": ProtocolKind(_everything, {}, "no split: everything is training and database"),
}


# --- records and reports ------------------------------------------------------------------------


def split_digest(split: Split) -> str:
    """SHA-256 of the three index sets: equal digests mean the very same split."""
    digest = hashlib.sha256()
    for indices in (split.query, split.train, split.database):
        digest.update(np.asarray(indices, dtype="<i8").tobytes() + b"|")
    return digest.hexdigest()


def save_protocol(path: str | Path, protocol: Protocol, split: Split) -> None:
    """Write the protocol and a digest of the split it gave, to be repeated by :func:`load_protocol`."""
    record = {"protocol": protocol.to_dict(), "sizes": split.sizes(), "split_sha256": split_digest(split)}
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def load_protocol(path: str | Path, collection: ImageCollection) -> tuple[Protocol, Split]:
    """Re-create a saved run's split, refusing when ``collection`` no longer gives the same one."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        protocol = Protocol.from_dict(record["protocol"])
        expected = str(record["split_sha256"])
    except OSError as exc:
        raise DahpError(f"cannot read protocol record {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DahpError(f"{path} is not a protocol record (expected protocol and split_sha256): {exc}") from None
    split = protocol.split(collection)
    if split_digest(split) != expected:
        raise DahpError(
            f"{path}: protocol {protocol.name} (seed {protocol.seed}) now splits {collection.source} differently "
            f"(sizes {split.sizes()}, saved {record.get('sizes')}): the images or their order changed"
        )
    return protocol, split


def describe(collection: ImageCollection, split: Split) -> str:
    """A text table of split sizes per class, to check a protocol before any training starts."""
    sets = {"query": split.query, "train": split.train, "database": split.database, "all": np.arange(len(collection))}
    per_class = {name: collection.labels[indices].sum(axis=0) for name, indices in sets.items()}
    multi = bool((collection.labels.sum(axis=1) != 1).any())
    lines = [f"{collection.source}: {len(collection)} images, {collection.num_classes} classes"]
    if collection.partition is not None:
        parts, counts = np.unique(collection.partition, return_counts=True)
        lines.append("partition: " + ", ".join(f"{p} {c}" for p, c in zip(parts.tolist(), counts.tolist())))
    if collection.skipped:
        lines.append(f"skipped {len(collection.skipped)} unreadable images, e.g. {collection.skipped[0][0]}")
    if multi:
        lines.append("multi-label: a class row counts the images carrying that label, so rows overlap")
    rows = [["class", *sets]]
    rows += [[name, *(str(per_class[s][c]) for s in sets)] for c, name in enumerate(collection.class_names)]
    rows.append(["images", *(str(len(indices)) for indices in sets.values())])
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:]))]))
    return "\n".join(lines)
