"""mAP@ALL against wall-clock minutes for benchmark run records: what each recipe buys per CPU-minute.

Reads the run records ``dahp benchmark`` writes (``OUT/runs/<method>-<bits>.json``; folders
are searched for them) and draws one point per run, labelled ``budget: method bits``,
with the split's chance level and the 0.80 target of issue 14. A shallow method that reused
features another run extracted (the benchmark caches them) is charged that extraction too,
so every point is the time the method would take alone.

    python benchmarks/quality_vs_minutes.py benchmarks/records/cpu-transfer --out docs/quality-vs-minutes.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dahp.plots import plot_map_vs_minutes


def run_records(paths: list[Path]) -> list[dict]:
    files = [found for path in paths for found in (sorted(path.rglob("*-*.json")) if path.is_dir() else [path])]
    return [record for record in map(lambda file: json.loads(file.read_text()), files) if "wall_seconds" in record]


def minutes_alone(record: dict, records: list[dict]) -> float:
    """The run's wall time, with the feature extraction it shared charged in full."""
    if "features" not in record:
        return record["wall_seconds"] / 60
    extraction = max(other.get("feature_seconds", 0.0) for other in records
                     if other.get("features") == record["features"] and other["budget"] == record["budget"])
    return (record["wall_seconds"] - record.get("feature_seconds", 0.0) + extraction) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="run record files or folders holding them")
    parser.add_argument("--out", type=Path, default=Path("docs/quality-vs-minutes.png"))
    parser.add_argument("--target", type=float, default=0.80)
    args = parser.parse_args()
    records = run_records(args.records)
    if not records:
        raise SystemExit(f"no run records (JSON with wall_seconds) under {', '.join(map(str, args.records))}")
    runs = {f"{record['budget']}: {record['method']} {record['bits']}":
            (minutes_alone(record, records), record["metrics"]["map"]) for record in records}
    chances = {round(record["metrics"]["chance_map"], 4) for record in records if "chance_map" in record["metrics"]}
    plot_map_vs_minutes(runs, args.out, chance=chances.pop() if len(chances) == 1 else None, target=args.target)
    for label, (minutes, value) in sorted(runs.items(), key=lambda item: item[1][0]):
        print(f"{minutes:7.1f} min  {value:.4f}  {label}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
