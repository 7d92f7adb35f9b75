"""FastAPI app: a search page, ``POST /search`` for an uploaded image, item metadata and thumbnails.

Safety rules, each tested: uploads above ``max_upload_bytes`` get 413, anything that is not
a decodable image gets 415, files are only ever served through an item id of the index
(no path from the client reaches the file system), and search runs in the worker thread
pool, so one slow or bad request does not stop the others.
"""

from __future__ import annotations

import html
import io
import os
import time
from functools import lru_cache
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError

from ..data import ImageTooLarge, open_image
from ..errors import DahpError
from ..index import Index

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
THUMBNAIL_PX = 128
ResultCount = Annotated[int, Query(ge=1, le=1000, description="number of results")]


def shown_path(path: str, root: str | None) -> str:
    """``path`` relative to the indexed images' common folder: clients learn what the
    index holds, not where the server keeps it."""
    if root is None or not os.path.isabs(path):
        return path
    return os.path.relpath(path, root)


def _check_image(data: bytes) -> None:
    """415 unless ``data`` decodes as an image (the declared content type is not trusted)."""
    try:
        with open_image(io.BytesIO(data), "upload") as image:
            image.verify()
    except (ImageTooLarge, Image.DecompressionBombError) as exc:
        raise HTTPException(413, str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(415, "the upload is not a readable image (JPEG, PNG, GIF, BMP, WebP, TIFF …)") from None


def create_app(index: Index, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, full_paths: bool = False) -> FastAPI:
    """The web app over an opened index; ``full_paths`` shows each item's absolute path on the server."""
    app = FastAPI(title="dahp search", docs_url="/api")
    info = index.info()
    summary = f"{info['count']} images, {info['bits']}-bit codes"
    page = (files("dahp.web") / "page.html").read_text().replace("__INFO__", html.escape(summary))

    def item_json(item_id: int, path: str, label: str, **extra: Any) -> dict[str, Any]:
        return {"id": item_id, **extra, "path": path if full_paths else shown_path(path, index.image_root()),
                "label": label, "thumbnail": f"/items/{item_id}/thumbnail"}

    def search_response(images: list[Any], k: int, label: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            hits = index.search_images(images, k=k)[0]
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except DahpError as exc:
            raise HTTPException(415, str(exc)) from None
        return {"query": label, "hits": [item_json(hit.id, hit.path, hit.label, distance=hit.distance) for hit in hits],
                "milliseconds": (time.perf_counter() - started) * 1000}

    def item_or_404(item_id: int):
        try:
            return index.items([item_id])[0]
        except (DahpError, IndexError, KeyError):
            raise HTTPException(404, f"no item {item_id} in this index") from None

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.post("/search")
    def search(request: Request, image: Annotated[UploadFile, File()], k: ResultCount = 20) -> dict[str, Any]:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_upload_bytes + 64 * 1024:  # multipart framing adds a little
            raise HTTPException(413, f"uploads are limited to {max_upload_bytes} bytes")
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"uploads are limited to {max_upload_bytes} bytes")
        if image.content_type and not image.content_type.startswith("image/"):
            raise HTTPException(415, f"expected an image upload, got {image.content_type}")
        _check_image(data)
        return search_response([io.BytesIO(data)], k, image.filename or "upload")

    @app.post("/search/items/{item_id}")
    def search_item(item_id: int, k: ResultCount = 20) -> dict[str, Any]:
        item = item_or_404(item_id)
        thumbnail = index.thumbnail(item_id)
        source = io.BytesIO(thumbnail) if thumbnail is not None else item.path
        return search_response([source], k, f"item {item_id}")

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:
        item = item_or_404(item_id)
        return item_json(item.id, item.path, item.label, added=item.added)

    @lru_cache(maxsize=4096)
    def thumbnail_png(item_id: int) -> bytes:
        stored = index.thumbnail(item_id)
        if stored is not None:
            return stored
        item = item_or_404(item_id)
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
    def get_thumbnail(item_id: int) -> Response:
        item_or_404(item_id)
        return Response(thumbnail_png(item_id), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    return app
