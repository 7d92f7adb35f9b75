"""FastAPI app: a search page, ``POST /search`` for an uploaded image, item metadata and thumbnails,
``/health`` and ``/ready``; the OpenAPI page is at ``/api``.

Serving: concurrent searches are encoded and searched in batches, and at most ``max_queue``
are in the server at once; past that a request gets 503 with ``Retry-After`` at once
(:mod:`dahp.web.batching`). The server follows new generations that ``dahp index add``
commits, answering each request from one generation (:mod:`dahp.web.live`). The model is
loaded, and warmed up, on a thread when the app starts: ``/health`` answers at once,
``/ready`` and the search endpoints answer 503 until it is loaded.

Safety rules, each tested: uploads above ``max_upload_bytes`` get 413, anything that is not
a decodable image gets 415, files are only ever served through an item id of the index
(no path from the client reaches the file system), and decoding, search and file reads run
off the event loop, so one slow or bad request does not stop the others.
"""

from __future__ import annotations

import asyncio
import html
import io
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from ..data import ImageTooLarge, decode_image, open_image
from ..errors import DahpError
from ..index import Hit, Index, Item
from . import settings
from .batching import Overloaded, SearchBatcher, Ticket
from .live import LiveIndex, Snapshot

THUMBNAIL_PX = 128
RETRY = {"Retry-After": str(settings.RETRY_AFTER_SECONDS)}
ResultCount = Annotated[int, Query(ge=1, le=1000, description="number of results")]
IndexId = Annotated[str | None, Query(alias="index", description="the index id a search answered with: "
                                      "409 if the server now serves a rebuilt index, where ids mean other items")]


def shown_path(path: str, root: str | None) -> str:
    """``path`` relative to the indexed images' common folder: clients learn what the
    index holds, not where the server keeps it."""
    if root is None or not os.path.isabs(path):
        return path
    return os.path.relpath(path, root)


def _decoded(source: str | Path | IO[bytes], size: int, name: str) -> np.ndarray:
    """The image as the model's input pixels; 413 over the pixel limit, 415 when it does not decode."""
    try:
        return decode_image(source, size, name)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DahpError:
        raise HTTPException(415, f"image {name} is not readable: expected JPEG, PNG, GIF, BMP, WebP, TIFF …") from None


