"""Retrieval metrics over packed binary codes.

Conventions (the deep-hashing field's, as in the DPSH / HashNet evaluation code):

* Ranking: ascending Hamming distance; ties are broken by database order (a
  stable sort, the lower database index first).  With short codes many items tie,
  so this choice measurably changes mAP and is fixed here for reproducibility.
  ``mean_average_precision(..., ties="expected")`` gives the tie-aware value
  instead: the exact expectation over random orderings inside each tie group.
* Relevance: same class for 1-D class ids; at least one shared label for 2-D
  multi-hot label matrices.
* Every query counts in every mean: a query with nothing inside a Hamming radius
  has precision 0 there, a query with no relevant database item has recall 0
  and AP 0.  N (and K) larger than the database are capped at its size.

Hamming distances take only ``bits + 1`` values, so every metric is derived from
one pass per chunk of queries (:class:`_ChunkRanking`): per-distance item counts
plus the ranks of the relevant items in the database-order ranking.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dahp.codes import hamming_distance
from dahp.errors import DahpError

TIES = ("database-order", "expected")
DEFAULT_N_VALUES = tuple(range(1, 1001))  # the P@N grid of the paper's figures
# Small chunks keep each chunk's distance and order arrays cache-friendly: 64 queries ran
# ~1.4x faster than 256 on the 1,000 x 59,000 benchmark (benchmarks/evaluation_speed.py).
DEFAULT_CHUNK_SIZE = 64

CONVENTIONS = {
    "relevance": "same class (1-D labels) or at least one shared label (multi-hot)",
    "ranking": "ascending Hamming distance, ties broken by database order (lower index first)",
    "map": "AP@K normalised by the relevant items retrieved in the top K; a query with none scores 0 and counts",
    "map_expected": "exact expectation of the same AP@K over uniformly random orderings inside each "
    "tie group (McSherry & Najork, ECIR 2008)",
    "chance_map": "exact expected mAP@K of a uniformly random ranking of the database (per query from its "
    "number of relevant items); chance_precision: the mean fraction of relevant database items",
    "empty_radius": "a query with nothing within the Hamming radius has precision 0 and counts (DPSH/HashNet)",
    "no_relevant": "a query with no relevant database item has recall 0 and AP 0 and counts",
    "cap": "N and K larger than the database are capped at the database size; radius at bits",
}


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


def _relevance_in_rank_order(query_labels: np.ndarray, database_labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``relevance(...)`` with each row permuted by ``order``.

    For class ids the labels are gathered rather than a bool matrix: a gather from the
    small label table stays in cache.
    """
    if query_labels.ndim == 1:
        return database_labels[order] == query_labels[:, None]
    return np.take_along_axis(relevance(query_labels, database_labels), order, axis=1)


