"""Evaluation reports on disk: results.json, a Markdown table and the paper-style plots.

Everything a reader needs to trust or repeat the numbers goes in the same folder: the
protocol and split digest, each model's configuration, and the metric conventions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .plots import markdown_table, plot_pr_curves, plot_precision_at_n, plot_precision_within_radius_vs_bits
from .serialization import atomic_write_bytes

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
PR_PNG, PRECISION_AT_N_PNG, RADIUS_VS_BITS_PNG = "pr_curves.png", "precision_at_n.png", "precision_radius_vs_bits.png"


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_report(
    out_dir: str | Path,
    results: dict[str, dict[str, Any]],
    methods: dict[str, str],
    context: dict[str, Any],
    skipped: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Write the report for ``results`` (run name -> ``metrics.evaluate`` output); returns the files.

    ``methods`` maps each run to its method name, so runs of one method at several code
    lengths become one line of the precision-within-radius-vs-bits plot.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / RESULTS_JSON, out / RESULTS_MD, out / PR_PNG, out / PRECISION_AT_N_PNG]
    write_json(written[0], {"context": context, "results": results, "skipped_images": skipped or []})
    some = next(iter(results.values()))
    notes = [
        "",
        f"{some['queries']} queries, {some['database']} database images. Conventions:",
        *(f"- {name}: {text}" for name, text in some["conventions"].items()),
    ]
    if skipped:
        notes += ["", f"{len(skipped)} unreadable images were skipped:", *(f"- {path}: {why}" for path, why in skipped)]
    atomic_write_bytes(written[1], (markdown_table(results) + "\n".join(notes) + "\n").encode())
    plot_pr_curves(results, written[2])
    plot_precision_at_n(results, written[3])
    if len({result["bits"] for result in results.values()}) > 1:
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for run, result in results.items():
            by_method.setdefault(methods[run], {})[result["bits"]] = result
        written.append(out / RADIUS_VS_BITS_PNG)
        plot_precision_within_radius_vs_bits(by_method, written[-1])
    return written
