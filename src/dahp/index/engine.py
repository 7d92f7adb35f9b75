"""Hamming search engines: the small protocol an index talks to, and its faiss backend.

An engine stores packed codes under consecutive integer ids and answers exact k-nearest
and exact fixed-radius queries. The protocol keeps the index directory independent of
the backend, so another one (a Milvus collection, say) can be added beside faiss.

The faiss backend keeps the codes once, in the ``IndexBinaryFlat`` storage of an
``IndexBinaryMultiHash``:

* **k nearest**: an exhaustive scan of the flat storage. Codes are zero-padded to a
  width faiss has a specialised popcount kernel for (:data:`FAISS_WIDTHS` bytes, e.g.
  48-bit codes -> 8 bytes); padding bits are zero in every code, so distances do not
  change. faiss gives each query one thread, so a batch of fewer queries than threads
  is instead answered by splitting the database into one shard per thread, scanned in
  parallel (faiss releases the GIL) and merged. For k <= :data:`MAX_COUNTING_K` the scan
  keeps its top k with per-distance counters instead of a heap (faster, and as exact).
* **radius**: multi-index hashing (Norouzi et al., CVPR 2012). The code is cut into
  ``m`` substrings, each the key of one hash table; by the pigeonhole principle every
  code within radius ``r`` matches the query within ``r // m`` bits on at least one
  substring, so probing those keys and verifying the candidates on the full code is
  exact. See :func:`hash_layout` for how ``m`` is chosen, and :meth:`FaissEngine.radius_method`
  for when a plain scan is cheaper.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from ..errors import DahpError
from ..serialization import atomic_write_bytes

FAISS_WIDTHS = (4, 8, 16, 20, 32, 64)
"""Code sizes in bytes with a dedicated faiss HammingComputer; other widths take a slow generic loop."""

KEY_BITS = 24
"""Target hash-key length: tables with about 2**24 buckets stay sparse up to ~16M codes, so a probe
returns about one false candidate, while the probe count for small radii stays in the tens."""

PROBE_COST = 64
"""A hash probe (lookup + candidate bookkeeping) costs about as much as scanning this many codes."""

MAX_COUNTING_K = 1024
"""faiss's counting top-k ("mc") scans about 25% faster than its heap ("hc") but holds (bits + 1) x k ids per
query; above this k the heap is used."""

MIN_SHARD_ROWS = 1 << 16
"""Below this many codes per shard, thread hand-off costs more than the scan it parallelises."""


class HammingEngine(Protocol):
    """What an index needs from a backend: exact Hamming search over packed codes with integer ids."""

    name: str
    bits: int

    @property
    def ntotal(self) -> int: ...

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        """Store packed ``(n, ceil(bits/8))`` codes under ``ids``."""

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(q, min(k, ntotal))`` distances and ids per query, rows sorted by (distance, id)."""

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, every (distance, id) with distance <= radius, sorted by (distance, id)."""

    def save(self, path: Path) -> None:
        """Write the engine's state to ``path`` atomically."""

    @classmethod
    def load(cls, path: Path, bits: int) -> HammingEngine:
        """Read what :meth:`save` wrote; DahpError if ``path`` is not such a file for ``bits``-bit codes."""

    def describe(self) -> dict[str, Any]:
        """Backend name and layout, for ``Index.info``."""


def padded_width(bits: int) -> int:
    """Bytes per code inside faiss: the smallest specialised width that holds ``bits``."""
    return next(width for width in FAISS_WIDTHS if width * 8 >= bits)


def hash_layout(bits: int) -> tuple[int, int]:
    """``(tables, key_bits)`` of the multi-index hash for ``bits``-bit codes.

    Rule: ``tables = max(1, round(whole / 24))`` substrings of ``whole // tables`` bits,
    where ``whole`` counts the bits in whole bytes (faiss reads keys least-significant bit
    first, so a partial last byte would mix in padding). Keys of about 24 bits keep the
    tables sparse at millions of codes; several tables keep the probes few: for radius 2,
    64-bit codes get 3 tables of 21 bits and need 3 probes (radius // 3 = 0 flips) instead
    of the 2,081 of a single 64-bit table. Examples: 12 -> 1x8, 32 -> 1x32, 48 -> 2x24,
    64 -> 3x21, 100 -> 4x24, 128 -> 5x25, 256 -> 11x23.
    """
    whole = bits // 8 * 8
    tables = max(1, round(whole / KEY_BITS))
    return tables, whole // tables


@cache
def _shard_pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads whose faiss calls stay single-threaded, so shards do not each start an OpenMP team."""
    return ThreadPoolExecutor(threads, thread_name_prefix="dahp-shard", initializer=faiss.omp_set_num_threads,
                              initargs=(1,))


def _sorted_rows(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns of each row after sorting by (distance, id)."""
    order = np.lexsort((ids, distances), axis=1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)