class _ChunkRanking:
    """A chunk of queries ranked against the whole database, in the compact form all metrics need.

    ``cum_total[q, d]`` / ``cum_relevant[q, d]``: items / relevant items at distance ``<= d``;
    ``n_relevant[q]``: relevant items in the database.  The 0-based ranks of the relevant
    items (database-order ties) are kept as sorted keys ``q * n_database + rank``, so
    "hits in the top N" for any N is one ``searchsorted``.
    """

    def __init__(
        self,
        query_codes: np.ndarray,
        database_codes: np.ndarray,
        query_labels: np.ndarray,
        database_labels: np.ndarray,
        bits: int,
    ) -> None:
        n_queries, self.n_database = len(query_codes), len(database_codes)
        # A uint8 key (uint16 past 255 bits) makes numpy's stable argsort a counting (radix)
        # sort: one linear pass per row instead of a comparison sort.
        distances = hamming_distance(query_codes, database_codes).astype(np.min_scalar_type(bits))
        order = np.argsort(distances, axis=1, kind="stable")
        self._hit_keys = np.flatnonzero(_relevance_in_rank_order(query_labels, database_labels, order))
        del order
        # Row by row: each row's bincount stays in cache, which beats one flat bincount.
        total = np.stack([np.bincount(row, minlength=bits + 1) for row in distances])
        self.cum_total = np.cumsum(total, axis=1)
        self._row_starts = np.searchsorted(self._hit_keys, np.arange(n_queries + 1) * self.n_database)
        self.n_relevant = np.diff(self._row_starts)
        self.cum_relevant = self.hits_in_top(self.cum_total)

    def hits_in_top(self, cutoffs: np.ndarray) -> np.ndarray:
        """Relevant items within the top ``cutoffs[q, j]`` ranks of query q (cutoffs ``<= n_database``)."""
        cutoffs = np.asarray(cutoffs).reshape(len(self.n_relevant), -1)
        targets = np.arange(len(self.n_relevant))[:, None] * self.n_database + cutoffs
        return np.searchsorted(self._hit_keys, targets) - self._row_starts[:-1, None]

    def average_precision(self, k: int) -> np.ndarray:
        """Per-query AP@k with database-order ties: mean of precision at each relevant rank ``<= k``."""
        rows = np.repeat(np.arange(len(self.n_relevant)), self.n_relevant)  # keys are sorted by row
        ranks = self._hit_keys - rows * self.n_database
        nth_hit = np.arange(1, len(ranks) + 1) - self._row_starts[rows]
        precision = np.where(ranks < k, nth_hit / (ranks + 1.0), 0.0)
        precision_sum = np.bincount(rows, weights=precision, minlength=len(self.n_relevant))
        retrieved = self.hits_in_top(np.full(len(self.n_relevant), k))[:, 0]
        return _safe_divide(precision_sum, retrieved)

    def expected_average_precision(self, k: int) -> np.ndarray:
        """Per-query expected AP@k over uniformly random orderings inside each tie group, exactly."""
        return _expected_average_precision(self.cum_total, self.cum_relevant, self.n_database, k)

    def precision_recall_by_radius(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-query ``(q, bits + 1)`` precision and recall of the set {distance <= r}."""
        precision = _safe_divide(self.cum_relevant, self.cum_total)
        recall = _safe_divide(self.cum_relevant, self.n_relevant[:, None])
        return precision, recall

    def precision_recall_at(self, cutoffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-query ``(q, len(cutoffs))`` precision and recall of the top ``cutoffs`` ranks."""
        hits = self.hits_in_top(np.broadcast_to(cutoffs, (len(self.n_relevant), len(cutoffs))))
        return hits / cutoffs, _safe_divide(hits, self.n_relevant[:, None])


def _expected_average_precision(
    cum_total: np.ndarray, cum_relevant: np.ndarray, n_database: int, k: int
) -> np.ndarray:
    """Per-query expected AP@k over uniformly random orderings inside each tie group, exactly.

    ``cum_total[q, d]`` / ``cum_relevant[q, d]``: query q's items / relevant items in tie
    groups 0..d (distance ``<= d``).  Groups wholly inside the top k contribute their
    expected precision sum (:func:`_expected_precision_sum`).  Of the group straddling
    rank k only its first ``m`` items count; the number x of relevant ones among them is
    hypergeometric, and given x both the normaliser (relevant retrieved) and the group's
    expected sum are fixed, so E[AP@k] = sum_x P(x) * (full-group sum + boundary sum | x) / (relevant before + x).
    """
    n_queries = len(cum_total)
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n_database + 1))))
    log_factorial = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n_database + 1)))))
    before_total = np.pad(cum_total[:, :-1], ((0, 0), (1, 0)))
    before_relevant = np.pad(cum_relevant[:, :-1], ((0, 0), (1, 0)))
    total = cum_total - before_total
    relevant = cum_relevant - before_relevant

    boundary = np.argmax(cum_total >= k, axis=1)  # first distance reaching rank k
    whole = np.arange(total.shape[1]) < boundary[:, None]
    whole_sum = np.where(
        whole, _expected_precision_sum(before_total, before_relevant, total, relevant, harmonic), 0.0
    ).sum(axis=1, keepdims=True)

    rows = np.arange(n_queries)
    n_before = before_total[rows, boundary][:, None]
    relevant_before = before_relevant[rows, boundary][:, None]
    group = total[rows, boundary][:, None]
    group_relevant = relevant[rows, boundary][:, None]
    taken = k - n_before
    low = np.maximum(0, taken - (group - group_relevant))
    high = np.minimum(group_relevant, taken)
    x = low + np.arange(int((high - low).max()) + 1)
    possible = x <= high
    x = np.minimum(x, high)  # keep table indices valid; impossible entries get weight 0

    def log_choose(n: np.ndarray, r: np.ndarray) -> np.ndarray:
        return log_factorial[n] - log_factorial[r] - log_factorial[n - r]

    log_probability = (
        log_choose(group_relevant, x) + log_choose(group - group_relevant, taken - x) - log_choose(group, taken)
    )
    probability = np.where(possible, np.exp(log_probability), 0.0)
    boundary_sum = _expected_precision_sum(n_before, relevant_before, taken, x, harmonic)
    conditional = _safe_divide(whole_sum + boundary_sum, relevant_before + x)
    return (probability * conditional).sum(axis=1)


