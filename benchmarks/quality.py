"""Issue 5's quality targets, measured side by side in one benchmark run.

Runs (or resumes) ``dahp benchmark`` for the 48-bit ablation (DPSH, DAHP-v1, v2, v3)
plus the other baselines at one budget, then checks:

- ``cpu``: DAHP's mAP@ALL >= 1.10 x DPSH's (the paper's ratio is 1.137) and >= every
  other method's; the ablation order is printed as measured;
- ``cpu-pretrained``: DAHP's mAP@ALL >= 0.85 (the paper: 0.8477 at 224 px on a GPU).

    python benchmarks/quality.py --budget cpu --data ../shared/datasets/cifar10-jpeg.tar.gz --out runs/cpu
"""

from __future__ import annotations

import argparse
import time

from dahp.benchmark import Budget, plan_runs, run_benchmark, split_data
from dahp.data import load_source
from dahp.methods import parse_methods

DEFAULT_METHODS = "dahp,dahp-v1,dahp-v2,dpsh,csq"


def check_targets(records: dict, budget: str, bits: int) -> list[tuple[str, float, str, bool]]:
    """(target, measured, required, met) for the budget's targets."""
    score = {record["method"]: record["metrics"]["map"] for record in records.values() if record["bits"] == bits}
    dahp = score["dahp"]
    checks = []
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
    parser.add_argument("--methods", default=DEFAULT_METHODS)
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
    for target, measured, required, met in check_targets(records, budget.name, args.bits):
        print(f"{target:<24} {measured:8.4f}  {required:<8} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