class FaissEngine:
    """Exact Hamming kNN (flat scan) and radius search (multi-index hashing) with faiss; ids are positions."""

    name = "faiss"

    def __init__(self, bits: int, threads: int | None = None, index: faiss.IndexBinaryMultiHash | None = None) -> None:
        self.bits = bits
        self.width = padded_width(bits)
        self.threads = threads or faiss.omp_get_max_threads()
        if index is None:
            index = faiss.IndexBinaryMultiHash(self.width * 8, *hash_layout(bits))
        self._index = index
        # nflip (radius) and use_heap (top-k method) are fields of the shared faiss objects: set under a lock
        self._nflip_lock = threading.Lock()
        self._heap_lock = threading.Lock()
        self._codes = self._storage_view()

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def _storage_view(self) -> np.ndarray:
        """The flat storage as a numpy view (no copy); faiss may reallocate it on add, so refresh after."""
        if self.ntotal == 0:
            return np.zeros((0, self.width), np.uint8)
        flat = faiss.rev_swig_ptr(self._index.storage.xb.data(), self.ntotal * self.width)
        return flat.reshape(self.ntotal, self.width)

    def _pad(self, codes: np.ndarray) -> np.ndarray:
        padded = np.zeros((len(codes), self.width), np.uint8)
        padded[:, : codes.shape[1]] = codes
        return padded

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        expected = np.arange(self.ntotal, self.ntotal + len(codes))
        if not np.array_equal(ids, expected):
            raise ValueError(f"the faiss engine numbers codes by position: expected ids {self.ntotal}.."
                             f"{self.ntotal + len(codes) - 1}")
        self._index.add(self._pad(codes))
        self._codes = self._storage_view()

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._pad(codes)
        k = min(k, self.ntotal)
        if len(queries) < self.threads:
            return self._search_shards(queries, k)
        with self._heap_lock:
            self._index.storage.use_heap = k > MAX_COUNTING_K
            distances, ids = self._index.storage.search(queries, k)
        return _sorted_rows(distances, ids, k)

    def _search_shards(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Few queries: scan one slice of the codes per thread, then merge the per-slice top k."""
        shards = max(1, min(self.threads, self.ntotal // MIN_SHARD_ROWS))
        bounds = np.linspace(0, self.ntotal, shards + 1).astype(np.int64).tolist()
        codes, variant = self._codes, "hc" if k > MAX_COUNTING_K else "mc"

        def scan(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            distances, ids = faiss.knn_hamming(queries, codes[start:stop], min(k, stop - start), variant)
            return distances, ids + start

        parts = list(_shard_pool(self.threads).map(scan, bounds[:-1], bounds[1:]))
        return _sorted_rows(np.hstack([d for d, _ in parts]), np.hstack([i for _, i in parts]), k)

    def probes(self, radius: int) -> int:
        """Hash-table lookups one radius query costs: every key within ``radius // tables`` flips, per table."""
        tables, key_bits = int(self._index.nhash), int(self._index.b)
        return tables * sum(math.comb(key_bits, flips) for flips in range(min(radius // tables, key_bits) + 1))

    def radius_method(self, radius: int) -> str:
        """``"hash"`` while its probes cost less than scanning every code, else ``"scan"`` (large radii, few codes)."""
        return "hash" if self.probes(radius) * PROBE_COST < self.ntotal else "scan"

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        queries = self._pad(codes)
        # faiss keeps distances strictly below its threshold, hence radius + 1
        if self.radius_method(radius) == "hash":
            with self._nflip_lock:
                self._index.nflip = min(radius // int(self._index.nhash), int(self._index.b))
                limits, distances, ids = self._index.range_search(queries, radius + 1)
        else:
            limits, distances, ids = self._index.storage.range_search(queries, radius + 1)
        results = []
        for start, stop in zip(limits[:-1], limits[1:]):
            order = np.lexsort((ids[start:stop], distances[start:stop]))
            results.append((distances[start:stop][order], ids[start:stop][order]))
        return results

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, faiss.serialize_index_binary(self._index).data)

    @classmethod
    def load(cls, path: Path, bits: int) -> FaissEngine:
        try:
            index = faiss.deserialize_index_binary(np.fromfile(path, dtype=np.uint8))
        except RuntimeError as exc:
            raise DahpError(f"{path} is not a readable faiss index ({str(exc).splitlines()[0]})") from None
        if not isinstance(index, faiss.IndexBinaryMultiHash) or index.d != padded_width(bits) * 8:
            raise DahpError(f"{path} is a {type(index).__name__} of {index.d} bits, expected an "
                            f"IndexBinaryMultiHash of {padded_width(bits) * 8} bits for {bits}-bit codes")
        return cls(bits, index=index)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "faiss_version": faiss.__version__, "padded_bytes": self.width,
                "hash_tables": int(self._index.nhash), "hash_key_bits": int(self._index.b)}


class _Engines(Mapping[str, type[HammingEngine]]):
    """Backend classes by name, each imported on first lookup: opening a faiss index never imports pymilvus."""

    def __init__(self, homes: dict[str, str]) -> None:
        self._homes = homes

    def __getitem__(self, name: str) -> type[HammingEngine]:
        module, _, attribute = self._homes[name].partition(":")
        return getattr(import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self._homes)

    def __len__(self) -> int:
        return len(self._homes)


ENGINES: Mapping[str, type[HammingEngine]] = _Engines({FaissEngine.name: f"{__name__}:FaissEngine",
                                                        "milvus": f"{__package__}.milvus:MilvusEngine"})
"""Backends by the name an index manifest records."""
