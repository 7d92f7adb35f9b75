"""PyTorch against ONNX Runtime for encoding, alone and beside a busy Python thread, side by side in one run.

Why: encoding is a tenth of the pretrained recipe's hour (60,000 images), and all of a search
server's work. A server also runs Python beside the encoder (the HTTP event loop, request
parsing): PyTorch's eager forward pass needs the GIL between its hundred-odd operators, ONNX
Runtime runs the whole graph without it. The busy thread here stands in for that Python work.

The network is the pretrained recipe's (budget ``cpu-transfer``, EfficientNet-Lite0 at
160 px, random weights: speed does not depend on them). PyTorch runs the folded,
channels-last inference copy ``dahp`` encodes with; ONNX Runtime runs the graph that
``dahp export`` writes, with its worker threads sleeping between runs (as ``dahp serve`` runs
it) and spinning (ONNX Runtime's default). Rounds alternate the backends (a shared CPU slows both alike); each
figure is the best round's.

    python benchmarks/encoding_backends.py --rounds 2
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from dahp.benchmark import Budget
from dahp.export import INPUT_NAME, OUTPUT_NAMES, onnx_session
from dahp.models import HashingNetwork
from dahp.models.inference import inference_copy


def _backends(image_size: int) -> dict[str, Callable[[np.ndarray], object]]:
    config = Budget.load("cpu-transfer").network()
    torch.manual_seed(0)
    network = HashingNetwork(config).eval()
    folded = inference_copy(network)
    sessions = {spinning: onnx_session(network, config.bits, image_size, spinning) for spinning in (False, True)}

    def run_torch(images: np.ndarray) -> object:
        with torch.inference_mode():
            return folded(torch.from_numpy(images))

    def onnx_runner(spinning: bool) -> Callable[[np.ndarray], object]:
        return lambda images: sessions[spinning].run([OUTPUT_NAMES[1]], {INPUT_NAME: images})

    return {"pytorch": run_torch, "onnxruntime": onnx_runner(False), "onnxruntime, spinning": onnx_runner(True)}


def _rate(encode: Callable[[np.ndarray], object], images: np.ndarray, seconds: float) -> float:
    encode(images)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(images)
        done += len(images)
    return done / (time.perf_counter() - started)


class _BusyPython:
    """A thread that runs pure Python (holding the GIL between its switches) while the block runs."""

    def __enter__(self) -> None:
        self._stop = threading.Event()

        def spin() -> None:
            while not self._stop.is_set():
                sum(range(1000))

        self._thread = threading.Thread(target=spin, daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", default="8,256", help="batch sizes: a server's typical batch, dahp encode's")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measurement")
    args = parser.parse_args()
    size = Budget.load("cpu-transfer").image_size
    backends = _backends(size)
    best: dict[tuple[str, int, str], float] = {}
    for round_number in range(args.rounds):
        for batch in (int(value) for value in args.batches.split(",")):
            images = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            for condition in ("alone", "beside busy Python"):
                for name, encode in backends.items():
                    if condition == "alone":
                        rate = _rate(encode, images, args.seconds)
                    else:
                        with _BusyPython():
                            rate = _rate(encode, images, args.seconds)
                    key = (name, batch, condition)
                    best[key] = max(best.get(key, 0.0), rate)
                    print(f"round {round_number + 1}: {name}, batch {batch}, {condition}: {rate:.1f} img/s", flush=True)
    names = list(backends)
    print("\n" + f"{'batch':>5s} {'condition':20s} " + " ".join(f"{name:>22s}" for name in names) + "  (img/s)")
    for batch, condition in sorted({(b, c) for _, b, c in best}):
        rates = [best[(name, batch, condition)] for name in names]
        print(f"{batch:5d} {condition:20s} " + " ".join(f"{rate:22.1f}" for rate in rates))


if __name__ == "__main__":
    main()
