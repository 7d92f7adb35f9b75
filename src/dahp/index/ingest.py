"""Resumable, shardable encoding of a collection for ``dahp index build`` and ``dahp index add``.

Why: a million images take hours to encode on a CPU. As one stream, a kill in hour three
loses everything, and one process cannot use a second one. So the collection is cut into
chunks of ``chunk_size`` images (chunk ``i`` holds images ``i * chunk_size`` onwards), and
each chunk's packed codes and metadata entries are committed, the moment they are done, to
the work folder ``.NAME.ingest`` beside the index directory ``NAME``::

    .NAME.ingest/chunk-000007.dahp   chunk 7: a dahp file (dahp.serialization) whose header names the
                                     build and the chunk, and whose payload (codes, paths, labels,
                                     thumbnails) is checked against its SHA-256 when read
    .NAME.ingest/.lock               flock of the process that writes the index (one at a time)

A kill loses at most the chunk in flight: chunk files are written atomically, and a rerun of
the same command keeps each chunk that reads back with its checksum, names this build and is
the chunk its name says (first image, count, code width). A *build* is :attr:`Ingest.identity`:
the model (weights fingerprint, network and preprocessing), a digest of the images the source
lists (paths, labels, class names, and the pixels of images held in memory), the chunk and
batch sizes and the device type. Chunks of another build are discarded with a message. The
index is assembled from the chunk files, and the work folder is removed once it is committed.

**Shards.** Process ``rank`` of ``world`` encodes the chunks ``i % world == rank`` (torchrun's
``RANK`` and ``WORLD_SIZE``, or ``--shard RANK/WORLD`` on machines sharing the disk); rank 0
then waits for the other chunk files rather than a collective. No process group is needed, so
machines need no rendezvous, and a rank that finishes hours early does not hit a barrier's
timeout. Every chunk is encoded in the same batches, whoever encodes it, so the index equals
the one a single process builds.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ImageCollection, load_source, split_batches
from ..errors import DahpError
from ..hasher import DeepHasher
from ..methods.shallow import check_int
from ..serialization import load_file, read_header, reading, save_file
from .metadata import Entry, entries
from .sharding import DEFAULT_CHUNK_SIZE, Shard

CHUNK_KIND = "index chunk"
CHUNK_FORMAT = 1
LOCK_FILE = ".lock"
POLL_SECONDS = 2.0
"""How often rank 0 looks for the other shards' chunk files."""
_DESCRIBED = {"format": "chunk format", "model": "model weights", "network": "network", "preprocess": "preprocessing",
              "images": "images listed", "count": "image count", "chunk_size": "chunk size",
              "batch_size": "batch size", "device": "device type"}


def work_folder(index: Path) -> Path:
    """Where the chunks of a build of, or an add to, the index directory ``index`` are committed
    (named from the absolute path, so ``dahp index add . photos`` inside the index finds it too)."""
    index = Path(os.path.abspath(index))
    return index.with_name(f".{index.name}.ingest")


