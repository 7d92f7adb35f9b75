import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from dahp.data import default_preprocess, load_digits  # noqa: E402
from dahp.errors import DahpError  # noqa: E402
from dahp.hasher import MODEL_FILE, DeepHasher, resolve_runtime  # noqa: E402
from dahp.index import Index  # noqa: E402
from dahp.index.store import tie_order  # noqa: E402
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


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def _serving(app) -> Iterator[TestClient]:
    """A client of ``app`` with its lifespan running (the batcher and the model loader), once it is ready."""
    with TestClient(app) as client:
        _wait_for(lambda: client.get("/ready").status_code == 200)
        yield client


@pytest.fixture(scope="module")
def client(index):
    with _serving(create_app(index, max_upload_bytes=50_000)) as client:
        yield client


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
    served = response.json()["index"]
    assert served == {"id": index.info()["index_id"], "generation": 1}
    assert hits[0]["thumbnail"] == f"/items/{hits[0]['id']}/thumbnail?index={served['id']}"


def test_items_thumbnails_and_search_by_item(client):
    item = client.get("/items/3").json()
    assert item["id"] == 3 and item["label"] == str(load_digits().labels[tie_order(1797)[3]].argmax())
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
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200)
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
    with _serving(create_app(folder_index)) as client:
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
    with _serving(create_app(folder_index)) as relative:
        paths = {relative.get(f"/items/{i}").json()["path"] for i in range(4)}
        first = relative.get("/items/0").json()["path"]
        assert paths == {"digit0/0.png", "digit1/1.png", "digit0/2.png", "digit1/3.png"}
        assert {hit["path"] for hit in relative.post("/search?k=4", files=query).json()["hits"]} == paths
        assert str(tmp_path) not in relative.post("/search?k=4", files=query).text
    with _serving(create_app(folder_index, full_paths=True)) as full:
        assert full.get("/items/0").json()["path"] == str(tmp_path / "server" / "photos" / first)


def _post_image(client: TestClient, image: np.ndarray, k: int = 20):
    return client.post(f"/search?k={k}", files={"image": ("q.png", _png(image), "image/png")})


@contextmanager
def _gated_encoder(monkeypatch, gate: threading.Event) -> Iterator[list[int]]:
    """Every forward pass records its batch size, then waits for ``gate`` (so requests pile up behind it)."""
    sizes: list[int] = []
    encode = DeepHasher.encode_pixels

    def gated(self, pixels: np.ndarray) -> np.ndarray:
        sizes.append(len(pixels))
        gate.wait(timeout=30)
        return encode(self, pixels)

    monkeypatch.setattr(DeepHasher, "encode_pixels", gated)
    yield sizes


def test_concurrent_searches_share_one_forward_pass_and_each_gets_its_own_answer(index, monkeypatch):
    digits, gate = load_digits(), threading.Event()
    queries = [(number, 3 + number % 5) for number in range(12)]  # different images and k in one batch
    gate.set()
    with _gated_encoder(monkeypatch, gate) as sizes, \
            _serving(create_app(index, max_batch=8, max_wait_ms=2000)) as client:
        sizes.clear()  # the warm-up pass
        gate.clear()
        with ThreadPoolExecutor(len(queries)) as pool:
            def post(query: tuple[int, int]):
                return pool.submit(_post_image, client, digits.images[query[0]], query[1])

            futures = [post(queries[0])]
            _wait_for(lambda: sizes == [1])  # the first query is being encoded alone; the others queue behind it
            futures += [post(query) for query in queries[1:]]
            _wait_for(lambda: client.get("/health").json()["queue"]["depth"] == len(queries))
            gate.set()
            responses = [future.result() for future in futures]
        health = client.get("/health").json()
    assert sizes == [1, 8, 3]
    assert health["batching"] | {"max_wait_ms": None} == {"max_batch": 8, "max_wait_ms": None, "batches": len(sizes),
                                                         "queries": len(queries), "largest": 8,
                                                         "runtime": resolve_runtime("auto", "cpu")}
    assert health["queue"]["depth"] == 0
    for (number, k), response in zip(queries, responses):
        assert response.status_code == 200
        expected = index.search_images([io.BytesIO(_png(digits.images[number]))], k=k)[0]
        assert [(hit["id"], hit["distance"]) for hit in response.json()["hits"]] == [(h.id, h.distance)
                                                                                   for h in expected]


def test_a_full_queue_answers_503_with_retry_after_at_once(index, monkeypatch):
    digits, gate = load_digits(), threading.Event()
    gate.set()
    with _gated_encoder(monkeypatch, gate), _serving(create_app(index, max_batch=1, max_queue=2)) as client:
        gate.clear()
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(_post_image, client, digits.images[number]) for number in range(2)]
            _wait_for(lambda: client.get("/health").json()["queue"]["depth"] == 2)
            started = time.monotonic()
            refused = _post_image(client, digits.images[2])
            assert time.monotonic() - started < 5  # refused at once, not after the queue drains
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "the server is busy" in refused.json()["detail"]
            assert client.post("/search/items/3").status_code == 503
            assert client.get("/health").status_code == 200  # liveness does not queue
            gate.set()
            assert [future.result().status_code for future in waiting] == [200, 200]
        assert _post_image(client, digits.images[2]).status_code == 200
        assert client.get("/health").json()["queue"] == {"depth": 0, "limit": 2}


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime"])
def test_either_runtime_gives_the_same_answers_and_health_names_it(index, runtime):
    pytest.importorskip("onnxruntime", reason="the onnxruntime runtime needs the onnx extra")
    digits = load_digits()
    with _serving(create_app(index, runtime=runtime)) as client:
        assert client.get("/health").json()["batching"]["runtime"] == runtime
        for number in (0, 7, 500):
            hits = _post_image(client, digits.images[number], 5).json()["hits"]
            expected = index.search(index.encode_images([io.BytesIO(_png(digits.images[number]))]), k=5)[0]
            assert [(hit["id"], hit["distance"]) for hit in hits] == [(hit.id, hit.distance) for hit in expected]


