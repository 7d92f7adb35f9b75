"""Search speed of dahp's faiss engine beside raw faiss and the memory-bandwidth bound, in one run.

On N random 64-bit codes (10,000,000 by default) it measures, side by side:

* exact top-k for a batch of queries: ``FaissEngine.search`` vs a plain ``faiss.IndexBinaryFlat``
  (target: ours <= 1.1 x faiss);
* single-query top-k latency: ours (the database split into one shard per thread) vs faiss (one
  thread per query) vs the bound of reading every code once at the measured memory bandwidth,
  ``N x 8 bytes / bandwidth`` (target: ours <= 2 x bound);
* radius search, one call per query, with recall against the exact scan (target: <= 0.1 ms per
  query, recall 1.0). Queries are database codes with 0..radius bits flipped, so every query has
  at least one answer.

    python benchmarks/search_speed.py               # N = 10,000,000
    python benchmarks/search_speed.py --n 1000000
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from timing import best_time

from dahp.index.engine import FaissEngine


def bandwidth(threads: int, gigabytes: float = 0.5, repeats: int = 5) -> float:
    """Bytes/s of summing a large int64 array split over ``threads`` threads (numpy releases the GIL)."""
    data = np.ones(int(gigabytes * 2**30) // 8, dtype=np.int64)
    chunks = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = best_time(lambda: list(pool.map(np.sum, chunks)), repeats, warmup=False)
    return data.nbytes / seconds


def flip_bits(rng: np.random.Generator, codes: np.ndarray, max_flips: int) -> np.ndarray:
    """Copies of ``codes`` with 0..max_flips distinct random bits flipped each."""
    bits = np.unpackbits(codes, axis=1)
    for row in bits:
        row[rng.choice(bits.shape[1], rng.integers(0, max_flips + 1), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="database size")
    parser.add_argument("--queries", type=int, default=1000, help="batch size of the batched top-k")
    parser.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bits, rng = 64, np.random.default_rng(args.seed)
    threads = faiss.omp_get_max_threads()
    print(f"N = {args.n:,} random {bits}-bit codes, faiss {faiss.__version__}, {threads} threads")

    codes = rng.integers(0, 256, (args.n, bits // 8), dtype=np.uint8)
    started = time.perf_counter()
    ours = FaissEngine(bits)
    ours.add(codes, np.arange(args.n))
    built = time.perf_counter() - started
    started = time.perf_counter()
    raw = faiss.IndexBinaryFlat(bits)
    raw.add(codes)
    raw_built = time.perf_counter() - started
    print(f"add: ours {built:.2f} s (flat storage + {ours.describe()['hash_tables']} hash tables of "
          f"{ours.describe()['hash_key_bits']} bits), faiss IndexBinaryFlat {raw_built:.2f} s")

    queries = codes[rng.integers(0, args.n, args.queries)]
    raw_batch = ours_batch = np.inf
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        raw_batch = min(raw_batch, best_time(lambda: raw.search(queries, args.k), 1, warmup=False))
        ours_batch = min(ours_batch, best_time(lambda: ours.search(queries, args.k), 1, warmup=False))
    raw_d, raw_i = raw.search(queries, args.k)
    order = np.lexsort((raw_i, raw_d), axis=1)
    same = np.array_equal(np.take_along_axis(raw_i, order, axis=1), ours.search(queries, args.k)[1])

    single = codes[rng.integers(0, args.n, args.single)]
    raw_single = np.median([best_time(lambda q=q: raw.search(q[None], args.k), 1, warmup=False) for q in single])
    ours_single = np.median([best_time(lambda q=q: ours.search(q[None], args.k), 1, warmup=False) for q in single])
    all_cores, one_core = bandwidth(threads), bandwidth(1)
    bound = args.n * codes.shape[1] / all_cores

    near = flip_bits(rng, codes[rng.integers(0, args.n, args.queries)], args.radius)
    ours.range_search(near[:1], args.radius)  # warm-up
    started = time.perf_counter()
    found = [ours.range_search(query[None], args.radius)[0][1] for query in near]
    radius_single = (time.perf_counter() - started) / len(near)
    radius_batched = best_time(lambda: ours.range_search(near, args.radius), args.repeats, warmup=False) / len(near)
    limits, _, exact_ids = raw.range_search(near, args.radius + 1)  # faiss keeps distances < threshold
    exact = [set(exact_ids[a:b].tolist()) for a, b in zip(limits[:-1], limits[1:])]
    recall = sum(len(e & set(f.tolist())) for e, f in zip(exact, found)) / sum(len(e) for e in exact)
    extra = sum(len(set(f.tolist()) - e) for e, f in zip(exact, found))

    print(f"memory bandwidth (numpy sum of 0.5 GiB): {all_cores / 1e9:.1f} GB/s with {threads} threads, "
          f"{one_core / 1e9:.1f} GB/s with 1")
    print()
    print(f"{'measure':<44}{'ours':>12}{'faiss':>12}{'reference':>14}{'ratio':>9}  target")
    print(f"{f'top-{args.k}, batch of {args.queries} (ms per batch)':<44}{ours_batch * 1e3:>12.1f}"
          f"{raw_batch * 1e3:>12.1f}{'faiss':>14}{ours_batch / raw_batch:>9.2f}  <= 1.1   (same ids: {same})")
    print(f"{f'top-{args.k}, one query (median ms)':<44}{ours_single * 1e3:>12.2f}{raw_single * 1e3:>12.2f}"
          f"{f'bound {bound * 1e3:.2f}':>14}{ours_single / bound:>9.2f}  <= 2     (vs faiss: "
          f"{raw_single / ours_single:.1f}x faster)")
    print(f"{f'radius {args.radius}, one query per call (ms/query)':<44}{radius_single * 1e3:>12.4f}{'':>12}"
          f"{'0.1 ms':>14}{radius_single / 1e-4:>9.2f}  <= 1     (method {ours.radius_method(args.radius)}, "
          f"{ours.probes(args.radius)} probes)")
    print(f"{f'radius {args.radius}, batch of {args.queries} (ms/query)':<44}{radius_batched * 1e3:>12.4f}")
    print(f"{f'radius {args.radius} recall vs exact scan':<44}{recall:>12.4f}{'':>12}{'1.0':>14}{'':>9}  "
          f"= 1.0    ({sum(map(len, exact))} answers, {extra} not in the exact set)")


if __name__ == "__main__":
    main()
