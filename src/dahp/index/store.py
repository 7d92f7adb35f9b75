"""``Index``: a directory that answers "which indexed images are nearest to this one?".

Layout of ``INDEX/``::

    manifest.json            commit record: format, code length, model fingerprint, counts, file checksums
    model.dahp               copy of the model that encoded the database: queries are encoded with it
    faiss-000002.index       engine state of generation 2 (see engine.py)
    metadata-000002.sqlite   one row per item (see metadata.py)
    .lock                    flock held by a writer

A kill at any moment leaves the old or the new index readable, and loses at most one chunk of
encoding: both ``build`` and ``add`` first commit the images' codes chunk by chunk to the work
folder ``.NAME.ingest`` beside the index, where the same command run again resumes, and which is
removed once the index is committed (see ingest.py). Then:

* ``build`` writes a complete index into a hidden sibling ``.NAME.build-HOST-PID-XXXX`` and renames it
  into place. Replacing an index takes two renames, ``INDEX -> .NAME.previous`` then
  ``staging -> INDEX``, and then deletes ``.NAME.previous``. Crash windows: (1) before the
  first rename, ``INDEX`` is untouched and a ``.NAME.build-HOST-PID-*`` directory is left, which
  the next build on that host deletes once process PID is gone;
  (2) between the renames ``INDEX`` is missing, and ``Index.load`` renames ``.NAME.previous``
  back (the old index); (3) after the second rename ``INDEX`` is the new index and the next
  build deletes the leftover ``.NAME.previous``.
* ``add`` writes generation g+1 under new file names, commits by atomically replacing
  ``manifest.json``, then deletes generation g's files. Before the commit the old manifest
  names old, untouched files (the new ones are orphans the next ``add`` deletes); after it,
  the new generation is complete.

One process may add while others search: readers keep the files they opened. Within one
process, searches may run in parallel threads, but not alongside an ``add`` on the same object.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DahpError
from ..hasher import MODEL_FILE, DeepHasher
from ..serialization import atomic_write_bytes, honour_umask, read_header
from .engine import ENGINES, FaissEngine, HammingEngine
from .ingest import Ingest, IngestOptions, ingested
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, file_record, read_manifest, verify_files, write_manifest
from .metadata import Item, Metadata
from .sharding import DEFAULT_CHUNK_SIZE

LOCK_FILE = ".lock"
TIE_ORDER_SEED = 0
_GENERATION_FILE = re.compile(r"^(\.?[a-z]+-\d{6}\.(index|sqlite).*|\.manifest\.json\..+\.tmp)$")


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its Hamming distance to the query, and what it is."""

    id: int
    distance: int
    path: str
    label: str


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DahpError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _model_identity(path: str | Path) -> tuple[str, int]:
    """(fingerprint, bits) of a model file, read from its verified header without loading the weights."""
    header, _ = read_header(path, "model")
    if not isinstance(header.get("bits"), int):
        raise DahpError(f"{path} is not a valid dahp model file (its header has no code length)")
    return header["payload_sha256"], header["bits"]


def _new_engine(backend: str, bits: int, uri: str | None, target: Path) -> HammingEngine:
    """An empty engine of ``backend`` for the index being built at ``target``; only Milvus takes a ``uri``."""
    if backend == "milvus":
        from .milvus import MilvusEngine

        return MilvusEngine.create(bits, uri, target)
    if backend != FaissEngine.name:
        raise DahpError(f"unknown backend {backend!r}: choose from {sorted(ENGINES)}")
    if uri is not None:
        raise DahpError("a uri is for the milvus backend; faiss keeps its codes in the index directory")
    return FaissEngine(bits)


