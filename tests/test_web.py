import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from dahp.data import default_preprocess, load_digits  # noqa: E402
from dahp.hasher import MODEL_FILE, DeepHasher  # noqa: E402
from dahp.index import Index  # noqa: E402
from dahp.models import ModelConfig  # noqa: E402
from dahp.training import TrainConfig  # noqa: E402
from dahp.web import create_app  # noqa: E402


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    digits = load_digits()
    DeepHasher(ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64),
               TrainConfig(epochs=4, batch_size=32, schedule="cosine", pairs="batch"),
               default_preprocess("digits"), weights="none", device="cpu", progress=False,
               ).fit(digits.subset(np.arange(0, 1797, 6)), out_dir=root / "run")
    return Index.build(root / "run" / MODEL_FILE, "digits", root / "index", progress=False)


@pytest.fixture(scope="module")
def client(index):
    return TestClient(create_app(index, max_upload_bytes=50_000))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_search_returns_the_same_hits_as_the_python_api(client, index):
    data = _png(load_digits().images[5])
    response = client.post("/search?k=7", files={"image": ("five.png", data, "image/png")})
    assert response.status_code == 200
    hits = response.json()["hits"]
    expected = index.search_images([io.BytesIO(data)], k=7)[0]
    assert [(h["id"], h["distance"]) for h in hits] == [(h.id, h.distance) for h in expected]
    assert hits[0]["thumbnail"] == f"/items/{hits[0]['id']}/thumbnail"


def test_items_thumbnails_and_search_by_item(client):
    item = client.get("/items/3").json()
    assert item["id"] == 3 and item["label"] == "3"
    thumbnail = client.get("/items/3/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
    again = client.post("/search/items/3?k=5").json()
    assert len(again["hits"]) == 5 and again["hits"][0]["distance"] == 0


def test_bad_requests_get_clear_status_codes(client):
    assert client.post("/search", files={"image": ("a.txt", b"hello", "text/plain")}).status_code == 415
    assert client.post("/search", files={"image": ("a.png", b"not really a png", "image/png")}).status_code == 415
    big = client.post("/search", files={"image": ("big.png", b"\0" * 60_000, "image/png")})
    assert big.status_code == 413
    assert client.get("/items/999999").status_code == 404
    for probe in ("/items/..%2F..%2Fetc%2Fpasswd", "/items/../../etc/passwd/thumbnail", "/items/-1/thumbnail"):
        response = client.get(probe)
        assert response.status_code in (404, 422) and b"root:" not in response.content
    assert client.post("/search?k=0", files={"image": ("a.png", b"x", "image/png")}).status_code == 422
    # and it keeps answering after bad requests
    assert client.get("/").status_code == 200


# DAHP_SCREENSHOT_DIR=docs regenerates the README's screenshot; by default it stays in tmp_path.
SCREENSHOT_DIR = os.environ.get("DAHP_SCREENSHOT_DIR")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (CI installs it)")
def test_page_end_to_end_in_headless_chromium(index, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    query = tmp_path / "query.png"
    query.write_bytes(_png(load_digits().images[7]))
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh user-data dir
                executable_path=shutil.which("chromium"),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            assert "images, 16-bit codes" in page.text_content("#status")
            page.set_input_files("#upload", str(query))
            page.wait_for_selector(".hit")
            assert page.locator(".hit").count() == 20
            assert "results for query.png" in page.text_content("#status")
            first = page.locator(".hit").first
            clicked_id = first.get_attribute("data-id")
            first.click()
            page.wait_for_function("document.querySelector('#status').textContent.includes('item ')")
            assert f"results for item {clicked_id}" in page.text_content("#status")
            assert page.locator(".hit .distance").first.text_content() == "0"
            screenshot = Path(SCREENSHOT_DIR or tmp_path) / "search.png"
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_images_over_the_pixel_limit_get_413_before_decoding(index, tmp_path, monkeypatch):
    digits = load_digits()
    for number in range(4):
        folder = tmp_path / "photos" / f"digit{number % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[number]).save(folder / f"{number}.png")
    folder_index = Index.build(index.path / MODEL_FILE, str(tmp_path / "photos"), tmp_path / "index", progress=False)
    client = TestClient(create_app(folder_index))
    monkeypatch.setenv("DAHP_MAX_IMAGE_PIXELS", "100")  # digits are 8 x 8 = 64 pixels
    assert client.post("/search", files={"image": ("ok.png", _png(digits.images[0]), "image/png")}).status_code == 200
    huge = client.post("/search", files={"image": ("huge.png", _png(np.zeros((20, 20, 3), np.uint8)), "image/png")})
    assert huge.status_code == 413 and "20 x 20 = 400 pixels, over the limit of 100" in huge.json()["detail"]
    # a file that became too large after indexing: its thumbnail is a clear 4xx, not a 500
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "photos" / client.get("/items/0").json()["path"])
    thumbnail = client.get("/items/0/thumbnail")
    assert thumbnail.status_code == 413 and "DAHP_MAX_IMAGE_PIXELS" in thumbnail.json()["detail"]
    assert client.post("/search/items/0").status_code == 413
    assert client.get("/items/1/thumbnail").status_code == 200


def test_paths_are_shown_relative_to_the_indexed_folder_unless_asked(index, tmp_path):
    digits = load_digits()
    for number in range(4):
        folder = tmp_path / "server" / "photos" / f"digit{number % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[number]).save(folder / f"{number}.png")
    folder_index = Index.build(index.path / MODEL_FILE, str(tmp_path / "server" / "photos"), tmp_path / "index",
                               progress=False)
    query = {"image": ("q.png", _png(digits.images[0]), "image/png")}
    relative = TestClient(create_app(folder_index))
    paths = {relative.get(f"/items/{i}").json()["path"] for i in range(4)}
    assert paths == {"digit0/0.png", "digit1/1.png", "digit0/2.png", "digit1/3.png"}
    assert {hit["path"] for hit in relative.post("/search?k=4", files=query).json()["hits"]} == paths
    full = TestClient(create_app(folder_index, full_paths=True))
    assert full.get("/items/0").json()["path"] == str(tmp_path / "server" / "photos" / "digit0" / "0.png")
    assert str(tmp_path) not in relative.post("/search?k=4", files=query).text
