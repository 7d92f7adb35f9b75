"""Concurrent search requests gathered into batches: one forward pass and one Hamming search per batch.

Why: one forward pass over n images costs far less than n passes over one (the network's
weights are read once, the kernels run on larger matrices), and faiss scans the codes once
for many queries. A server that encodes each request on its own wastes most of the encoder.

How a request goes through: :meth:`SearchBatcher.admit` lets it in, or refuses it at once
with :class:`Overloaded` when ``max_queue`` requests are already in the server (being read
and decoded, waiting for a batch, or being encoded): under overload a client gets a quick
503 rather than a latency that grows with a queue. The request decodes its image on its own
thread, then submits it; a single worker thread takes every waiting query (up to
``max_batch``) and, while the batch is not full and other admitted requests are still being
decoded, waits for them up to ``max_wait`` seconds. A lone request never waits: nothing else
is on its way. Under load batches form by themselves, from the queries that arrive while the
previous batch is being encoded.

Each query carries the index snapshot it was admitted under (see :mod:`dahp.web.live`); a
batch that spans a generation switch is split, so every answer comes from one generation.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DahpError

if TYPE_CHECKING:
    from ..index import Hit
    from .live import Snapshot


class Overloaded(Exception):
    """The server already holds as many search requests as its queue allows."""


@dataclass(eq=False)
class _Query:
    snapshot: Snapshot
    pixels: np.ndarray
    k: int
    result: Future[list[Hit]]


class Ticket:
    """An admitted request: it submits its decoded query once, or leaves without (an error before encoding)."""

    def __init__(self, batcher: SearchBatcher) -> None:
        self._batcher = batcher
        self.submitted = False

    def submit(self, snapshot: Snapshot, pixels: np.ndarray, k: int) -> Future[list[Hit]]:
        """Queue one decoded ``(h, w, 3)`` image; the future holds its ``k`` nearest items in ``snapshot``."""
        if self.submitted:
            raise RuntimeError("a ticket submits one query")
        query = _Query(snapshot, pixels, k, Future())
        self._batcher._enqueue(self, query)
        return query.result


class SearchBatcher:
    """Bounded admission, and a worker thread that answers the queued queries in batches."""

    def __init__(self, max_batch: int, max_wait: float, max_queue: int) -> None:
        for name, value, minimum in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1),
                                     ("max_wait", max_wait, 0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
                raise DahpError(f"{name} must be a number >= {minimum}, got {value!r}")
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), float(max_wait), int(max_queue)
        self._changed = threading.Condition()
        self._queue: deque[_Query] = deque()
        self._admitted = 0  # admitted and not yet finished: what max_queue bounds
        self._arriving = 0  # admitted and not yet submitted: what a batch may still wait for
        self._batches = self._queries = self._largest = 0
        self._stopping = False
        self._worker: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Search requests in the server now: being decoded, waiting for a batch or being encoded."""
        return self._admitted

    def stats(self) -> dict[str, Any]:
        """Counts since start, for ``/health``: batches run, queries answered and the largest batch."""
        with self._changed:
            return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000, "batches": self._batches,
                    "queries": self._queries, "largest": self._largest}

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Hold a place for one request while the block runs; :class:`Overloaded` when there is none."""
        with self._changed:
            if self._admitted >= self.max_queue:
                raise Overloaded(f"the server is busy: {self._admitted} search requests are in progress, "
                                 f"the queue holds {self.max_queue}")
            self._admitted += 1
            self._arriving += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            with self._changed:
                self._admitted -= 1
                if not ticket.submitted:
                    self._arriving -= 1
                    self._changed.notify()  # a batch waiting for this request need not wait any more

    def _enqueue(self, ticket: Ticket, query: _Query) -> None:
        with self._changed:
            if self._stopping or self._worker is None:
                raise RuntimeError("the search batcher is not running")
            ticket.submitted = True
            self._arriving -= 1
            self._queue.append(query)
            self._changed.notify()

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="dahp-search-batcher", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Answer what is queued, then end the worker."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._worker is not None:
            self._worker.join()

    def _work(self) -> None:
        while (batch := self._gather()) is not None:
            self._answer(batch)

    def _gather(self) -> list[_Query] | None:
        """The next batch (None once stopped and drained): what is queued, plus what arrives in time."""
        with self._changed:
            while not self._queue and not self._stopping:
                self._changed.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait
            batch: list[_Query] = []
            while True:
                while self._queue and len(batch) < self.max_batch:
                    query = self._queue.popleft()
                    if query.result.set_running_or_notify_cancel():  # False: the client went away
                        batch.append(query)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or not self._arriving or remaining <= 0 or self._stopping:
                    return batch
                self._changed.wait(remaining)

    def _answer(self, batch: list[_Query]) -> None:
        """One forward pass and one search per snapshot in the batch (one, unless the index just switched)."""
        groups: dict[int, list[_Query]] = {}
        for query in batch:
            groups.setdefault(id(query.snapshot), []).append(query)
        for queries in groups.values():
            try:
                pixels = np.stack([query.pixels for query in queries])
                results = queries[0].snapshot.search(pixels, max(query.k for query in queries))
            except Exception as exc:  # the requests report it; the worker carries on
                for query in queries:
                    query.result.set_exception(exc)
                continue
            for query, hits in zip(queries, results):
                query.result.set_result(hits[: query.k])  # rows are sorted: a prefix is the top k
        with self._changed:
            self._batches += len(groups)
            self._queries += len(batch)
            self._largest = max(self._largest, *(len(queries) for queries in groups.values()), 0)
