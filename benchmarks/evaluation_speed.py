"""Wall time of dahp.metrics.evaluate on the CIFAR-10 protocol's shape, against a 1 s target.

Random codes (default 48 bits), 1,000 queries x 59,000 database items, 10 classes; times
evaluate() (every metric from one ranking pass) and each metric function on its own,
on all cores this process may use, and prints seconds and the ratio to the target.

    python benchmarks/evaluation_speed.py [--bits 48] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
from timing import best_time

from dahp.codes import pack_codes
from dahp.metrics import (
    evaluate,
    mean_average_precision,
    precision_at_n,
    precision_recall_by_radius,
    precision_recall_by_rank,
)

TARGET_SECONDS = 1.0



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=59000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="threads (default: every available core)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    inputs = (
        pack_codes(rng.integers(0, 2, size=(args.queries, args.bits))),
        pack_codes(rng.integers(0, 2, size=(args.database, args.bits))),
        rng.integers(0, args.classes, size=args.queries),
        rng.integers(0, args.classes, size=args.database),
        args.bits,
    )
    workers = {"workers": args.workers}
    parts: dict[str, Callable[[], object]] = {
        "evaluate (all metrics)": lambda: evaluate(*inputs, **workers),
        "evaluate, top_k=1000": lambda: evaluate(*inputs, top_k=1000, **workers),
        "mAP, database-order ties": lambda: mean_average_precision(*inputs, chunk_size=64, **workers),
        "mAP, expected (tie-aware)": lambda: mean_average_precision(*inputs, chunk_size=64, ties="expected", **workers),
        "PR by Hamming radius": lambda: precision_recall_by_radius(*inputs, **workers),
        "PR by rank, N = 1..1000": lambda: precision_recall_by_rank(*inputs, **workers),
        "P@N, N = 1..1000": lambda: precision_at_n(*inputs, **workers),
        "evaluate, 1 worker": lambda: evaluate(*inputs, workers=1),
    }
    print(
        f"{args.queries} queries x {args.database} database, {args.bits} bits, {args.classes} classes, "
        f"workers: {args.workers or 'all available'} (of {os.cpu_count()} CPUs), best of {args.repeats}"
    )
    for name, run in parts.items():
        seconds = best_time(run, args.repeats)
        print(f"  {name:28s} {seconds:7.3f} s   {seconds / TARGET_SECONDS:5.2f} x the {TARGET_SECONDS:g} s target")


if __name__ == "__main__":
    main()
