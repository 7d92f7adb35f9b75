"""Ingest at scale, side by side in one run: a resumable ``dahp index build`` of many generated images.

1. Generates ``--images`` small PNGs (digits with per-image noise, one folder per class) in
   ``--work`` (kept, so a rerun skips it) and a model (``--model``, see made_models.py).
2. Times the bare forward pass: ``encode_pixels`` on decoded batches, images/s.
3. Builds the index uninterrupted, timed: the whole pipeline's rate (listing, decoding,
   encoding, chunk commits, faiss, SQLite) against the bare forward pass.
4. Builds it again, killed with SIGKILL ``--kills`` times at random points and rerun each time,
   and compares the result with the uninterrupted build: codes, ids, paths, labels.
5. Builds it with ``torchrun --nproc_per_node --ranks`` and compares again.

Targets (issue 13): the three indexes equal, pipeline rate >= 0.9 x the bare forward pass.

    python benchmarks/ingest_scale.py --images 1000000 --model tiny --kills 3 --ranks 2 --work /tmp/ingest
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from made_models import MODEL_HELP, MODELS, encoding_rate, make_model
from PIL import Image

from dahp.data import load_digits
from dahp.hasher import DeepHasher
from dahp.index import Index
from dahp.index.ingest import work_folder
from dahp.index.manifest import read_manifest

_PER_TASK = 10_000


def _write_images(root: Path, side: int, start: int, stop: int) -> None:
    digits = load_digits()
    rng = np.random.default_rng(start)
    for number in range(start, stop):
        source = number % len(digits.images)
        noisy = np.clip(digits.images[source].astype(np.int16) + rng.integers(-24, 25, digits.images[source].shape),
                        0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        if side != image.width:
            image = image.resize((side, side))
        image.save(root / f"digit{digits.labels[source].argmax()}" / f"{number:07d}.png", compress_level=1)


def generate(root: Path, count: int, side: int) -> Path:
    """``count`` images in ``root`` (made once: a finished folder holds a marker naming its count and side)."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == f"{count} {side}":
        return root
    for digit in range(10):
        (root / f"digit{digit}").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        tasks = [pool.submit(_write_images, root, side, start, min(start + _PER_TASK, count))
                 for start in range(0, count, _PER_TASK)]
        for task in tasks:
            task.result()
    marker.write_text(f"{count} {side}")
    print(f"generated {count:,} {side}x{side} PNGs in {time.perf_counter() - started:.0f} s")
    return root


def bare_forward_rate(model: Path, batch: int, seconds: float) -> float:
    """Images/s of the network alone on decoded batches (no files, no commits)."""
    hasher = DeepHasher.load(model, device="cpu")
    size = hasher.preprocess.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return encoding_rate(hasher, pixels, seconds)


def differences(index: Path, reference: Path) -> str:
    """How ``index`` differs from ``reference`` in what it answers with: codes in id order, and
    rows (id, path, label) less their dates; "none" when it is the same index."""
    loaded, expected = Index.load(index, device="cpu"), Index.load(reference, device="cpu")
    codes, wanted = loaded._engine._codes, expected._engine._codes  # valid while the indexes are held
    if codes.shape != wanted.shape:
        return f"{codes.shape[0]:,} codes instead of {wanted.shape[0]:,}"
    rows = np.flatnonzero((codes != wanted).any(axis=1))
    bits = int(np.unpackbits(codes[rows] ^ wanted[rows]).sum())
    found = [] if not len(rows) else [f"{len(rows)} codes differ ({bits} bits in all)"]
    if _rows(index) != _rows(reference):
        found.append("the rows differ")
    return "; ".join(found) or "none"


def _rows(index: Path) -> list[tuple[int, str, str]]:
    manifest = read_manifest(index)
    with closing(sqlite3.connect(index / manifest["files"]["metadata"]["name"])) as db:
        return db.execute("SELECT id, path, label FROM items ORDER BY id").fetchall()


def _build_command(model: Path, images: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return ["index", "build", str(model), str(images), "-o", str(out), "--chunk-size", str(args.chunk_size),
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu", "--quiet"]


def timed_build(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def killed_build(command: list[str], out: Path, kills: int, expected: float, seed: int) -> float:
    """Run the build, SIGKILL it ``kills`` times at random points, rerun it to the end; total wall seconds."""
    rng = random.Random(seed)
    total = 0.0
    for kill in range(kills):
        after = rng.uniform(0.1, 0.5) * expected
        started = time.perf_counter()
        process = subprocess.Popen(command, start_new_session=True)  # its loader workers die with it
        try:
            process.wait(timeout=after)
            raise SystemExit(f"the build finished before kill {kill + 1} ({after:.0f} s): use more --images")
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        total += time.perf_counter() - started
        chunks = len(list(work_folder(out).glob("chunk-*.dahp")))
        print(f"  kill {kill + 1} after {after:.0f} s: {chunks} chunks committed in {work_folder(out).name}")
    total += timed_build(command)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny", help=MODEL_HELP)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dahp-ingest"),
                        help="folder for the images (kept), the model and the indexes")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes of the sharded build (0: skip)")
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of each build")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    args = parser.parse_args()
    side = MODELS[args.model][1]
    images = generate(args.work / f"images-{args.images}-{side}px", args.images, side)
    runs = args.work / f"runs-{args.model}"
    model = make_model(runs, args.model)
    dahp = [sys.executable, "-m", "dahp.cli"]
    print(f"{args.images:,} images, model {args.model}, chunks of {args.chunk_size}, batches of {args.batch_size}, "
          f"{args.workers} decoding worker(s), torch threads {torch.get_num_threads()}")

    bare = bare_forward_rate(model, args.batch_size, 20.0)
    print(f"bare forward pass:           {bare:10.0f} images/s")
    plain = runs / "plain"
    seconds = timed_build(dahp + _build_command(model, images, plain, args))
    rate = args.images / seconds
    print(f"uninterrupted build:         {rate:10.0f} images/s  ({seconds:.0f} s)  "
          f"= {rate / bare:.2f} x the bare forward pass (target >= 0.9)")

    if args.kills:
        killed = runs / "killed"
        seconds = killed_build(dahp + _build_command(model, images, killed, args), killed, args.kills,
                               args.images / rate, args.seed)
        leftovers = sorted(path.name for path in killed.parent.iterdir() if path.name.startswith(".killed."))
        print(f"killed {args.kills} times:       {args.images / seconds:10.0f} images/s  ({seconds:.0f} s in all)  "
              f"differences from the uninterrupted build: {differences(killed, plain)}; left behind: {leftovers or 'nothing'}")

    if args.ranks > 1:
        sharded = runs / "sharded"
        # each rank with the single process's thread count: a convolution's float rounding depends
        # on it, and an output within rounding of zero can change sign (2 ranks at 1 thread each against
        # 1 process at 2 threads: 3 codes of 1,000,000 differed by a bit)
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        seconds = timed_build([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               str(args.ranks), "-m", "dahp.cli", *_build_command(model, images, sharded, args)], env)
        print(f"{args.ranks} ranks (torchrun):        {args.images / seconds:10.0f} images/s  ({seconds:.0f} s)  "
              f"differences from one process: {differences(sharded, plain)}")


if __name__ == "__main__":
    main()
