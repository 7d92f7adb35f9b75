"""Seeded query / train / database splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DahpError


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