def _commit(directory: Path, manifest: dict[str, Any], engine: HammingEngine, ingest: Ingest,
            base: Metadata | None, now: str) -> dict[str, Any]:
    """Append the ingest's codes to ``engine``, write the next generation's files, and commit its manifest last."""
    codes = ingest.codes()
    first = engine.ntotal
    order = tie_order(len(codes))
    engine.add(codes[order], np.arange(first, first + len(codes)))
    offsets = np.empty_like(order)
    offsets[order] = np.arange(len(order))  # the listing's image j gets id first + offsets[j]
    generation = manifest["generation"] + 1
    engine_path = directory / f"{engine.name}-{generation:06d}.index"
    metadata_path = directory / f"metadata-{generation:06d}.sqlite"
    engine.save(engine_path)
    rows = ((first + int(offsets[position]), path, label, now, thumbnail)
            for position, (path, label, thumbnail) in enumerate(ingest.entries()))
    Metadata.write(metadata_path, rows, base)
    source = {"spec": ingest.spec, "added": len(codes), "at": now,
              "skipped": [list(bad) for bad in ingest.data.skipped]}
    committed = {
        **manifest,
        "generation": generation,
        "count": engine.ntotal,
        "updated": now,
        "files": {**manifest["files"], "engine": file_record(engine_path), "metadata": file_record(metadata_path)},
        "sources": [*manifest["sources"], source],
    }
    write_manifest(directory, committed)
    return committed


def tie_order(count: int) -> np.ndarray:
    """The images of one build or add, in the order they are numbered: ``order[i]`` is the listing
    position of the image that gets the ``i``-th new id.

    Why not the listing's own order: Hamming distance ties a lot (DAHP's anchor loss puts a
    class on one code), and equally near hits come in id order. A listing walks class folders
    one after another, so in listing order the first hits among equally near ones would
    always come from the earliest folders. A fixed shuffle (seeded, so a rebuild, a resumed
    build and a sharded one number the images alike) makes them an even sample of the tie.
    """
    return np.random.default_rng(TIE_ORDER_SEED).permutation(count)