@dataclass(frozen=True)
class IngestOptions:
    """How a source is read and encoded; ``chunk_size`` and ``batch_size`` are part of the build's identity."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    batch_size: int = 256
    workers: int = 0
    skip_bad: bool = False
    image_root: str | Path | None = None
    cache_dir: str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("chunk_size", 1), ("batch_size", 1), ("workers", 0)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, minimum))  # numpy ints become ints


class _Unusable(Exception):
    """Why a chunk file cannot be used; ``then`` is the identity it names when it belongs to another build."""

    def __init__(self, reason: str, then: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.then = then


def _notice(message: str) -> None:
    """A line on stderr that does not tear a progress bar (discarded or resumed work is worth saying)."""
    tqdm.write(f"dahp: {message}", file=sys.stderr)


def _listing_digest(data: ImageCollection) -> str:
    """SHA-256 of what a collection lists: a changed folder, CSV or archive is another build.

    Files are named by absolute path (their rows say so), in-memory images by their pixels.
    """
    digest = hashlib.sha256(json.dumps(data.class_names).encode())
    digest.update(np.ascontiguousarray(data.labels).data)
    if isinstance(data.images, np.ndarray):
        digest.update(data.source.encode())
        digest.update(np.ascontiguousarray(data.images).data)
    else:
        for path in data.images:
            digest.update(os.fsencode(os.path.abspath(path)) + b"\0")
    return digest.hexdigest()


def _build_of(path: Path) -> dict[str, Any]:
    """The build identity a chunk file names; empty when it cannot be read."""
    try:
        then = read_header(path, CHUNK_KIND)[0].get("build")
    except DahpError:
        return {}
    return then if isinstance(then, dict) else {}


def _shown(value: Any) -> str:
    return value[:12] if isinstance(value, str) and len(value) == 64 else json.dumps(value)


def _differences(then: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two build identities, in words: ``model weights 1a2b.. (now 3c4d..)``."""
    if not then:
        return "another build (its chunk files cannot say which)"
    return ", ".join(f"{what} {_shown(then.get(key))} (now {_shown(now[key])})"
                     for key, what in _DESCRIBED.items() if then.get(key) != now[key])


