"""Models and images made in seconds for the serving and ingest benchmarks.

Speed does not depend on how well a network is trained, so each model here is its budget's
network trained for one step on a few digit images; what matters is its architecture and
input size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from dahp.cli import main as dahp_main
from dahp.data import load_digits
from dahp.hasher import MODEL_FILE, DeepHasher

MODELS = {
    # name: (budget, side of the generated images, flags that override the budget)
    "tiny": ("cpu", 8, ["--image-size", "8", "--output-stride", "32", "--no-attention"]),
    "digits": ("cpu", 8, ["--image-size", "8", "--small-stem", "--output-stride", "4"]),
    "cpu-transfer": ("cpu-transfer", 96, []),
}
MODEL_HELP = ("cpu-transfer: the pretrained recipe's network (EfficientNet-Lite0 at 160 px); digits: the demo's "
              "ResNet-18 on 8-px digits; tiny: a ResNet-18 that shrinks 8-px images to one pixel at once")


def digit_folder(root: Path, side: int, count: int) -> Path:
    """``count`` digit images upscaled to ``side`` px, in one folder per class."""
    digits = load_digits()
    for number in range(count):
        folder = root / f"digit{digits.labels[number].argmax()}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[number]).resize((side, side)).save(folder / f"{number}.png")
    return root


def make_model(root: Path, name: str) -> Path:
    """The model file of ``name``'s network, trained for one step under ``root``."""
    budget, side, flags = MODELS[name]
    photos = digit_folder(root / "train-images", side, 64)
    run = root / "run"
    code = dahp_main(["train", "--data", str(photos), "--budget", budget, "--epochs", "1", "--frozen-epochs", "0",
                      "--min-steps", "1", "--quiet", "--out", str(run), *flags])
    if code:
        raise SystemExit(f"training the {name} model failed (exit status {code})")
    return run / MODEL_FILE


def encoding_rate(hasher: DeepHasher, pixels: np.ndarray, seconds: float) -> float:
    """Images/s of the network alone on the decoded batch ``pixels`` (no files), after a warm-up
    pass that pays for the inference copy and first-touch allocations."""
    hasher.encode_pixels(pixels)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        hasher.encode_pixels(pixels)
        images += len(pixels)
    return images / (time.perf_counter() - started)
