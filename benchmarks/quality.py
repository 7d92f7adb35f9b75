"""The benchmark's quality targets, measured side by side in one benchmark run.

Runs (or resumes) ``dahp benchmark`` for every method (the paper's Table IV, the
ablation DAHP-v1/v2, CSQ and LSH; ``--methods`` to choose) at one budget, then checks:

- every method that learns (all but LSH, which is data-independent) reaches
  mAP@ALL >= 1.3 x chance, chance being the mAP of a random ranking (the mean fraction
  of the database relevant to a query); a method at chance is a bug;
- ``cpu``: DAHP's mAP@ALL >= 1.10 x DPSH's (the paper's ratio is 1.137) and >= every
  other method's; the order is printed as measured;
- ``cpu-pretrained``: DAHP's mAP@ALL >= 0.85 (the paper: 0.8477 at 224 px on a GPU).

    python benchmarks/quality.py --budget cpu --data ../shared/datasets/cifar10-jpeg.tar.gz --out runs/cpu
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dahp.benchmark import Budget, plan_runs, run_benchmark, split_data
from dahp.data import load_source
from dahp.methods import parse_methods

DATA_INDEPENDENT = {"lsh"}
ABOVE_CHANCE = 1.3


def chance_map(query_labels: np.ndarray, database_labels: np.ndarray) -> float:
    """A random ranking's expected mAP@ALL: the mean fraction of the database sharing a label with the query."""
    relevant = (query_labels.astype(np.float64) @ database_labels.T.astype(np.float64)) > 0
    return float(relevant.mean())


def check_targets(records: dict, budget: str, bits: int, chance: float) -> list[tuple[str, float, str, bool]]:
    """(target, measured, required, met) for the budget's targets."""
    score = {record["method"]: record["metrics"]["map"] for record in records.values() if record["bits"] == bits}
    checks = [(f"{method} / chance", value / chance, f">= {ABOVE_CHANCE}", value >= ABOVE_CHANCE * chance)
              for method, value in score.items() if method not in DATA_INDEPENDENT]
    if "dahp" not in score:
        return checks
    dahp = score["dahp"]
    if "dpsh" in score:
        checks.append(("DAHP / DPSH mAP", dahp / score["dpsh"], ">= 1.10", dahp / score["dpsh"] >= 1.10))
    for method, value in score.items():
        if method != "dahp":
            checks.append((f"DAHP - {method} mAP", dahp - value, ">= 0", dahp >= value))
    if budget == "cpu-pretrained":
        checks.append(("DAHP mAP@ALL", dahp, ">= 0.85", dahp >= 0.85))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--data", default=None, help="default: the budget's dataset")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    budget = Budget.load(args.budget)
    source = args.data or budget.dataset
    data = load_source(source, cache_dir=args.cache_dir)
    shared = split_data(data, source, budget, seed=0)
    plans = plan_runs(parse_methods(args.methods), [args.bits], budget, data.num_classes, seed=0)
    started = time.perf_counter()
    records = run_benchmark(shared, plans, budget, args.out, progress=False)
    print(f"\nbudget {budget.name}, {args.bits} bits, {len(records)} runs, "
          f"{time.perf_counter() - started:.0f} s this invocation "
          f"({sum(r['wall_seconds'] for r in records.values()) / 60:.1f} min of runs in all)")
    order = sorted(records.values(), key=lambda record: record["metrics"]["map"])
    print("ablation/baseline order (low to high): " + " < ".join(
        f"{record['method']} {record['metrics']['map']:.4f}" for record in order))
    chance = chance_map(shared.query.labels, shared.database.labels)
    print(f"chance mAP (random ranking): {chance:.4f}")
    for target, measured, required, met in check_targets(records, budget.name, args.bits, chance):
        print(f"{target:<24} {measured:8.4f}  {required:<8} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
