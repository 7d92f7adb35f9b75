"""``dahp demo``: DAHP against its DPSH-loss ablation on scikit-learn's digits, in minutes on a CPU.

The recipe (split, resolution, epochs, schedule) lives here, not in the library: the
8x8 digits go through ResNet-18's small-image stem at output stride 4, so the dual
attention works on a 2x2 map. Both runs share the network, data order, seed and
optimiser; they differ only in the loss, which is the comparison the paper's anchor
loss is about.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .codes import hamming_distance
from .data import default_preprocess, get_protocol, load_digits, split_digest
from .hasher import DeepHasher
from .metrics import mean_average_precision
from .models import ModelConfig
from .training import TrainConfig

PROTOCOL = get_protocol("per-class", seed=0, query_per_class=20, train_per_class=100)


@dataclass
class DemoRun:
    name: str
    mean_ap: float
    train_seconds: float
    train_images_per_s: float
    encode_images_per_s: float
    hasher: DeepHasher


def _train_and_score(name: str, hasher: DeepHasher, data, split) -> tuple[DemoRun, np.ndarray, np.ndarray]:
    started = time.perf_counter()
    record = {"source": "digits", "protocol": PROTOCOL.to_dict(), "sizes": split.sizes(),
              "split_sha256": split_digest(split)}
    hasher.fit(data.subset(split.train), data_spec=record)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    query = hasher.encode(data.subset(split.query))
    database = hasher.encode(data.subset(split.database), role="database")
    encode_rate = (len(split.query) + len(split.database)) / (time.perf_counter() - started)
    classes = data.labels.argmax(axis=1)
    score = mean_average_precision(query, database, classes[split.query], classes[split.database], hasher.bits)
    trained = len(split.train) * hasher.train_config.epochs
    run = DemoRun(name, score, train_seconds, trained / train_seconds, encode_rate, hasher)
    return run, query, database


def run_demo(
    epochs: int = 12, bits: int = 48, seed: int = 0, progress: bool = True, echo: Callable[[str], None] = print
) -> list[DemoRun]:
    data = load_digits()
    split = PROTOCOL.split(data)
    echo(f"digits: {len(data)} images, 10 classes; split (seed {PROTOCOL.seed}): "
         f"{len(split.query)} queries, {len(split.train)} training, {len(split.database)} database")
    model = ModelConfig(bits=bits, output_stride=4, small_stem=True)
    dahp_config = TrainConfig(epochs=epochs, seed=seed, schedule="cosine", pairs="batch")
    ablation_config = replace(dahp_config, method="dahp-v2")  # DPSH's loss: the anchor loss off
    runs = []
    for name, config in (("DAHP (pairwise + anchor loss)", dahp_config),
                         ("DPSH loss (anchor loss off)", ablation_config)):
        echo(f"training {name}: {bits} bits, {epochs} epochs ...")
        hasher = DeepHasher(model, config, default_preprocess("digits"), weights="none", device="cpu", progress=progress)
        run, query, database = _train_and_score(name, hasher, data, split)
        runs.append(run)
        if len(runs) == 1:
            dahp_codes = query, database
    echo("")
    echo(f"{'method':<32} {'mAP@ALL':>8} {'train s':>8} {'train img/s':>12} {'encode img/s':>13}")
    for run in runs:
        echo(f"{run.name:<32} {run.mean_ap:>8.4f} {run.train_seconds:>8.1f} "
             f"{run.train_images_per_s:>12.0f} {run.encode_images_per_s:>13.0f}")
    _show_examples(data, split, *dahp_codes, echo)
    return runs


def _show_examples(data, split, query, database, echo: Callable[[str], None], examples: int = 3) -> None:
    """Three queries, spread over classes, with their top-5 by Hamming distance (ties: database order)."""
    classes = data.labels.argmax(axis=1)
    picks = np.linspace(0, len(split.query) - 1, examples).astype(int)
    echo("\nexample queries (DAHP codes; top-5 database images by Hamming distance):")
    for pick in picks:
        distances = hamming_distance(query[pick : pick + 1], database)[0]
        top = np.argsort(distances, kind="stable")[:5]
        results = ", ".join(
            f"#{split.database[i]} digit {classes[split.database[i]]} (d={distances[i]})" for i in top
        )
        echo(f"  query #{split.query[pick]} digit {classes[split.query[pick]]} -> {results}")
