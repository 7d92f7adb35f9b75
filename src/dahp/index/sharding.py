"""How an ingest's work is cut up: chunks of images, and which process encodes which chunk.

Kept apart from :mod:`dahp.index.ingest` (which needs torch) so the command line can
declare ``--chunk-size`` and ``--shard`` without importing it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DahpError

DEFAULT_CHUNK_SIZE = 4096
"""Images per committed chunk: minutes of CPU encoding for a realistic model, so a kill loses
little, while the per-chunk cost (one file, one fsync) stays well under 1% of the encoding."""


@dataclass(frozen=True)
class Shard:
    """This process's part of an ingest: the chunks ``i`` with ``i % world == rank``; rank 0 writes the index."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise DahpError(f"shard {self.rank}/{self.world}: expected RANK/WORLD with 0 <= RANK < WORLD")

    def __str__(self) -> str:
        return f"{self.rank}/{self.world}"

    def chunks(self, count: int) -> range:
        """This shard's chunks among ``count``."""
        return range(self.rank, count, self.world)

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``RANK/WORLD``, e.g. ``1/4`` for the second of four processes."""
        rank, slash, world = text.partition("/")
        if not (slash and rank.strip().isdigit() and world.strip().isdigit()):
            raise DahpError(f"shard {text!r}: expected RANK/WORLD, e.g. 0/2 and 1/2 for two processes")
        return cls(int(rank), int(world))

    @classmethod
    def from_environment(cls) -> Shard:
        """The shard ``torchrun`` gives this process (its ``RANK`` and ``WORLD_SIZE``); 0/1 outside torchrun."""
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        if not (rank.isdigit() and world.isdigit()):
            raise DahpError(f"$RANK={rank!r} and $WORLD_SIZE={world!r}: expected whole numbers (set by torchrun)")
        return cls(int(rank), int(world))
