"""Milvus backend: the index's codes in a Milvus collection, for databases that outgrow one machine's memory.

The collection holds one row per code: the primary key ``id`` is the index's item id and
``code`` a ``BINARY_VECTOR`` of ``8 * ceil(bits / 8)`` dimensions (Milvus needs a multiple
of 8), searched exhaustively (``BIN_FLAT``) with the ``HAMMING`` metric, so results are exact.
The packed bytes of :func:`dahp.codes.pack_codes` go in unchanged: Hamming distance is a
byte-wise XOR + popcount, so Milvus's bit order inside a byte does not matter, and the
zero padding bits add nothing.

**Where the codes live.** ``uri`` is a Milvus server (``http://host:19530``) or a Milvus Lite
file (``*.db``, embedded; one process at a time may open it). ``Index.build`` defaults to
the Lite file ``NAME.milvus.db`` *beside* the index directory ``NAME``, not inside it: a
build fills a staging directory that is renamed into place, and a running Lite server
cannot follow its file through that rename. Each build writes a new collection
(``dahp_<random hex>``), so a crashed or replaced build never touches the collection the
live index reads; the replaced index's collection is left in the database.

**The manifest stays the source of truth.** The engine file of each generation is a small
JSON pointer (uri, collection, bits, committed count). Milvus rows are visible the moment
they are inserted, before the index commits, so the engine answers only for ids below its
count: every search filters ``id < count``. Crash story of ``add``: rows are inserted, the
new pointer and metadata are written, and replacing ``manifest.json`` commits. If the
process dies before that, the old manifest names the old pointer, whose count excludes the
new rows, so the old index answers exactly as before; the next ``add`` deletes every row
at or above the committed count before inserting (Milvus does not deduplicate primary keys
on insert), so the orphans never surface. Searches use strong consistency, so rows an add
committed in another process are seen.

**Exact ties.** Results equal the faiss backend's: rows sorted by (distance, id), and the k
nearest are the first k in that order (the smallest ids among codes tied at the k-th
distance). Milvus orders and picks tied hits arbitrarily, so :meth:`MilvusEngine.search`
asks for k + 1; when the extra hit ties with the k-th, it fetches every code at that
distance with a range search and keeps the smallest ids. Milvus returns at most
:data:`MAX_TOPK` hits per query; a range search that reaches that cap is split into halves
(by distance, then by id) until each part comes back complete.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from ..errors import DahpError
from ..serialization import atomic_write_bytes

if TYPE_CHECKING:
    from pymilvus import MilvusClient

POINTER_FORMAT = "dahp-milvus"
ID_FIELD, VECTOR_FIELD = "id", "code"
SERVER_SCHEMES = ("http", "https", "tcp", "grpc", "unix")
"""URI schemes pymilvus sends to a server; anything else is a Milvus Lite file."""

MAX_TOPK = 16384
"""Milvus's limit on hits per query (topk, also a range search's limit; see milvus.io/docs/limitations.md)."""

FIRST_PAGE = 1024
"""Hits a range search asks for first: Milvus Lite answers limit 16,384 about 3x slower than 1,024."""

MAX_NQ = 16384
"""Milvus's limit on query vectors per search request (nq)."""

HITS_PER_REQUEST = 1 << 20
"""Queries go in chunks of at most this many requested hits (nq x limit): replies stay well under Milvus's 64 MB."""

INSERT_ROWS = 2048
"""Rows per insert request: pymilvus packs row inserts in time quadratic in the request size."""

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a Milvus server before reporting it unreachable."""

_LITE_NAME = re.compile(r"^[A-Za-z0-9.\-_]{1,33}\.db$")
"""Milvus Lite's rule for database file names: at most 36 characters of these, ending in ``.db``."""


def _pymilvus() -> ModuleType:
    """pymilvus, imported on first use so that dahp runs without the ``milvus`` extra."""
    try:
        import pymilvus
    except ImportError as exc:
        raise DahpError(f"the milvus backend needs pymilvus ({exc}): pip install 'dahp[milvus]'") from None
    return pymilvus


