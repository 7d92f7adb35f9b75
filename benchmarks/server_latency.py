"""Serving speed, side by side in one run: the encoder alone against ``dahp serve`` under load.

Builds an index with the chosen model (``--model``), then measures on the same machine:

- the encoder's own rate: ``encode_pixels`` on batches of ``--batch`` decoded queries (images/s),
  and one query at a time, with PyTorch and with ONNX Runtime; the faster is the baseline;
- ``POST /search`` on a ``dahp serve`` subprocess: p50/p99 of sequential requests (one client),
  requests/s with p50/p99 under ``--clients`` concurrent clients, and the answers that
  ``--overload`` clients get (only 200 or a clean 503 with Retry-After is right).

The issue's targets are printed as ratios: requests/s with 16 clients >= 0.8 x the encoder's
batched images/s, p99 under load <= 3 x the single-client p50, no errors, and nothing but 200
and 503 under overload. The load generator shares the CPU with the server, as it would on one
machine, so the run also reads the CPU time each side used (Linux's /proc) and prints the
server's requests per CPU-second against the encoder's images per CPU-second: the ratio that
does not depend on how much of the machine the clients took.

    python benchmarks/server_latency.py --model cpu-transfer --clients 16 --overload 64 --seconds 20
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from made_models import MODEL_HELP, MODELS, digit_folder, encoding_rate, make_model
from PIL import Image

from dahp.data import decode_image, load_digits
from dahp.hasher import MODEL_FILE, RUNTIMES, DeepHasher, resolve_runtime
from dahp.index import Index


def _build_index(root: Path, model: str, count: int) -> Path:
    photos = digit_folder(root / "photos", MODELS[model][1], count)
    Index.build(make_model(root, model), str(photos), root / "index", progress=False)
    return root / "index"


def _percentiles(milliseconds: list[float]) -> tuple[float, float]:
    ordered = sorted(milliseconds)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def _show(label: str, milliseconds: list[float], extra: str = "") -> None:
    p50, p99 = _percentiles(milliseconds)
    print(f"{label:34s} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   {extra}")


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process ``pid`` has used so far; None where /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _encoder_rates(hasher: DeepHasher, query: bytes, batch: int,
                   seconds: float) -> tuple[float, float, list[float]]:
    """(batched images/s, CPU-seconds per wall second while batching, single-query milliseconds)
    of the bare encoder on decoded queries."""
    pixels = decode_image(io.BytesIO(query), hasher.preprocess.image_size, "query")
    cpu, wall = time.process_time(), time.perf_counter()
    batched = encoding_rate(hasher, np.stack([pixels] * batch), seconds)
    cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
    single = []
    for _ in range(50):
        begun = time.perf_counter()
        hasher.encode_pixels(pixels[None])
        single.append((time.perf_counter() - begun) * 1000)
    return batched, cores, single


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(client: httpx.Client, url: str, image: bytes) -> tuple[int, float, bool]:
    """(status, milliseconds, whether a 503 said when to retry)."""
    started = time.perf_counter()
    try:
        response = client.post(url, files={"image": ("q.png", image, "image/png")})
    except httpx.HTTPError:
        return -1, (time.perf_counter() - started) * 1000, False
    return response.status_code, (time.perf_counter() - started) * 1000, "retry-after" in response.headers


def _load(url: str, image: bytes, clients: int, seconds: float) -> tuple[list[tuple[int, float, bool]], float]:
    """Every answer ``clients`` looping clients got in ``seconds``, and the elapsed time."""

    def client_loop(_: int) -> list[tuple[int, float, bool]]:
        answers = []
        with httpx.Client(timeout=60) as client:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                answers.append(_post(client, url, image))
        return answers

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [answer for result in pool.map(client_loop, range(clients)) for answer in result]
    return answers, time.perf_counter() - started


def _batching(port: int) -> tuple[int, int]:
    """(queries answered, batches run) by the server so far, from its /health."""
    batching = httpx.get(f"http://127.0.0.1:{port}/health").json()["batching"]
    return batching["queries"], batching["batches"]


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 300
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 300 s")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cpu-transfer", help=MODEL_HELP)
    parser.add_argument("--index", type=Path, default=None, help="an existing index instead of building one")
    parser.add_argument("--images", type=int, default=600, help="images in the built index")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests of the single client")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--overload", type=int, default=64, help="clients of the overload run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each concurrent run")
    parser.add_argument("--batch", type=int, default=32, help="batch of the encoder's own rate (the server's default)")
    parser.add_argument("--server-batch", type=int, default=None,
                        help="the server's --batch-size (default: its own default, 32)")
    parser.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto", help="the server's --runtime")
    parser.add_argument("--server-wait-ms", type=float, default=None,
                        help="the server's --batch-wait-ms (default: its own default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index_dir = args.index or _build_index(root, args.model, args.images)
        index = Index.load(index_dir, device="cpu")
        hasher = DeepHasher.load(index_dir / MODEL_FILE, device="cpu")
        side = max(hasher.preprocess.image_size, 32)
        buffer = io.BytesIO()
        Image.fromarray(load_digits().images[7]).resize((side, side)).save(buffer, format="PNG")
        query = buffer.getvalue()
        print(f"index: {index.count} images, {index.info()['bits']} bits; model {hasher.model_config.backbone} at "
              f"{hasher.preprocess.image_size} px; query {side}x{side} PNG; server runtime "
              f"{resolve_runtime(args.runtime, 'cpu')}")

        runtimes = ["pytorch"] + (["onnxruntime"] if resolve_runtime("auto", "cpu") == "onnxruntime" else [])
        alone = {}
        for runtime in runtimes:
            if runtime != hasher.runtime:  # the one loaded above is PyTorch's
                hasher = DeepHasher.load(index_dir / MODEL_FILE, device="cpu", runtime=runtime)
            alone[runtime] = _encoder_rates(hasher, query, args.batch, min(args.seconds, 10.0))
            batched, encoder_cores, single = alone[runtime]
            print(f"{'encoder alone (' + runtime + '), batches of ' + str(args.batch):34s} {batched:8.1f} images/s on "
                  f"{encoder_cores:.2f} cores ({batched / encoder_cores:.1f} images per CPU-second)")
            _show(f"encoder alone ({runtime}), one query", single)
        batched, encoder_cores, _ = max(alone.values(), key=lambda rates: rates[0])
        del hasher, index

        port = _free_port()
        serve = [sys.executable, "-m", "dahp.cli", "serve", str(index_dir), "--port", str(port), "--device", "cpu"]
        serve += ["--runtime", args.runtime] + (["--batch-size", str(args.server_batch)] if args.server_batch else [])
        serve += ["--batch-wait-ms", str(args.server_wait_ms)] if args.server_wait_ms is not None else []
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/search?k=20"
        try:
            _wait_ready(port)
            with httpx.Client(timeout=60) as client:
                sequential = [_post(client, url, query) for _ in range(args.requests)]
            single_ms = [ms for status, ms, _ in sequential if status == 200]
            _show("server, 1 client", single_ms, f"{len(single_ms)}/{len(sequential)} answered")

            batched_before = _batching(port)
            server_cpu, client_cpu = _cpu_seconds(server.pid), time.process_time()
            answers, elapsed = _load(url, query, args.clients, args.seconds)
            ok = [ms for status, ms, _ in answers if status == 200]
            errors = len(answers) - len(ok)
            rate = len(ok) / elapsed
            _show(f"server, {args.clients} clients", ok, f"{rate:7.1f} requests/s, {errors} errors")
            server_cores = None if server_cpu is None else (_cpu_seconds(server.pid) - server_cpu) / elapsed
            client_cores = (time.process_time() - client_cpu) / elapsed
            queries, batches = (after - before for after, before in zip(_batching(port), batched_before))
            print(f"{'':34s} server on {server_cores or float('nan'):.2f} cores, clients on {client_cores:.2f} cores; "
                  f"{queries / max(batches, 1):.1f} queries per batch")

            overload, _ = _load(url, query, args.overload, args.seconds / 2)
            statuses = Counter(status for status, _, _ in overload)
            clean_503 = sum(1 for status, _, retry in overload if status == 503 and retry)
            other = sum(count for status, count in statuses.items() if status not in (200, 503))
            _show(f"server, {args.overload} clients", [ms for status, ms, _ in overload if status == 200],
                  f"answers {dict(sorted(statuses.items()))}")

            p50_single = _percentiles(single_ms)[0]
            p99_load = _percentiles(ok)[1]
            print()
            print(f"requests/s with {args.clients} clients / encoder's batched images/s (the faster runtime) = "
                  f"{rate / batched:.2f} (target >= 0.8)")
            if server_cores:
                print(f"requests per server CPU-second / encoder's images per CPU-second = "
                      f"{(rate / server_cores) / (batched / encoder_cores):.2f} (the first ratio without the clients' share)")
            print(f"p99 with {args.clients} clients / single-client p50 = {p99_load / p50_single:.2f} (target <= 3)")
            print(f"errors with {args.clients} clients: {errors} (target 0)")
            print(f"{args.overload} clients: {other} answers other than 200 or 503, "
                  f"{statuses.get(503, 0) - clean_503} 503s without Retry-After (target 0 and 0)")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