def _random_ranking_average_precision(n_relevant: np.ndarray, n_database: int, k: int) -> np.ndarray:
    """Per-query expected AP@k of a uniformly random ranking: the whole database as one tie group.

    Only a query's count R of relevant items matters, so each distinct R is computed once.
    For k = N it is the closed form a + (1 - a) H_N / N with a = (R - 1) / (N - 1) and H_N
    the N-th harmonic number: R/N plus a small-sample term (1/N when R = 1 ... 0 when R = N).
    """
    counts, inverse = np.unique(np.asarray(n_relevant, dtype=np.int64), return_inverse=True)
    per_count = _expected_average_precision(
        np.full((len(counts), 1), n_database, dtype=np.int64), counts[:, None], n_database, k
    )
    return per_count[inverse.reshape(-1)]


def _expected_precision_sum(
    n_before: np.ndarray, relevant_before: np.ndarray, n: np.ndarray, r: np.ndarray, harmonic: np.ndarray
) -> np.ndarray:
    """E[sum of precision@rank over the relevant items of a tie group] under a random order of the group.

    The group has ``n`` items, ``r`` relevant, after ``n_before`` items of which
    ``relevant_before`` are relevant.  A relevant item is at group position p (uniform
    on 1..n) with on average (p - 1)(r - 1)/(n - 1) relevant items ahead of it, so the sum is
    (r/n) * sum_p (relevant_before + 1 + (p - 1) a) / (n_before + p),  a = (r - 1)/(n - 1),
    which telescopes into harmonic numbers (McSherry & Najork, ECIR 2008).
    """
    slope = _safe_divide(r - 1, n - 1)
    spread = harmonic[n_before + n] - harmonic[n_before]
    per_position = n * slope + (relevant_before + 1 - slope * (n_before + 1)) * spread
    return _safe_divide(r * per_position, n)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (the empty-set conventions)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64), denominator)
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def _check_inputs(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    chunk_size: int,
    workers: int | None,
) -> tuple[np.ndarray, np.ndarray]:
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
    width, padding = (bits + 7) // 8, (1 << (-bits % 8)) - 1
    for name, codes in (("query codes", query_codes), ("database codes", database_codes)):
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.shape[1:] != (width,):
            raise DahpError(
                f"{name}: {bits}-bit codes need {width} bytes per code (a 2-D uint8 array of width {width}), "
                f"got shape {np.shape(codes)} dtype {getattr(codes, 'dtype', type(codes).__name__)}"
            )
        # Set padding bits would silently add to distances (and overflow the per-distance counts).
        if padding and np.any(codes[:, -1] & padding):
            raise DahpError(
                f"{name}: bits set beyond bit {bits}; expected packed codes with zero padding "
                f"(dahp.codes.pack_codes)"
            )
    if chunk_size < 1:
        raise DahpError(f"chunk_size must be >= 1, got {chunk_size}")
    if workers is not None and workers < 1:
        raise DahpError(f"workers must be >= 1 or None (all available cores), got {workers}")
    if query_labels.ndim == 2:
        return query_labels != 0, database_labels != 0
    # Dense class ids in the narrowest dtype make the per-chunk label gather several times cheaper.
    _, class_ids = np.unique(np.concatenate([query_labels, database_labels]), return_inverse=True)
    class_ids = class_ids.astype(np.min_scalar_type(class_ids.max()))
    return class_ids[: len(query_labels)], class_ids[len(query_labels) :]


def _check_top_k(top_k: int | None, n_database: int) -> int:
    if top_k is not None and top_k < 1:
        raise DahpError(f"top_k must be >= 1 or None (all), got {top_k}")
    return n_database if top_k is None else min(top_k, n_database)


def _check_n_values(n_values: Sequence[int]) -> np.ndarray:
    values = np.asarray(n_values)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer) or values.min() < 1:
        raise DahpError(f"n_values: expected a non-empty 1-D sequence of integers >= 1, got {n_values!r}")
    return values


def _check_radius(radius: int, bits: int) -> int:
    if radius < 0:
        raise DahpError(f"radius must be >= 0, got {radius}")
    return min(radius, bits)


