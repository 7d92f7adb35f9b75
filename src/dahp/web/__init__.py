"""The web page and JSON API over a search index (FastAPI, served by uvicorn).

``create_app`` is imported on first use (PEP 562), so ``dahp serve --help`` can read the
serving defaults in :mod:`dahp.web.settings` without loading FastAPI and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name != "create_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .app import create_app

    return create_app
