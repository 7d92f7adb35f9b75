"""Per-item metadata in SQLite: what a search hit is (path, label, when it was added, a thumbnail).

One row per item, keyed by the id the engine returns. Images held only in memory (e.g.
scikit-learn's digits, CIFAR-10 batches) have no file a web page could show, so their
row carries a small PNG thumbnail. A file is written once, under a name no manifest
references yet, and only read afterwards; readers open it read-only.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import DahpError

if TYPE_CHECKING:
    from ..data import ImageCollection

THUMBNAIL_PX = 128
"""In-memory images larger than this (either side) are shrunk to fit; smaller ones are kept as they are."""

_SCHEMA = ("CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT NOT NULL, label TEXT NOT NULL, "
           "added TEXT NOT NULL, thumbnail BLOB)")
_CHUNK = 500  # ids per SELECT, under SQLite's host-parameter limit

Row = tuple[int, str, str, str, bytes | None]
Entry = tuple[str, str, bytes | None]
"""A row without its id and date: path, label, thumbnail."""


@dataclass(frozen=True)
class Item:
    """One indexed image: ``path`` is its file, or ``source[i]`` for in-memory images (which have a thumbnail)."""

    id: int
    path: str
    label: str
    added: str
    has_thumbnail: bool


def _png(image: np.ndarray) -> bytes:
    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def entries(data: ImageCollection, indices: Iterable[int]) -> Iterator[Entry]:
    """What the rows of images ``indices`` say, less their ids and date: absolute paths (or
    ``source[i]`` and a thumbnail for in-memory images), labels as class names joined by ``|``.

    Made per chunk as it is encoded, so rows cost nothing extra when the index is assembled.
    """
    in_memory = isinstance(data.images, np.ndarray)
    for i in indices:
        label = "|".join(data.class_names[j] for j in np.flatnonzero(data.labels[i]))
        if in_memory:
            yield data.name(i), label, _png(data.images[i])
        else:
            yield os.path.abspath(data.name(i)), label, None


class Metadata:
    """A read-only view of one metadata file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._summary = self._db.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM items").fetchone()
        except sqlite3.Error as exc:
            raise DahpError(f"{path} is not a readable index metadata file ({exc})") from None
        self._lock = threading.Lock()

    @staticmethod
    def write(path: Path, rows: Iterator[Row], base: Metadata | None = None) -> None:
        """Create ``path`` holding ``base``'s rows (if any) and ``rows``, then fsync it.

        No journal: until a manifest names the file, a torn write is just an orphan to delete.
        """
        db = sqlite3.connect(path)
        try:
            if base is None:
                db.execute(_SCHEMA)
            else:
                with base._lock:
                    base._db.backup(db)
            db.execute("PRAGMA journal_mode=OFF")
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows)
            db.commit()
        finally:
            db.close()
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def count(self) -> int:
        return int(self._summary[0])

    def id_span(self) -> tuple[int | None, int | None]:
        """Smallest and largest id (None when empty): with ``count``, proves the ids are 0..count-1."""
        return self._summary[1], self._summary[2]

    @cached_property
    def image_root(self) -> str | None:
        """The deepest folder holding every indexed image file (None when none is a file).

        The smallest and largest paths in string order share the longest prefix that every
        path shares, so two indexed lookups find it however many items there are.
        """
        with self._lock:
            low, high = self._db.execute("SELECT MIN(path), MAX(path) FROM items WHERE path LIKE '/%'").fetchone()
        return None if low is None else os.path.commonpath([os.path.dirname(low), os.path.dirname(high)])

    def get(self, ids: Sequence[int]) -> list[Item]:
        """Items in the order of ``ids``; an id without a row means the index files disagree."""
        wanted = sorted({int(i) for i in ids})
        found: dict[int, Item] = {}
        with self._lock:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                rows = self._db.execute("SELECT id, path, label, added, thumbnail IS NOT NULL FROM items "
                                        f"WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                found.update((row[0], Item(row[0], row[1], row[2], row[3], bool(row[4]))) for row in rows)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise self._inconsistent(missing)
        return [found[int(i)] for i in ids]

    def thumbnail(self, item_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT thumbnail FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise self._inconsistent([item_id])
        return row[0]

    def _inconsistent(self, missing: list[int]) -> DahpError:
        return DahpError(f"index is inconsistent: {self.path} has no row for id(s) {missing[:5]} that the "
                         "search engine holds; rebuild the index")

    def close(self) -> None:
        self._db.close()