def _is_lite(uri: str) -> bool:
    return urlparse(uri).scheme.lower() not in SERVER_SCHEMES


def _connect(uri: str) -> MilvusClient:
    """A client for a server URI or a Milvus Lite file (started in this process)."""
    pymilvus = _pymilvus()
    if _is_lite(uri):
        path = Path(uri)
        if not _LITE_NAME.match(path.name):
            raise DahpError(f"{uri}: a Milvus Lite database must be a file named like 'NAME.db', at most 36 "
                            "characters of letters, digits, '.', '-' and '_' (choose one with --uri)")
        if not path.parent.is_dir():
            raise DahpError(f"{uri}: the directory {path.parent} of the Milvus Lite database does not exist")
    try:
        return pymilvus.MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT)
    except ImportError as exc:  # pymilvus imports milvus_lite only to open a .db file
        raise DahpError(f"opening the Milvus Lite database {uri} needs milvus-lite ({exc}): "
                        "pip install 'dahp[milvus]'") from None
    except pymilvus.MilvusException as exc:
        if _is_lite(uri):
            raise DahpError(f"cannot open the Milvus Lite database {uri} ({exc.message}): another process may have "
                            "it open (Milvus Lite serves one process per file; share an index through a Milvus "
                            "server URI)") from None
        raise DahpError(f"cannot reach Milvus at {uri} ({exc.message})") from None


def _dimension(bits: int) -> int:
    """Milvus binary vectors have a multiple of 8 dimensions: the packed code's bytes."""
    return (bits + 7) // 8 * 8


def _halves(low: int, high: int, first: int, stop: int) -> tuple[tuple[int, int, int, int], ...]:
    """Split a (distance range, id range) box in two: by distance while it spans several, else by id."""
    if low < high:
        middle = (low + high) // 2
        return (low, middle, first, stop), (middle + 1, high, first, stop)
    middle = (first + stop) // 2
    return (low, high, first, middle), (low, high, middle, stop)


def _arrays(hits: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) arrays of (distance, id) hits, typed like FaissEngine.search's."""
    return np.array([d for d, _ in hits], np.int32), np.array([i for _, i in hits], np.int64)


