"""The web page and JSON API over a search index (FastAPI, served by uvicorn)."""

from .app import create_app

__all__ = ["create_app"]