def _query_means(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    per_query: Callable[[_ChunkRanking], dict[str, np.ndarray]],
    chunk_size: int,
    workers: int | None,
) -> dict[str, np.ndarray]:
    """Mean over all queries of each per-query array ``per_query`` derives from a chunk's ranking.

    Memory is ``O(workers * chunk_size * database size)``; chunks run on ``workers``
    threads (numpy releases the GIL in the heavy loops), ``None`` meaning every core
    this process may use.
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def chunk_sums(start: int) -> dict[str, np.ndarray]:
        stop = start + chunk_size
        ranking = _ChunkRanking(
            query_codes[start:stop], database_codes, query_labels[start:stop], database_labels, bits
        )
        return {name: values.sum(axis=0) for name, values in per_query(ranking).items()}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(chunk_sums, range(0, len(query_codes), chunk_size)))
    return {name: sum(part[name] for part in parts) / len(query_codes) for name in parts[0]}


def _relevant_counts(query_labels: np.ndarray, database_labels: np.ndarray, chunk_size: int) -> np.ndarray:
    """Relevant database items per query, ``chunk_size`` queries at a time (no full relevance matrix)."""
    if query_labels.ndim == 1:
        classes, counts = np.unique(database_labels, return_counts=True)
        at = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
        return np.where(classes[at] == query_labels, counts[at], 0)
    return np.concatenate([
        relevance(query_labels[start : start + chunk_size], database_labels).sum(axis=1)
        for start in range(0, len(query_labels), chunk_size)
    ])


def chance_levels(
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    top_k: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """What a uniformly random ranking scores on this split, the floor every measured figure is read against.

    ``chance_map``: the exact expected mAP@K (``top_k=None``: all) over random orderings of
    the database, computed per query from its number of relevant items (so multi-label
    data, where that number varies, is exact too); the same value for both tie conventions.
    ``chance_precision``: the mean fraction of relevant database items per query, the
    expected precision of a random ranking at every N and every recall.
    """
    query_labels, database_labels = _check_label_pair(query_labels, database_labels)
    if len(query_labels) == 0 or len(database_labels) == 0:
        raise DahpError(
            f"need at least one query and one database item, got {len(query_labels)} "
            f"queries and {len(database_labels)} database items"
        )
    if chunk_size < 1:
        raise DahpError(f"chunk_size must be >= 1, got {chunk_size}")
    n_database = len(database_labels)
    n_relevant = _relevant_counts(query_labels, database_labels, chunk_size)
    k = _check_top_k(top_k, n_database)
    return {
        "chance_map": float(_random_ranking_average_precision(n_relevant, n_database, k).mean()),
        "chance_precision": float(np.mean(n_relevant / n_database)),
    }


def chance_map(
    query_labels: np.ndarray, database_labels: np.ndarray, top_k: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    """Expected mAP@K of a uniformly random ranking (see :func:`chance_levels`)."""
    return chance_levels(query_labels, database_labels, top_k, chunk_size)["chance_map"]


def mean_average_precision(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    top_k: int | None = None,
    chunk_size: int = 256,
    ties: str = "database-order",
    workers: int | None = None,
) -> float:
    """mAP@K of Hamming ranking over packed codes (``top_k=None``: the whole database).

    AP@K of a query = (1 / R_K) * sum of precision@r over relevant ranks r <= K,
    where R_K is the number of relevant items within the top K (normalising by
    relevant *retrieved*, as the DPSH / HashNet code does).  A query with no
    relevant item in its top K has AP 0 and still counts in the mean, so the
    score cannot be inflated by queries that retrieve nothing.

    ``ties="database-order"`` ranks equal distances by database index (the field's
    convention); ``ties="expected"`` returns the exact expectation of AP@K over
    uniformly random orderings inside each group of equal distances, which does not
    depend on how the database happens to be ordered.

    Queries are processed ``chunk_size`` at a time on ``workers`` threads (``None``: all
    available cores), so memory is ``O(workers * chunk_size * database size)``.
    """
    query_labels, database_labels = _check_inputs(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers
    )
    k = _check_top_k(top_k, len(database_codes))
    if ties not in TIES:
        raise DahpError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    method = _ChunkRanking.average_precision if ties == "database-order" else _ChunkRanking.expected_average_precision
    means = _query_means(
        query_codes, database_codes, query_labels, database_labels, bits,
        lambda ranking: {"ap": method(ranking, k)}, chunk_size, workers,
    )
    return float(means["ap"])


def _mean_curve(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    chunk_size: int,
    workers: int | None,
    curve: Callable[[_ChunkRanking], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Query-mean precision and recall arrays of a per-query ``curve``."""
    query_labels, database_labels = _check_inputs(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers
    )

    def per_query(ranking: _ChunkRanking) -> dict[str, np.ndarray]:
        precision, recall = curve(ranking)
        return {"precision": precision, "recall": recall}

    means = _query_means(
        query_codes, database_codes, query_labels, database_labels, bits, per_query, chunk_size, workers
    )
    return means["precision"], means["recall"]