def create_app(index: Index, max_upload_bytes: int = settings.MAX_UPLOAD_BYTES, full_paths: bool = False, *,
               max_batch: int = settings.MAX_BATCH, max_wait_ms: float = settings.MAX_WAIT_MS,
               max_queue: int = settings.MAX_QUEUE, reload_interval: float = settings.RELOAD_SECONDS,
               device: str = "auto", runtime: str = "auto") -> FastAPI:
    """The web app over an opened index.

    ``full_paths`` shows each item's absolute path on the server. Searches are encoded on
    ``device`` in batches of up to ``max_batch`` queries by ``runtime`` (``auto``: ONNX Runtime on
    the CPU when installed, which runs the network without Python's GIL, so the event loop's
    work does not stall the encoder; see :func:`dahp.hasher.resolve_runtime`), a query waiting at
    most ``max_wait_ms`` for others being decoded; ``max_queue`` bounds the search requests in the server. Every
    ``reload_interval`` seconds (0: never) the app looks for a newer committed generation. The
    app loads later generations itself: do not ``add`` to ``index`` while it serves (another
    ``Index`` object or process may). Threads start and stop with the app's lifespan (uvicorn
    runs it; with Starlette's TestClient, use it as a context manager).
    """
    batcher = SearchBatcher(max_batch, max_wait_ms / 1000, max_queue)
    live = LiveIndex(index, device, reload_interval, runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        live.start()
        try:
            yield
        finally:
            await run_in_threadpool(live.stop)
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="dahp search", docs_url="/api", lifespan=lifespan)
    page = (files("dahp.web") / "page.html").read_text()

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=RETRY)

    def served(index_id: str | None = None) -> Snapshot:
        """The snapshot a request reads; 503 while the model loads, 409 for an id of a replaced index."""
        snapshot = live.snapshot
        if snapshot is None:
            raise HTTPException(503, live.error or "the index's model is still loading", headers=RETRY)
        if index_id is not None and index_id != snapshot.index_id:
            raise HTTPException(409, f"index {index_id} was rebuilt: this server now serves index "
                                     f"{snapshot.index_id}, where ids name other images; search again")
        return snapshot

    def item_json(snapshot: Snapshot, item_id: int, path: str, label: str, **extra: Any) -> dict[str, Any]:
        return {"id": item_id, **extra, "path": path if full_paths else shown_path(path, snapshot.index.image_root()),
                "label": label, "thumbnail": f"/items/{item_id}/thumbnail?index={snapshot.index_id}"}

    def item_or_404(snapshot: Snapshot, item_id: int) -> Item:
        try:
            return snapshot.index.items([item_id])[0]
        except (DahpError, IndexError, KeyError):
            raise HTTPException(404, f"no item {item_id} in this index") from None

    async def answer(ticket: Ticket, snapshot: Snapshot, pixels: np.ndarray, k: int, label: str,
                     started: float) -> dict[str, Any]:
        hits: list[Hit] = await asyncio.wrap_future(ticket.submit(snapshot, pixels, k))
        return {"query": label, "index": {"id": snapshot.index_id, "generation": snapshot.generation},
                "hits": [item_json(snapshot, hit.id, hit.path, hit.label, distance=hit.distance) for hit in hits],
                "milliseconds": (time.perf_counter() - started) * 1000}

    @app.get("/", response_class=HTMLResponse)
    async def home() -> str:
        summary = live.summary()
        return page.replace("__INFO__", html.escape(f"{summary['count']} images, {summary['bits']}-bit codes"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: always 200, with the generation served, the queue and the batches so far."""
        return {"status": "ok", "ready": live.snapshot is not None, "index": live.summary(),
                "queue": {"depth": batcher.depth, "limit": batcher.max_queue},
                "batching": batcher.stats() | {"runtime": live.runtime}}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 503 until the index's model is loaded, then 200."""
        if live.snapshot is None:
            return JSONResponse({"ready": False, "detail": live.error or "the index's model is still loading"},
                                status_code=503, headers=RETRY)
        return JSONResponse({"ready": True, "index": live.summary()})

    @app.post("/search")
    async def search(request: Request, image: Annotated[UploadFile, File()], k: ResultCount = 20) -> dict[str, Any]:
        started = time.perf_counter()
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_upload_bytes + 64 * 1024:  # multipart framing adds a little
            raise HTTPException(413, f"uploads are limited to {max_upload_bytes} bytes")
        if image.content_type and not image.content_type.startswith("image/"):
            raise HTTPException(415, f"expected an image upload, got {image.content_type}")
        snapshot = served()
        with batcher.admit() as ticket:
            data = await image.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"uploads are limited to {max_upload_bytes} bytes")
            pixels = await run_in_threadpool(_decoded, io.BytesIO(data), snapshot.image_size, "upload")
            return await answer(ticket, snapshot, pixels, k, image.filename or "upload", started)

    def item_pixels(snapshot: Snapshot, item_id: int) -> np.ndarray:
        item = item_or_404(snapshot, item_id)
        thumbnail = snapshot.index.thumbnail(item_id)
        source = io.BytesIO(thumbnail) if thumbnail is not None else item.path
        return _decoded(source, snapshot.image_size, f"of item {item_id}")

    @app.post("/search/items/{item_id}")
    async def search_item(item_id: int, k: ResultCount = 20, index_id: IndexId = None) -> dict[str, Any]:
        started = time.perf_counter()
        snapshot = served(index_id)
        with batcher.admit() as ticket:
            pixels = await run_in_threadpool(item_pixels, snapshot, item_id)
            return await answer(ticket, snapshot, pixels, k, f"item {item_id}", started)

    @app.get("/items/{item_id}")
    def get_item(item_id: int, index_id: IndexId = None) -> dict[str, Any]:
        snapshot = served(index_id)
        item = item_or_404(snapshot, item_id)
        return item_json(snapshot, item.id, item.path, item.label, added=item.added)

    @lru_cache(maxsize=4096)
    def thumbnail_png(index_id: str, item_id: int) -> bytes:
        """Keyed by index id: ids keep their item across generations of one index, not across rebuilds."""
        snapshot = served(index_id)
        item = item_or_404(snapshot, item_id)
        stored = snapshot.index.thumbnail(item_id)
        if stored is not None:
            return stored
        try:
            with open_image(item.path, f"of item {item_id}") as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
        except (ImageTooLarge, Image.DecompressionBombError) as exc:
            raise HTTPException(413, str(exc)) from None
        except (OSError, UnidentifiedImageError, ValueError):
            raise HTTPException(404, f"the image of item {item_id} is no longer readable") from None
        return buffer.getvalue()

    @app.get("/items/{item_id}/thumbnail")
    def get_thumbnail(item_id: int, index_id: IndexId = None) -> Response:
        return Response(thumbnail_png(index_id or served().index_id, item_id), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    return app
