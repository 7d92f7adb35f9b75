"""The index generation a server answers from, and how it follows ``dahp index add`` by itself.

Why: ``index add`` commits a new generation by atomically replacing ``manifest.json`` (see
:mod:`dahp.index.store`). A server that opened the previous generation keeps its files open
and goes on answering correctly, but would never see the new items. :class:`LiveIndex`
looks at the manifest every ``reload_interval`` seconds (one ``stat``: a commit renames a new
file into place, so its inode or mtime changes), loads a newer generation on its own thread
(``Index.load``, checksums verified) and swaps it in with one reference assignment; requests
never wait for it. A generation that cannot be loaded (a file changing under a concurrent
``add``) is logged and retried once the manifest changes again; meanwhile the old one serves.

One response, one generation: a request takes the :class:`Snapshot` served when it arrives
and reads nothing else, from encoding its query to the metadata of its hits.

Item ids across generations: ``add`` only appends, and an item's row never changes, so an
id that generation g returned names the same item in every later generation of that index,
and ``/items/ID`` may resolve it in whichever is current. Only a rebuild (``dahp index
build`` over the same directory, which gives it a new ``index_id``) numbers items afresh;
the server follows that too, and the item URLs it hands out carry ``?index=INDEX_ID`` so
that one from before a rebuild is refused (409) instead of showing another image.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DahpError
from ..hasher import MODEL_FILE, DeepHasher, resolve_runtime
from ..index import Hit, Index
from ..index.manifest import MANIFEST_FILE, read_manifest

log = logging.getLogger(__name__)


def _summary(index: Index) -> dict[str, Any]:
    """What ``/health`` says about a generation."""
    info = index.info()
    return {"id": info["index_id"], "generation": info["generation"], "count": info["count"], "bits": info["bits"]}


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed generation and the encoder of its queries: everything one response reads."""

    index: Index
    hasher: DeepHasher
    summary: dict[str, Any]

    @classmethod
    def of(cls, index: Index, hasher: DeepHasher) -> Snapshot:
        return cls(index, hasher, _summary(index))

    @property
    def index_id(self) -> str:
        return str(self.summary["id"])

    @property
    def generation(self) -> int:
        return int(self.summary["generation"])

    @property
    def image_size(self) -> int:
        """The side queries are decoded to for this model."""
        return self.hasher.preprocess.image_size

    def search(self, pixels: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest items to each decoded image: one forward pass, one batched Hamming search."""
        return self.index.search(self.hasher.encode_pixels(pixels), k=k)


class LiveIndex:
    """The snapshot new requests are answered from; a thread loads the model, then follows newer generations.

    The server encodes with its own copy of the index's model, loaded once and shared by every
    generation with the same model fingerprint, so a switch costs no model load.
    """

    def __init__(self, index: Index, device: str = "auto", reload_interval: float = 1.0,
                 runtime: str = "auto") -> None:
        if isinstance(reload_interval, bool) or not isinstance(reload_interval, int | float) or not reload_interval >= 0:
            raise DahpError(f"reload_interval must be a number of seconds >= 0, got {reload_interval!r}")
        self.path = index.path
        self._first: Index | None = index  # until its snapshot is made: then only the snapshot holds it
        self._first_summary = _summary(index)
        self._device = device
        self.runtime = resolve_runtime(runtime, device)
        self._interval = float(reload_interval)
        self._snapshot: Snapshot | None = None
        self._manifest_seen: tuple[int, int, int] | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        """What a new request is answered from; None until the model is loaded."""
        return self._snapshot

    def summary(self) -> dict[str, Any]:
        """The served generation (or, while the model loads, the one about to be served)."""
        return self._snapshot.summary if self._snapshot is not None else self._first_summary

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dahp-live-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        first, self._first = self._first, None
        assert first is not None, "started twice"
        try:
            self._snapshot = Snapshot.of(first, self._encoder(first))
        except Exception as exc:  # the server stays up but not ready, and /ready says why
            self.error = f"cannot load the model of {self.path}: {exc}"
            log.exception(self.error)
            return
        while self._interval > 0 and not self._stop.wait(self._interval):
            try:
                self._refresh()
            except DahpError as exc:
                log.warning("index %s: a new generation was committed but cannot be loaded yet (%s); still "
                            "serving generation %d", self.path, exc, self._snapshot.generation)
            except Exception:
                log.exception("index %s: loading a new generation failed; still serving generation %d",
                              self.path, self._snapshot.generation)

    def _refresh(self) -> bool:
        """Serve the committed generation if it is not the one served; True when it switched.

        Cheap when nothing was committed: one ``stat`` of the manifest.
        """
        served = self._snapshot
        if served is None:
            return False
        try:
            stat = os.stat(self.path / MANIFEST_FILE)
        except OSError:  # between the two renames of a rebuild: look again next time
            return False
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._manifest_seen:
            return False
        self._manifest_seen = seen
        manifest = read_manifest(self.path)
        if (manifest["index_id"], manifest["generation"]) == (served.index_id, served.generation):
            return False
        index = Index.load(self.path, device=self._device)
        same_model = index.info()["model_fingerprint"] == served.hasher.fingerprint_
        self._snapshot = Snapshot.of(index, served.hasher if same_model else self._encoder(index))
        log.info("index %s: now serving generation %d (%d items)", self.path, self._snapshot.generation,
                 self._snapshot.summary["count"])
        return True

    def _encoder(self, index: Index) -> DeepHasher:
        """The index's model, checked against its manifest and warmed up by one forward pass (so that
        first-call set-up does not land on the first query)."""
        hasher = DeepHasher.load(index.path / MODEL_FILE, device=self._device, runtime=self.runtime)
        if hasher.fingerprint_ != index.info()["model_fingerprint"]:
            raise DahpError(f"{index.path / MODEL_FILE} is not the model the index manifest names "
                            "(replaced by a rebuild while loading?)")
        size = hasher.preprocess.image_size
        hasher.encode_pixels(np.zeros((1, size, size, 3), np.uint8))
        return hasher