def precision_recall_by_radius(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall of Hamming-ball lookup for every radius 0..bits, as two ``(bits + 1,)`` arrays.

    A query with nothing within radius r has precision 0 there and still counts
    (the DPSH / HashNet convention), so small radii are not flattered by the few
    queries that find anything; a query with no relevant item has recall 0.
    """
    return _mean_curve(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers,
        lambda ranking: ranking.precision_recall_by_radius(),
    )


def precision_recall_within_radius(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    radius: int = 2,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> tuple[float, float]:
    """Mean precision and recall of the items within Hamming ``radius`` (the paper's P@H<=2).

    Same empty-set conventions as :func:`precision_recall_by_radius`: a query with
    nothing within the radius scores precision 0 and counts.  A radius above
    ``bits`` is capped at ``bits``.
    """
    radius = _check_radius(radius, bits)
    precision, recall = precision_recall_by_radius(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers
    )
    return float(precision[radius]), float(recall[radius])


def precision_recall_by_rank(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    n_values: Sequence[int] = DEFAULT_N_VALUES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision@N and recall@N of the Hamming ranking (database-order ties) for each N in ``n_values``.

    An N larger than the database is capped at the database size, so precision@N
    stays a fraction of the items actually returned.
    """
    cutoffs = np.minimum(_check_n_values(n_values), len(database_codes))
    return _mean_curve(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers,
        lambda ranking: ranking.precision_recall_at(cutoffs),
    )


def precision_at_n(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    n_values: Sequence[int] = DEFAULT_N_VALUES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> np.ndarray:
    """Mean P@N for each N in ``n_values`` (the precision half of :func:`precision_recall_by_rank`)."""
    return precision_recall_by_rank(
        query_codes, database_codes, query_labels, database_labels, bits, n_values, chunk_size, workers
    )[0]


def evaluate(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    bits: int,
    top_k: int | None = None,
    radius: int = 2,
    n_values: Sequence[int] = DEFAULT_N_VALUES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> dict[str, Any]:
    """All retrieval metrics from one ranking pass per chunk, as a JSON-serialisable dict.

    Keys: bits, queries, database, top_k (None = all), map (database-order ties),
    map_expected (tie-aware), chance_map and chance_precision (a random ranking's expected
    mAP@K and precision, see :func:`chance_levels`), radius, precision_within_radius, recall_within_radius,
    pr_by_radius {radius, precision, recall}, precision_at_n {n, precision},
    pr_by_rank {n, precision, recall} and conventions (short strings).
    ``workers=None`` uses every core this process may run on.
    """
    query_labels, database_labels = _check_inputs(
        query_codes, database_codes, query_labels, database_labels, bits, chunk_size, workers
    )
    k = _check_top_k(top_k, len(database_codes))
    capped_radius = _check_radius(radius, bits)
    n_values = _check_n_values(n_values)
    cutoffs = np.minimum(n_values, len(database_codes))

    def per_query(ranking: _ChunkRanking) -> dict[str, np.ndarray]:
        radius_precision, radius_recall = ranking.precision_recall_by_radius()
        rank_precision, rank_recall = ranking.precision_recall_at(cutoffs)
        return {
            "map": ranking.average_precision(k),
            "map_expected": ranking.expected_average_precision(k),
            "chance_map": _random_ranking_average_precision(ranking.n_relevant, ranking.n_database, k),
            "chance_precision": ranking.n_relevant / ranking.n_database,
            "radius_precision": radius_precision,
            "radius_recall": radius_recall,
            "rank_precision": rank_precision,
            "rank_recall": rank_recall,
        }

    means = _query_means(
        query_codes, database_codes, query_labels, database_labels, bits, per_query, chunk_size, workers
    )
    return {
        "bits": int(bits),
        "queries": len(query_codes),
        "database": len(database_codes),
        "top_k": None if top_k is None else int(top_k),
        "map": float(means["map"]),
        "map_expected": float(means["map_expected"]),
        "chance_map": float(means["chance_map"]),
        "chance_precision": float(means["chance_precision"]),
        "radius": int(radius),
        "precision_within_radius": float(means["radius_precision"][capped_radius]),
        "recall_within_radius": float(means["radius_recall"][capped_radius]),
        "pr_by_radius": {
            "radius": list(range(bits + 1)),
            "precision": means["radius_precision"].tolist(),
            "recall": means["radius_recall"].tolist(),
        },
        "precision_at_n": {"n": n_values.tolist(), "precision": means["rank_precision"].tolist()},
        "pr_by_rank": {
            "n": n_values.tolist(),
            "precision": means["rank_precision"].tolist(),
            "recall": means["rank_recall"].tolist(),
        },
        "conventions": dict(CONVENTIONS),
    }
