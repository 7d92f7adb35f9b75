"""Retrieval metrics over packed binary codes.

Conventions (the deep-hashing field's, as in the DPSH / HashNet evaluation code):

* Ranking: ascending Hamming distance; ties are broken by database order (a
  stable sort, the lower database index first).  With short codes many items tie,
  so this choice measurably changes mAP and is fixed here for reproducibility.
* Relevance: same class for 1-D class ids; at least one shared label for 2-D
  multi-hot label matrices.
"""

from __future__ import annotations

import numpy as np

from dahp.codes import hamming_distance
from dahp.errors import DahpError


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2):
        raise DahpError(
            f"{name}: expected 1-D class ids (n,) or a 2-D multi-hot matrix (n, K), "
            f"got shape {labels.shape}"
        )
    return labels


def _check_label_pair(
    query_labels: np.ndarray, database_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    query_labels = _check_labels(query_labels, "query labels")
    database_labels = _check_labels(database_labels, "database labels")
    if query_labels.shape[1:] != database_labels.shape[1:]:  # also catches 1-D vs 2-D
        raise DahpError(
            f"query and database labels must have the same form, got shapes "
            f"{query_labels.shape} and {database_labels.shape}"
        )
    return query_labels, database_labels


def relevance(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """``(q, n)`` bool: is database item j relevant to query i?

    Labels are either 1-D int class ids ``(n,)`` (relevant = same class) or 2-D
    multi-hot 0/1 matrices ``(n, K)`` (relevant = share at least one label).
    """
    query_labels, database_labels = _check_label_pair(query_labels, database_labels)
    if query_labels.ndim == 1:
        return query_labels[:, None] == database_labels[None, :]
    # float32 matmul is exact for counts below 2**24 and far faster than integer matmul.
    shared = (query_labels != 0).astype(np.float32) @ (database_labels != 0).astype(np.float32).T
    return shared > 0


def mean_average_precision(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    top_k: int | None = None,
    chunk_size: int = 256,
) -> float:
    """mAP@K of Hamming ranking over packed codes (``top_k=None``: the whole database).

    AP@K of a query = (1 / R_K) * sum of precision@r over relevant ranks r <= K,
    where R_K is the number of relevant items within the top K (normalising by
    relevant *retrieved*, as the DPSH / HashNet code does).  A query with no
    relevant item in its top K has AP 0 and still counts in the mean, so the
    score cannot be inflated by queries that retrieve nothing.

    Queries are processed ``chunk_size`` at a time, so memory is
    ``O(chunk_size * database size)``.
    """
    query_labels, database_labels = _check_label_pair(query_labels, database_labels)
    if len(query_codes) == 0 or len(database_codes) == 0:
        raise DahpError(
            f"need at least one query and one database item, got {len(query_codes)} "
            f"queries and {len(database_codes)} database items"
        )
    if len(query_codes) != len(query_labels):
        raise DahpError(f"{len(query_codes)} query codes but {len(query_labels)} query labels")
    if len(database_codes) != len(database_labels):
        raise DahpError(
            f"{len(database_codes)} database codes but {len(database_labels)} database labels"
        )
    if bits < 1:
        raise DahpError(f"bits must be >= 1, got {bits}")
    if np.shape(query_codes)[1:] != ((bits + 7) // 8,):
        raise DahpError(
            f"{bits}-bit codes need {(bits + 7) // 8} bytes per code, got query codes of shape "
            f"{np.shape(query_codes)}"
        )
    if top_k is not None and top_k < 1:
        raise DahpError(f"top_k must be >= 1 or None (all), got {top_k}")
    if chunk_size < 1:
        raise DahpError(f"chunk_size must be >= 1, got {chunk_size}")

    n_database = len(database_codes)
    k = n_database if top_k is None else min(top_k, n_database)
    # Distances are at most 8 bits per byte; a uint8/uint16 key makes numpy's
    # stable sort a radix (counting) sort, linear in the database size.
    key_dtype = np.min_scalar_type(8 * np.shape(query_codes)[1])
    precision_denominator = np.arange(1, k + 1, dtype=np.float64)

    total = 0.0
    for start in range(0, len(query_codes), chunk_size):
        stop = start + chunk_size
        distances = hamming_distance(query_codes[start:stop], database_codes).astype(key_dtype)
        ranking = np.argsort(distances, axis=1, kind="stable")[:, :k]
        relevant = relevance(query_labels[start:stop], database_labels)
        hits = np.take_along_axis(relevant, ranking, axis=1)
        hits_so_far = np.cumsum(hits, axis=1, dtype=np.int32)
        precision_sum = np.where(hits, hits_so_far / precision_denominator, 0.0).sum(axis=1)
        retrieved_relevant = hits_so_far[:, -1]
        total += np.divide(
            precision_sum,
            retrieved_relevant,
            out=np.zeros_like(precision_sum),
            where=retrieved_relevant > 0,
        ).sum()
    return float(total / len(query_codes))