class Ingest:
    """One resumable encoding of ``data`` into the work folder of the index at ``target``, by one shard."""

    def __init__(self, hasher: DeepHasher, data: ImageCollection, spec: str, target: Path, options: IngestOptions,
                 shard: Shard) -> None:
        self.hasher, self.data, self.spec, self.options, self.shard = hasher, data, spec, options, shard
        self.work = work_folder(target)
        self.count = -(-len(data) // options.chunk_size)
        identity = {"format": CHUNK_FORMAT, "model": hasher.fingerprint_, "network": hasher.model_config.to_dict(),
                    "preprocess": hasher.preprocess.to_dict(), "images": _listing_digest(data), "count": len(data),
                    "chunk_size": options.chunk_size, "batch_size": options.batch_size, "device": hasher.device.type}
        self.identity: dict[str, Any] = json.loads(json.dumps(identity))  # as a chunk header reads back (no tuples)
        self._codes: dict[int, np.ndarray] = {}  # committed chunks' codes, read or encoded by this process

    def _path(self, chunk: int) -> Path:
        return self.work / f"chunk-{chunk:06d}.dahp"

    def _span(self, chunk: int) -> range:
        """The images of ``chunk``."""
        start = chunk * self.options.chunk_size
        return range(start, min(start + self.options.chunk_size, len(self.data)))

    def _images(self, chunks: list[int]) -> int:
        return sum(len(self._span(chunk)) for chunk in chunks)

    # --- chunk files ----------------------------------------------------------------------

    def _read(self, chunk: int) -> tuple[np.ndarray, list[Entry]]:
        """The codes and entries of a committed chunk, or _Unusable saying why the file cannot be used."""
        path, span = self._path(chunk), self._span(chunk)
        try:
            header, payload = load_file(path, CHUNK_KIND)
            if (then := header.get("build")) != self.identity:
                raise _Unusable("it belongs to another build", then if isinstance(then, dict) else {})
            with reading(path, CHUNK_KIND):
                codes = payload["codes"].numpy()
                rows = list(zip(payload["paths"], payload["labels"], payload["thumbnails"], strict=True))
        except DahpError as exc:
            raise _Unusable(str(exc)) from None
        where = (header.get("chunk"), header.get("first"), header.get("count"))
        if where != (chunk, span.start, len(span)):
            raise _Unusable(f"{path} holds (chunk, first image, count) {where}, expected "
                            f"{(chunk, span.start, len(span))}")
        width = (self.hasher.bits + 7) // 8
        if codes.dtype != np.uint8 or codes.shape != (len(span), width) or len(rows) != len(span):
            raise _Unusable(f"{path} holds {codes.dtype} codes of shape {tuple(codes.shape)} and {len(rows)} "
                            f"entries, expected ({len(span)}, {width}) uint8 codes and {len(span)} entries")
        return codes, rows

    def _write(self, chunk: int, codes: np.ndarray) -> None:
        """Commit one encoded chunk: atomically, so a kill leaves the whole file or none."""
        span = self._span(chunk)
        paths, labels, thumbnails = zip(*entries(self.data, span))
        save_file(self._path(chunk), CHUNK_KIND,
                  {"build": self.identity, "source": self.spec, "chunk": chunk, "first": span.start,
                   "count": len(span)},
                  {"codes": torch.from_numpy(codes), "paths": list(paths), "labels": list(labels),
                   "thumbnails": list(thumbnails)})
        self._codes[chunk] = codes

    # --- encoding ----------------------------------------------------------------------------

    def encode(self) -> int:
        """Encode this shard's chunks that are not committed yet; returns how many images that was.

        The progress bar counts this shard's images and starts at those already committed,
        so its rate and ETA are those of the work left.
        """
        self._make_work_folder()
        todo = self._scan()
        mine = list(self.shard.chunks(self.count))
        total, left = self._images(mine), self._images(todo)
        if left < total:
            _notice(f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks ({total - left:,} images) are "
                    f"already encoded in {self.work}")
        label = "encoding" if self.shard.world == 1 else f"encoding shard {self.shard}"
        with tqdm(total=total, initial=total - left, desc=label, unit="img",
                  disable=not self.options.progress) as bar:
            per_chunk = [split_batches(np.arange(span.start, span.stop), self.options.batch_size)
                         for span in map(self._span, todo)]
            stream = self.hasher.encode_batches(self.data, [b for batches in per_chunk for b in batches],
                                                self.options.workers)
            with closing(stream):
                for chunk, batches in zip(todo, per_chunk):
                    outputs = []
                    for output, indices in itertools.islice(stream, len(batches)):
                        outputs.append(output)
                        bar.update(len(indices))
                    self._write(chunk, self.hasher.codes(np.concatenate(outputs), "database"))
        return left

    def _scan(self) -> list[int]:
        """This shard's chunks still to encode; keeps the codes of committed ones and deletes unusable files.

        A single process also clears everything else from the folder (another build's chunks
        beyond this one's count, temporary files of a killed write); with several shards those
        may be another process's work in progress, and go with the folder at the end.
        """
        todo: list[int] = []
        foreign: list[dict[str, Any]] = []
        mine = list(self.shard.chunks(self.count))
        strays = [path for path in self.work.iterdir() if path.name != LOCK_FILE] if self.shard.world == 1 else []
        for chunk in mine:
            path = self._path(chunk)
            if path.exists():
                try:
                    self._codes[chunk] = self._read(chunk)[0]
                    continue
                except _Unusable as problem:
                    if problem.then is None:
                        _notice(f"discarding chunk {chunk}: {problem}; encoding it again")
                    else:
                        foreign.append(problem.then)
                    path.unlink(missing_ok=True)
            todo.append(chunk)
        kept = {self._path(chunk) for chunk in mine}
        for path in strays:
            if path not in kept:
                if path.suffix == ".dahp":  # a chunk past this build's count
                    foreign.append(_build_of(path))
                path.unlink(missing_ok=True)
        if foreign:
            then = next((then for then in foreign if then), {})
            _notice(f"discarding {len(foreign)} chunk(s) in {self.work} encoded by an earlier run for another "
                    f"build: {_differences(then, self.identity)}")
        return todo

    # --- assembling (rank 0) -------------------------------------------------------------------

    def assemble(self) -> None:
        """Wait until every other shard has committed its chunks (they are read and checked as they come)."""
        missing = [chunk for chunk in range(self.count) if chunk not in self._codes]
        if not missing:
            return
        _notice(f"waiting for {len(missing)} chunk(s) of the other {self.shard.world - 1} shard(s) in {self.work}")
        seen: dict[int, tuple[int, int, int]] = {}
        with tqdm(total=self._images(missing), desc="other shards", unit="img",
                  disable=not self.options.progress) as bar:
            while missing:
                for chunk in list(missing):
                    try:
                        stat = self._path(chunk).stat()
                    except FileNotFoundError:
                        continue
                    if seen.get(chunk) == (signature := (stat.st_ino, stat.st_mtime_ns, stat.st_size)):
                        continue  # an unusable file its shard has not replaced yet
                    seen[chunk] = signature
                    try:
                        self._codes[chunk] = self._read(chunk)[0]
                    except _Unusable as problem:
                        if problem.then is None:  # another build's chunk is expected: its shard replaces it
                            _notice(f"chunk {chunk} is unusable ({problem}); waiting for shard "
                                    f"{chunk % self.shard.world}/{self.shard.world} to encode it again")
                        continue
                    missing.remove(chunk)
                    bar.update(len(self._span(chunk)))
                if missing:
                    time.sleep(POLL_SECONDS)

    def codes(self) -> np.ndarray:
        """Every image's packed code, in collection order (after :meth:`encode` and :meth:`assemble`)."""
        return np.concatenate([self._codes[chunk] for chunk in range(self.count)])

    def entries(self) -> Iterator[Entry]:
        """Every image's metadata entry, in collection order, read chunk by chunk (a million rows never sit in memory)."""
        for chunk in range(self.count):
            try:
                codes, rows = self._read(chunk)
            except _Unusable as problem:
                raise DahpError(f"chunk {chunk} in {self.work} changed while the index was written ({problem}): "
                                "run the command again") from None
            if not np.array_equal(codes, self._codes[chunk]):
                raise DahpError(f"chunk {chunk} in {self.work} changed while the index was written: "
                                "run the command again")
            yield from rows

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the work folder for the process that writes the index; another one fails at once.

        Two runs on one folder would discard each other's chunks as another build's; shards
        other than 0 only write their own chunk files and do not claim it.
        """
        self._make_work_folder()
        with open(self.work / LOCK_FILE, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DahpError(f"{self.work} is in use by another `dahp index build` or `add` of the same index: "
                                "wait for it to finish") from None
            try:
                yield
            finally:
                if self.work.is_dir() and not any(path.name != LOCK_FILE for path in self.work.iterdir()):
                    shutil.rmtree(self.work, ignore_errors=True)  # nothing to resume: leave nothing behind

    def _make_work_folder(self) -> None:
        try:
            self.work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DahpError(f"cannot create the work folder {self.work} ({exc.strerror})") from None

    def remove(self) -> None:
        """Delete the work folder once the index holding its chunks is committed."""
        shutil.rmtree(self.work, ignore_errors=True)


def _load(spec: str, options: IngestOptions) -> ImageCollection:
    return load_source(spec, image_root=options.image_root, cache_dir=options.cache_dir, skip_bad=options.skip_bad)


@contextmanager
def ingested(hasher: DeepHasher, spec: str, target: Path, options: IngestOptions,
             shards: int = 1) -> Iterator[Ingest]:
    """Rank 0's part: encode ``spec`` resumably, wait for the other ``shards - 1`` processes'
    chunks, and hand the complete ingest to the body, which commits it to the index; the
    work folder is removed when the body succeeds and kept for a rerun when it fails."""
    ingest = Ingest(hasher, _load(spec, options), spec, target, options, Shard(0, shards))
    with ingest.claimed():
        ingest.encode()
        ingest.assemble()
        yield ingest
        ingest.remove()


def encode_shard(model_path: str | Path, spec: str, target: Path, shard: Shard, options: IngestOptions,
                 device: str = "auto") -> int:
    """A rank other than 0: commit this shard's chunks of ``spec`` to the work folder of the
    index at ``target`` and return how many images it encoded; rank 0 writes the index."""
    if shard.rank == 0:
        raise DahpError("shard 0 writes the index: run `dahp index build` or `add` (Index.build / Index.add) for it")
    hasher = DeepHasher.load(model_path, device=device)
    return Ingest(hasher, _load(spec, options), spec, target, options, shard).encode()
