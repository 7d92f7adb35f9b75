"""Search latency end to end: in-process query (decode + encode + search) and the web server.

Builds a small digits index (or uses ``--index``), then measures, in one run:
- ``Index.search_images`` on one query file with the model loaded (what ``dahp search`` does
  after start-up), split into encode and search;
- ``POST /search`` on a ``dahp serve`` subprocess: p50/p99 latency of sequential requests,
  and requests/s with p50/p99 under ``--clients`` concurrent clients.

    python benchmarks/server_latency.py --clients 16 --seconds 10
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from dahp.data import default_preprocess, load_digits
from dahp.hasher import MODEL_FILE, DeepHasher
from dahp.index import Index
from dahp.models import ModelConfig
from dahp.training import TrainConfig


def _digits_index(root: Path) -> Path:
    DeepHasher(ModelConfig(bits=48, output_stride=4, small_stem=True), TrainConfig(epochs=1),
               default_preprocess("digits"), weights="none", device="cpu", progress=False,
               ).fit(load_digits().subset(np.arange(0, 1797, 2)), out_dir=root / "run")
    Index.build(root / "run" / MODEL_FILE, "digits", root / "index", progress=False)
    return root / "index"


def _percentiles(milliseconds: list[float]) -> str:
    ordered = sorted(milliseconds)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"p50 {statistics.median(ordered):7.2f} ms   p99 {p99:7.2f} ms"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(client: httpx.Client, url: str, image: bytes) -> float:
    started = time.perf_counter()
    response = client.post(url, files={"image": ("q.png", image, "image/png")})
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=None, help="an existing index (default: build a digits one)")
    parser.add_argument("--query", type=Path, default=None, help="query image (default: a digit)")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index_dir = args.index or _digits_index(root)
        query = args.query or root / "query.png"
        if args.query is None:
            Image.fromarray(load_digits().images[7]).save(query)
        image = query.read_bytes()

        index = Index.load(index_dir, device="cpu")
        info = index.info()
        print(f"index: {info['count']} images, {info['bits']} bits; query {query.name}")
        encode, search, total = [], [], []
        for _ in range(args.requests):
            started = time.perf_counter()
            codes = index.encode_images([io.BytesIO(image)])
            encoded = time.perf_counter()
            index.search(codes, k=20)
            done = time.perf_counter()
            encode.append((encoded - started) * 1000)
            search.append((done - encoded) * 1000)
            total.append((done - started) * 1000)
        print(f"in-process  decode+encode  {_percentiles(encode)}")
        print(f"in-process  search top-20  {_percentiles(search)}")
        print(f"in-process  total          {_percentiles(total)}")

        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "dahp.cli", "serve", str(index_dir), "--port", str(port),
                                   "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/search?k=20"
        try:
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        client.get(f"http://127.0.0.1:{port}/")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                sequential = [_post(client, url, image) for _ in range(args.requests)]
            print(f"server      1 client       {_percentiles(sequential)}")

            def client_loop(_: int) -> list[float]:
                latencies = []
                with httpx.Client(timeout=30) as client:
                    stop = time.monotonic() + args.seconds
                    while time.monotonic() < stop:
                        latencies.append(_post(client, url, image))
                return latencies

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                concurrent = [ms for result in pool.map(client_loop, range(args.clients)) for ms in result]
            elapsed = time.perf_counter() - started
            print(f"server      {args.clients} clients     {_percentiles(concurrent)}   "
                  f"{len(concurrent) / elapsed:7.1f} requests/s")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