class MilvusEngine:
    """Exact Hamming kNN and radius search in a Milvus collection (BIN_FLAT, HAMMING); see the module docstring."""

    name = "milvus"

    def __init__(self, client: MilvusClient, uri: str, collection: str, bits: int, count: int) -> None:
        self._client = client
        self.uri = uri
        self.collection = collection
        self.bits = bits
        self.dimension = _dimension(bits)
        self._count = count

    @classmethod
    def create(cls, bits: int, uri: str | None, index_dir: Path) -> MilvusEngine:
        """An empty engine for a new index at ``index_dir``; its collection is created by the first add,
        so a build that fails before then leaves nothing behind in Milvus.

        ``uri`` defaults to the Milvus Lite file ``NAME.milvus.db`` beside ``index_dir``.
        """
        if uri is None:
            uri = str(index_dir.with_name(f"{index_dir.name}.milvus.db"))
        if _is_lite(uri):
            uri = os.path.abspath(uri)
        return cls(_connect(uri), uri, f"dahp_{uuid.uuid4().hex}", bits, 0)

    @property
    def ntotal(self) -> int:
        return self._count

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client call whose Milvus errors become DahpError naming the database."""
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except _pymilvus().MilvusException as exc:
            raise DahpError(f"Milvus at {self.uri}, collection {self.collection}: {method} failed "
                            f"({exc.message})") from None

    def _create_collection(self) -> None:
        pymilvus = _pymilvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, pymilvus.DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, pymilvus.DataType.BINARY_VECTOR, dim=self.dimension)
        index = self._client.prepare_index_params()
        index.add_index(VECTOR_FIELD, index_type="BIN_FLAT", metric_type="HAMMING")
        self._call("create_collection", self.collection, schema=schema, index_params=index,
                   consistency_level="Strong")

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        expected = np.arange(self._count, self._count + len(codes))
        if not np.array_equal(ids, expected):
            raise ValueError(f"the milvus engine treats ids from its count on as uncommitted: expected ids "
                             f"{self._count}..{self._count + len(codes) - 1}")
        if not self._call("has_collection", self.collection):
            self._create_collection()
        # leftovers of an add that crashed before its commit: Milvus would keep both rows of a reused id
        self._call("delete", self.collection, filter=f"{ID_FIELD} >= {self._count}")
        for start in range(0, len(codes), INSERT_ROWS):
            rows = [{ID_FIELD: int(i), VECTOR_FIELD: code.tobytes()}
                    for i, code in zip(ids[start:start + INSERT_ROWS], codes[start:start + INSERT_ROWS])]
            self._call("insert", self.collection, rows)
        self._count += len(codes)

    def _request(self, vectors: list[bytes], limit: int, params: dict[str, int], first: int,
                 stop: int) -> list[list[tuple[int, int]]]:
        """Per query, the (distance, id) hits of a Milvus search among ids ``first <= id < stop``, in Milvus's order."""
        per_request = max(1, min(MAX_NQ, HITS_PER_REQUEST // limit))
        rows = []
        for start in range(0, len(vectors), per_request):
            result = self._call("search", self.collection, data=vectors[start:start + per_request], limit=limit,
                                anns_field=VECTOR_FIELD, search_params={"metric_type": "HAMMING", "params": params},
                                filter=f"{ID_FIELD} >= {first} and {ID_FIELD} < {stop}", consistency_level="Strong")
            rows.extend([(round(d), int(i)) for d, i in zip(hits.distances, hits.ids)] for hits in result)
        return rows

    def _within(self, vectors: list[bytes], low: int, high: int, first: int = 0, stop: int | None = None,
                limit: int | None = None) -> list[list[tuple[int, int]]]:
        """Per query, every (distance, id) with ``low <= distance <= high`` and ``first <= id < stop`` (default:
        the committed ids), unsorted.

        A range search returning ``limit`` hits may have left some out. The first asks for
        :data:`FIRST_PAGE` hits (a large limit costs Milvus time even when few codes match); queries
        that fill it are asked again for :data:`MAX_TOPK`, and a query that fills that has its box
        halved until every part comes back below the cap.
        """
        stop = self._count if stop is None else stop
        limit = min(FIRST_PAGE, MAX_TOPK) if limit is None else limit
        # Milvus's HAMMING range search keeps range_filter <= distance < radius
        rows = self._request(vectors, limit, {"radius": high + 1, "range_filter": low}, first, stop)
        full = [q for q, row in enumerate(rows) if len(row) == limit]
        if full and limit < MAX_TOPK:
            for q, row in zip(full, self._within([vectors[q] for q in full], low, high, first, stop, MAX_TOPK)):
                rows[q] = row
        else:
            for q in full:
                parts = [self._within([vectors[q]], *box)[0] for box in _halves(low, high, first, stop)]
                rows[q] = [hit for part in parts for hit in part]
        return rows

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._count)
        if k > MAX_TOPK:
            raise DahpError(f"k={k}: Milvus returns at most {MAX_TOPK} nearest codes per query; ask for fewer, "
                            "or page through them with a radius search")
        distances, ids = np.zeros((len(codes), k), np.int32), np.zeros((len(codes), k), np.int64)
        if k == 0 or len(codes) == 0:
            return distances, ids
        vectors = [code.tobytes() for code in codes]
        limit = min(k + 1, MAX_TOPK)
        rows = [sorted(row) for row in self._request(vectors, limit, {}, 0, self._count)]
        # where the hit after the k-th ties with it, Milvus may have dropped smaller ids at the k-th distance
        tied = {q: row[k - 1][0] for q, row in enumerate(rows) if len(row) == limit and row[-1][0] == row[k - 1][0]}
        for distance in set(tied.values()):
            group = [q for q, tie in tied.items() if tie == distance]
            for q, band in zip(group, self._within([vectors[q] for q in group], distance, distance)):
                rows[q] = [hit for hit in rows[q] if hit[0] < distance] + sorted(band)
        for q, row in enumerate(rows):
            distances[q], ids[q] = _arrays(row[:k])
        return distances, ids

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._count == 0 or len(codes) == 0:
            return [_arrays([]) for _ in codes]
        rows = self._within([code.tobytes() for code in codes], 0, min(radius, self.bits))
        return [_arrays(sorted(row)) for row in rows]

    def save(self, path: Path) -> None:
        """Write the pointer; a Lite path is stored relative to it, so an index moved with its database still opens."""
        uri = os.path.relpath(self.uri, path.parent) if _is_lite(self.uri) else self.uri
        pointer = {"format": POINTER_FORMAT, "uri": uri, "collection": self.collection, "bits": self.bits,
                   "dimension": self.dimension, "count": self._count}
        atomic_write_bytes(path, json.dumps(pointer, indent=2).encode() + b"\n")

    @classmethod
    def load(cls, path: Path, bits: int) -> MilvusEngine:
        try:
            pointer = json.loads(Path(path).read_bytes())
            uri, collection, count = pointer["uri"], pointer["collection"], int(pointer["count"])
            if pointer["format"] != POINTER_FORMAT:
                raise ValueError(f"format {pointer['format']!r}")
            stored_bits = pointer["bits"]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DahpError(f"{path} is not a readable dahp Milvus pointer ({type(exc).__name__}: {exc})") from None
        if stored_bits != bits:
            raise DahpError(f"{path} points to {stored_bits}-bit codes, expected {bits}-bit codes")
        if _is_lite(uri):
            uri = os.path.normpath(Path(path).parent / uri)
            if not Path(uri).is_file():
                raise DahpError(f"the Milvus Lite database {uri} of index file {path} does not exist")
        engine = cls(_connect(uri), uri, collection, bits, count)
        engine._check_collection()
        return engine

    def _check_collection(self) -> None:
        """The collection exists, is an exact Hamming index of our dimension, and holds every committed id once."""
        where = f"Milvus at {self.uri}"
        if not self._call("has_collection", self.collection):
            raise DahpError(f"{where} has no collection {self.collection}: it was dropped, or the index points to "
                            "another database")
        fields = {field["name"]: field for field in self._call("describe_collection", self.collection)["fields"]}
        vector = fields.get(VECTOR_FIELD, {})
        dimension = int(vector.get("params", {}).get("dim", 0))
        if dimension != self.dimension:
            raise DahpError(f"{where}: collection {self.collection} holds {dimension}-dimensional binary vectors, "
                            f"expected {self.dimension} for {self.bits}-bit codes")
        index = self._call("describe_index", self.collection, VECTOR_FIELD)
        if (index.get("index_type"), index.get("metric_type")) != ("BIN_FLAT", "HAMMING"):
            raise DahpError(f"{where}: collection {self.collection} has a {index.get('index_type')} "
                            f"{index.get('metric_type')} index, expected an exact BIN_FLAT HAMMING one")
        self._call("load_collection", self.collection)
        rows = self._call("query", self.collection, filter=f"{ID_FIELD} < {self._count}", output_fields=["count(*)"],
                          consistency_level="Strong")[0]["count(*)"]
        if rows != self._count:
            raise DahpError(f"{where}: collection {self.collection} holds {rows} rows with ids below "
                            f"{self._count}, the index commits {self._count} (one row per id)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pymilvus_version": _pymilvus().__version__, "uri": self.uri,
                "collection": self.collection, "dimension": self.dimension, "index_type": "BIN_FLAT",
                "metric": "HAMMING"}