def test_health_and_ready_while_the_model_loads(index, monkeypatch):
    gate, load = threading.Event(), DeepHasher.load.__func__

    def slow_load(cls, *args, **kwargs):
        gate.wait(timeout=30)
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(DeepHasher, "load", classmethod(slow_load))
    with TestClient(create_app(index)) as client:
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
        health = client.get("/health")
        info = index.info()
        assert health.status_code == 200 and health.json()["ready"] is False
        assert health.json()["index"] == {"id": info["index_id"], "generation": 1, "count": info["count"],
                                          "bits": 16}
        assert health.json()["queue"]["depth"] == 0
        assert _post_image(client, load_digits().images[0]).status_code == 503
        gate.set()
        _wait_for(lambda: client.get("/ready").status_code == 200)
        assert client.get("/ready").json() == {"ready": True, "index": health.json()["index"]}
        assert client.get("/health").json()["ready"] is True
        assert _post_image(client, load_digits().images[0]).status_code == 200
        assert client.get("/api").status_code == 200  # the OpenAPI page
        assert {"/health", "/ready", "/search"} <= set(client.get("/openapi.json").json()["paths"])


def test_a_broken_model_leaves_the_server_live_but_not_ready(index, monkeypatch):
    def broken(cls, *args, **kwargs):
        raise DahpError("model.dahp is damaged")

    monkeypatch.setattr(DeepHasher, "load", classmethod(broken))
    with TestClient(create_app(index)) as client:
        _wait_for(lambda: "damaged" in client.get("/ready").text)
        assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200


def _digit_folder(root: Path, numbers: range) -> str:
    digits = load_digits()
    for number in numbers:
        folder = root / f"digit{digits.labels[number].argmax()}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[number]).save(folder / f"{number}.png")
    return str(root)


def test_the_server_switches_to_a_generation_that_index_add_commits(index, tmp_path):
    model = index.path / MODEL_FILE
    served = Index.build(model, _digit_folder(tmp_path / "first", range(6)), tmp_path / "index", progress=False)
    responses, stop = [], threading.Event()
    with _serving(create_app(served, reload_interval=0.02)) as client:
        def keep_searching() -> None:
            while not stop.is_set():
                responses.append(_post_image(client, load_digits().images[0], k=100).json())

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        try:
            _wait_for(lambda: len(responses) >= 2)
            Index.load(tmp_path / "index").add(_digit_folder(tmp_path / "second", range(6, 10)), progress=False)
            _wait_for(lambda: client.get("/health").json()["index"]["generation"] == 2)
            _wait_for(lambda: responses[-1]["index"]["generation"] == 2)
        finally:
            stop.set()
            searcher.join()
        assert client.get("/health").json()["index"]["count"] == 10
        latest = _post_image(client, load_digits().images[0], k=100).json()
        assert sorted(hit["id"] for hit in latest["hits"]) == list(range(10))
        added = client.get(f"/items/9?index={latest['index']['id']}").json()
        assert added["path"].endswith(("6.png", "7.png", "8.png", "9.png"))  # ids 6-9 are the second folder's
        assert client.get(added["thumbnail"]).status_code == 200
    # every response came from one generation: all of its hits and nothing of the other
    counts = {1: 6, 2: 10}
    assert {response["index"]["generation"] for response in responses} == {1, 2}
    for response in responses:
        assert sorted(hit["id"] for hit in response["hits"]) == list(range(counts[response["index"]["generation"]]))


def test_after_a_rebuild_the_server_serves_the_new_index_and_refuses_old_ids(index, tmp_path):
    model = index.path / MODEL_FILE
    served = Index.build(model, _digit_folder(tmp_path / "first", range(4)), tmp_path / "index", progress=False)
    with _serving(create_app(served, reload_interval=0.02)) as client:
        old = _post_image(client, load_digits().images[0]).json()
        rebuilt = Index.build(model, _digit_folder(tmp_path / "second", range(10, 13)), tmp_path / "index",
                              progress=False)
        _wait_for(lambda: client.get("/health").json()["index"]["id"] == rebuilt.info()["index_id"])
        for stale in (client.get(old["hits"][0]["thumbnail"]), client.get(f"/items/0?index={old['index']['id']}"),
                      client.post(f"/search/items/0?index={old['index']['id']}")):
            assert stale.status_code == 409 and "rebuilt" in stale.json()["detail"]
        new = _post_image(client, load_digits().images[0]).json()
        assert new["index"] == {"id": rebuilt.info()["index_id"], "generation": 1} and len(new["hits"]) == 3
        assert client.get(new["hits"][0]["thumbnail"]).status_code == 200