def _remove_orphans(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete generation files the manifest does not name: superseded ones, or those of an interrupted add."""
    keep = {record["name"] for record in manifest["files"].values()}
    for path in directory.iterdir():
        if path.name not in keep and _GENERATION_FILE.match(path.name):
            path.unlink(missing_ok=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive writer lock on an index directory (released when the file closes)."""
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_replaceable(target: Path) -> None:
    """Build may replace an index or fill an empty directory, never overwrite anything else."""
    if not target.exists() or (target / MANIFEST_FILE).is_file():
        return
    if not target.is_dir():
        raise DahpError(f"{target} exists and is not a directory: expected a new or existing index directory")
    if any(target.iterdir()):
        raise DahpError(f"refusing to replace {target}: it is not empty and not a dahp index (no {MANIFEST_FILE})")


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` directory to ``target``, replacing an old index (see the module docstring)."""
    backup = _backup_path(target)
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)  # left by a swap that crashed after its second rename
        with _locked(target):
            os.rename(target, backup)
            os.rename(staging, target)
    else:
        os.rename(staging, target)
    _fsync_directory(target.parent)
    shutil.rmtree(backup, ignore_errors=True)


_HOST = socket.gethostname().replace("-", "_")


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.build-"


def _remove_abandoned_builds(target: Path) -> None:
    """Delete the staging folders of killed builds of ``target`` (crash window 1).

    A staging folder is named after the host and process that writes it; it is abandoned
    when that process no longer runs on this host. Folders of other hosts (a shared disk)
    are left alone, since their processes cannot be checked from here.
    """
    for staging in target.parent.glob(f"{glob.escape(_staging_prefix(target))}*"):
        host, _, rest = staging.name.removeprefix(_staging_prefix(target)).partition("-")
        pid = rest.partition("-")[0]
        if host == _HOST and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _recover_interrupted_swap(target: Path) -> None:
    """Crash window (2): the old index sits in ``.NAME.previous`` and ``target`` is gone; put it back."""
    backup = _backup_path(target)
    if not target.exists() and backup.is_dir():
        try:
            os.rename(backup, target)
        except FileNotFoundError:
            pass  # another process recovered it first


class Index:
    """A searchable index directory; make one with :meth:`build`, open one with :meth:`load`."""

    def __init__(self, path: Path, manifest: dict[str, Any], engine: HammingEngine, metadata: Metadata,
                 device: str, hasher: DeepHasher | None = None) -> None:
        self.path = path
        self._manifest = manifest
        self._engine = engine
        self._metadata = metadata
        self._device = device
        self._hasher = hasher
        self._hasher_lock = threading.Lock()

    @property
    def bits(self) -> int:
        return int(self._manifest["bits"])

    @property
    def count(self) -> int:
        return int(self._manifest["count"])

    # --- writing -----------------------------------------------------------------------

    @classmethod
    def build(cls, model_path: str | Path, images_spec: str, out_dir: str | Path, *, batch_size: int = 256,
              workers: int = 0, skip_bad: bool = False, image_root: str | Path | None = None,
              cache_dir: str | Path | None = None, device: str = "auto", progress: bool = True,
              backend: str = "faiss", uri: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
              shards: int = 1) -> Index:
        """Encode every image of ``images_spec`` with the model and write a new index to ``out_dir``.

        An existing index at ``out_dir`` is replaced atomically; any other non-empty path is refused.
        Encoding is committed in chunks of ``chunk_size`` images to the work folder ``.NAME.ingest``,
        so a killed build called again with the same arguments resumes (:mod:`dahp.index.ingest`).
        With ``shards`` > 1 this process is shard 0 of that many: it encodes its share and waits for
        the others' (:func:`dahp.index.ingest.encode_shard`, or ``dahp index build`` under torchrun).
        ``backend`` "faiss" keeps the codes in the index directory; "milvus" keeps them in a Milvus
        collection at ``uri`` (a server URL or a Milvus Lite ``.db`` file; default: a Lite file
        ``NAME.milvus.db`` beside the index directory, see :mod:`dahp.index.milvus`).
        """
        target = Path(out_dir)
        _check_replaceable(target)
        options = IngestOptions(chunk_size, batch_size, workers, skip_bad, image_root, cache_dir, progress)
        try:
            model_bytes = Path(model_path).read_bytes()
        except OSError as exc:
            raise DahpError(f"{model_path}: cannot read the model file ({exc.strerror})") from None
        hasher = DeepHasher.load(model_path, device=device)
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(target)
        engine = _new_engine(backend, hasher.bits, uri, target)  # before encoding: a bad URI fails fast
        with ingested(hasher, images_spec, target, options, shards) as ingest:
            # staged only now, so a kill while encoding leaves the resumable chunks and nothing else
            staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(target)}{_HOST}-{os.getpid()}-",
                                            dir=target.parent))
            honour_umask(staging, directory=True)
            try:
                atomic_write_bytes(staging / MODEL_FILE, model_bytes)
                if _model_identity(staging / MODEL_FILE) != (hasher.fingerprint_, hasher.bits):
                    raise DahpError(f"{model_path} changed while the index was being built: run the build again")
                now = _utc_now()
                empty = {"format": FORMAT, "format_version": FORMAT_VERSION, "index_id": uuid.uuid4().hex,
                         "generation": 0, "bits": hasher.bits, "model_fingerprint": hasher.fingerprint_,
                         "backend": engine.name, "count": 0, "created": now, "updated": now,
                         "files": {"model": file_record(staging / MODEL_FILE)}, "sources": []}
                manifest = _commit(staging, empty, engine, ingest, None, now)
                _swap_into_place(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return cls(target, manifest, engine, Metadata(target / manifest["files"]["metadata"]["name"]), device, hasher)

    def add(self, images_spec: str, *, batch_size: int = 256, workers: int = 0, skip_bad: bool = False,
            image_root: str | Path | None = None, cache_dir: str | Path | None = None, progress: bool = True,
            model: str | Path | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, shards: int = 1) -> int:
        """Append the images of ``images_spec`` (ids continue after the last one); returns how many were added.

        They are encoded with the index's own model; ``model``, if given, must be that same model
        (a guard for scripts that keep a model path beside the index path). Encoding resumes and
        shards as in :meth:`build`.
        """
        options = IngestOptions(chunk_size, batch_size, workers, skip_bad, image_root, cache_dir, progress)
        if model is not None:
            fingerprint, _ = _model_identity(model)
            if fingerprint != self._manifest["model_fingerprint"]:
                raise DahpError(f"{model} is not the model index {self.path} was built with (fingerprint "
                                f"{fingerprint[:12]}, the index has {self._manifest['model_fingerprint'][:12]}): "
                                "codes of different models are not comparable; rebuild with `dahp index build`")
        hasher = self._model()
        with _locked(self.path):
            on_disk = read_manifest(self.path)
            if (on_disk["index_id"], on_disk["generation"]) != (self._manifest["index_id"],
                                                               self._manifest["generation"]):
                raise DahpError(f"index {self.path} changed on disk since it was loaded (another add or build): "
                                "load it again")
            _remove_orphans(self.path, on_disk)
            with ingested(hasher, images_spec, self.path, options, shards) as ingest:
                try:
                    manifest = _commit(self.path, self._manifest, self._engine, ingest, self._metadata, _utc_now())
                except BaseException:  # the engine already holds the new codes in memory: go back to the old file
                    old = self.path / self._manifest["files"]["engine"]["name"]
                    self._engine = ENGINES[self._manifest["backend"]].load(old, self.bits)
                    raise
            previous = self._metadata
            self._metadata = Metadata(self.path / manifest["files"]["metadata"]["name"])
            self._manifest = manifest
            previous.close()
            _remove_orphans(self.path, manifest)
        return int(manifest["sources"][-1]["added"])

    # --- reading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Index:
        """Open an index after checking its format, every file's checksum, the model and the counts."""
        directory = Path(path)
        _recover_interrupted_swap(directory)
        if not directory.is_dir():
            raise DahpError(f"index {directory} does not exist (build one with `dahp index build`)")
        manifest = read_manifest(directory)
        verify_files(directory, manifest)
        fingerprint, bits = _model_identity(directory / MODEL_FILE)
        if (fingerprint, bits) != (manifest["model_fingerprint"], manifest["bits"]):
            raise DahpError(f"index is inconsistent: {directory / MODEL_FILE} is a {bits}-bit model with fingerprint "
                            f"{fingerprint[:12]}, but the index holds {manifest['bits']}-bit codes of model "
                            f"{manifest['model_fingerprint'][:12]}")
        if manifest["backend"] not in ENGINES:
            raise DahpError(f"index {directory} uses the {manifest['backend']!r} backend; this dahp has "
                            f"{sorted(ENGINES)}")
        engine = ENGINES[manifest["backend"]].load(directory / manifest["files"]["engine"]["name"], bits)
        metadata = Metadata(directory / manifest["files"]["metadata"]["name"])
        count = manifest["count"]
        if engine.ntotal != count or metadata.count() != count or metadata.id_span() != (0, count - 1):
            raise DahpError(f"index is inconsistent: the manifest counts {count} items, the engine holds "
                            f"{engine.ntotal} codes and {metadata.path.name} {metadata.count()} rows with ids "
                            f"{metadata.id_span()}")
        return cls(directory, manifest, engine, metadata, device)

    def _model(self) -> DeepHasher:
        """The index's model, loaded on first use (searching codes does not need it)."""
        with self._hasher_lock:
            if self._hasher is None:
                hasher = DeepHasher.load(self.path / MODEL_FILE, device=self._device)
                if hasher.fingerprint_ != self._manifest["model_fingerprint"]:
                    raise DahpError(f"index is inconsistent: {self.path / MODEL_FILE} changed after the index "
                                    "was loaded")
                self._hasher = hasher
            return self._hasher

    def _check_codes(self, codes: Any) -> np.ndarray:
        width = (self.bits + 7) // 8
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != width:
            got = f"shape {codes.shape} dtype {codes.dtype}" if isinstance(codes, np.ndarray) else type(codes).__name__
            raise DahpError(f"query codes: this index holds {self.bits}-bit codes, expected a (n, {width}) uint8 "
                            f"array of packed codes from the index's model, got {got}")
        spare = 8 * width - self.bits
        if spare and np.any(codes[:, -1] & ((1 << spare) - 1)):
            raise DahpError(f"query codes have bits set past bit {self.bits} (the last byte's {spare} padding "
                            f"bits): they are not {self.bits}-bit codes packed by dahp.codes.pack_codes")
        return codes

    def search(self, codes: np.ndarray, k: int | None = 10, radius: int | None = None) -> list[list[Hit]]:
        """Hits per query for packed codes, sorted by (distance, id).

        ``k`` alone: the k nearest. ``radius`` alone (``k=None``): every item within that Hamming
        distance. Both: the k nearest of those within the radius.
        """
        queries = self._check_codes(codes)
        if k is None and radius is None:
            raise DahpError("search needs k (the k nearest), radius (all within a Hamming radius) or both")
        if k is not None:
            k = _check_int(k, "k", 1)
        if radius is not None:
            results = self._engine.range_search(queries, _check_int(radius, "radius", 0))
            if k is not None:
                results = [(distances[:k], ids[:k]) for distances, ids in results]
        else:
            results = list(zip(*self._engine.search(queries, k))) if len(queries) else []
        found = np.concatenate([ids for _, ids in results]) if results else np.zeros(0, np.int64)
        items = {item.id: item for item in self._metadata.get(np.unique(found).tolist())}
        return [[Hit(int(i), int(d), items[int(i)].path, items[int(i)].label) for d, i in zip(distances, ids)]
                for distances, ids in results]

    def encode_images(self, images: Sequence[str | Path | IO[bytes]]) -> np.ndarray:
        """Packed codes of query images (files or byte streams), made with the index's model."""
        if not images:
            raise DahpError("no query images given")
        return self._model().encode_images(list(images))

    def search_images(self, images: Sequence[str | Path | IO[bytes]], k: int | None = 10,
                      radius: int | None = None) -> list[list[Hit]]:
        """:meth:`search` for query images; DahpError names an image that cannot be read."""
        return self.search(self.encode_images(images), k=k, radius=radius)

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        checked = [_check_int(i, "item id", 0) for i in ids]
        outside = [i for i in checked if i >= self.count]
        if outside:
            raise DahpError(f"no item {outside[0]} in index {self.path}: its ids are 0..{self.count - 1}")
        return checked

    def items(self, ids: Sequence[int]) -> list[Item]:
        return self._metadata.get(self._check_ids(ids))

    def image_root(self) -> str | None:
        """The deepest folder holding every indexed image file, to show paths relative to it."""
        return self._metadata.image_root

    def thumbnail(self, item_id: int) -> bytes | None:
        """PNG bytes for an in-memory image; None for an image file (serve the file itself)."""
        return self._metadata.thumbnail(self._check_ids([item_id])[0])

    def info(self) -> dict[str, Any]:
        manifest = self._manifest
        return {
            "path": str(self.path),
            **{key: manifest[key] for key in ("format_version", "index_id", "generation", "bits",
                                              "model_fingerprint", "count", "created", "updated", "sources", "files")},
            "code_bytes": (self.bits + 7) // 8,
            "backend": self._engine.describe(),
            "skipped": [bad for source in manifest["sources"] for bad in source["skipped"]],
        }
