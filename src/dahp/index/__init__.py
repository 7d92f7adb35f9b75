"""Search indexes: packed codes in a Hamming engine (faiss), per-item metadata in SQLite, one directory.

Names are imported on first use (PEP 562), so the CLI can register the index commands
without loading torch and faiss for every ``dahp`` invocation.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import FaissEngine, HammingEngine, hash_layout, padded_width
    from .metadata import Item
    from .store import Hit, Index

_HOMES = {"FaissEngine": "engine", "HammingEngine": "engine", "hash_layout": "engine", "padded_width": "engine",
          "Item": "metadata", "Hit": "store", "Index": "store"}
__all__ = ["FaissEngine", "HammingEngine", "Hit", "Index", "Item", "hash_layout", "padded_width"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
