"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--clock``: on a CPU shared with other jobs, ``--threads 1 --clock cpu``
    counts only the CPU time this process got, which other jobs barely move."""
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared CPU, "
                        "with --threads 1)")


def apply_clock_options(args: argparse.Namespace) -> Callable[[], float]:
    """Set the thread count asked for; returns the clock to time with."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return CLOCKS[args.clock]


def best_time(run: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Best of ``repeats`` runs in seconds; the warm-up pays for first-touch page faults."""
    if warmup:
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)
