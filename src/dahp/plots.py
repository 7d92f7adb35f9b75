"""Figures and a summary table from :func:`dahp.metrics.evaluate` result dicts.

``results`` maps a method / model name to one evaluate() dict (the same dicts read
back from JSON work too).  Figures are drawn with matplotlib's object API on an Agg
canvas (no pyplot global state, no display needed) and written atomically, so a
crash never leaves a half-written PNG.  matplotlib is imported inside the functions:
importing this module, or dahp.metrics, stays cheap.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dahp.errors import DahpError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _check_results(results: dict[str, dict[str, Any]], keys: tuple[str, ...], name: str = "results") -> None:
    if not isinstance(results, dict) or not results:
        raise DahpError(f"{name}: expected a non-empty dict of method name -> evaluate() result")
    for method, result in results.items():
        missing = [key for key in keys if not isinstance(result, dict) or key not in result]
        if missing:
            raise DahpError(
                f"{name}[{method!r}]: expected a dahp.metrics.evaluate() dict, missing {', '.join(missing)}"
            )


LINE_STYLES = ("-", "--", ":", "-.")


def _line_style(index: int) -> str:
    """Solid for the first ten lines, then dashed, dotted…: the colour cycle repeats after ten."""
    return LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def _new_figure(n_axes: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0 * n_axes, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def _save_png(figure: Figure, path: str | Path) -> None:
    from dahp.serialization import atomic_write_bytes  # imported here: serialization pulls in torch

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


LEGEND_INSIDE = 10  # more lines than this (a whole benchmark's runs) get one legend beside the plots
LEGEND_ROWS = 30


def _style(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    if len(axes.get_legend_handles_labels()[1]) <= LEGEND_INSIDE:
        axes.legend(fontsize="small")


def _legend_beside(figure: Figure, axes: Axes) -> None:
    """For many lines: one legend to the right of all axes, in columns of ``LEGEND_ROWS``,
    with the figure grown to hold it (inside the axes it would squash them to nothing)."""
    handles, labels = axes.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE:
        return
    columns = math.ceil(len(labels) / LEGEND_ROWS)
    width, height = figure.get_size_inches()
    figure.set_size_inches(width + 1.8 * columns, max(height, 0.16 * min(len(labels), LEGEND_ROWS) + 1))
    figure.legend(handles, labels, loc="outside right upper", fontsize="x-small", ncol=columns)


def _chance_line(axes: Axes, results: dict[str, dict[str, Any]]) -> None:
    """A dashed line at a random ranking's precision, so every curve is read against its floor.

    A random ranking's expected precision is the mean fraction of relevant database items
    at every N and every recall; results without ``chance_precision`` (written before it
    existed) draw none, and results of different splits draw one line each.
    """
    levels = sorted({round(float(result["chance_precision"]), 6) for result in results.values()
                     if "chance_precision" in result})
    for level in levels:
        axes.axhline(level, color="0.4", linestyle="--", linewidth=1.0, label=f"chance ({level:.3f})")


def pr_curves_figure(results: dict[str, dict[str, Any]]) -> Figure:
    """The figure :func:`plot_pr_curves` writes: PR by Hamming radius (left) and by rank (right)."""
    _check_results(results, ("pr_by_radius", "pr_by_rank"))
    figure, (by_radius, by_rank) = _new_figure(2)
    for index, (method, result) in enumerate(results.items()):
        style = _line_style(index)
        by_radius.plot(result["pr_by_radius"]["recall"], result["pr_by_radius"]["precision"], marker=".",
                       linestyle=style, label=method)
        by_rank.plot(result["pr_by_rank"]["recall"], result["pr_by_rank"]["precision"], linestyle=style, label=method)
    _chance_line(by_rank, results)
    _style(by_radius, "PR by Hamming radius", "recall", "precision")
    _style(by_rank, "PR by rank", "recall", "precision")
    _legend_beside(figure, by_rank)
    return figure


def plot_pr_curves(results: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Precision-recall curves per method: by Hamming radius (left) and by rank (right), chance dashed.

    Both are shown because the field reports either; radius lookup is what a hash
    table serves, ranking is what mAP and P@N measure.
    """
    _save_png(pr_curves_figure(results), path)


def precision_at_n_figure(results: dict[str, dict[str, Any]]) -> Figure:
    """The figure :func:`plot_precision_at_n` writes."""
    _check_results(results, ("precision_at_n",))
    figure, (axes,) = _new_figure(1)
    for index, (method, result) in enumerate(results.items()):
        axes.plot(result["precision_at_n"]["n"], result["precision_at_n"]["precision"], linestyle=_line_style(index),
                  label=method)
    _chance_line(axes, results)
    _style(axes, "Precision@N", "N (top returned)", "precision")
    _legend_beside(figure, axes)
    return figure


def plot_precision_at_n(results: dict[str, dict[str, Any]], path: str | Path) -> None:
    """P@N curve per method over the evaluated N grid, with a random ranking's precision dashed."""
    _save_png(precision_at_n_figure(results), path)


def plot_precision_within_radius_vs_bits(
    results_by_bits: dict[str, dict[int, dict[str, Any]]], path: str | Path
) -> None:
    """Precision within the Hamming radius against code length, one line per method (paper Figs. 4-8 (b)).

    The x values come from each result's own ``bits`` field, so dicts whose integer keys
    became strings in a JSON round trip plot the same.
    """
    if not isinstance(results_by_bits, dict) or not results_by_bits:
        raise DahpError("results_by_bits: expected a non-empty dict of method name -> {bits: evaluate() result}")
    for method, by_bits in results_by_bits.items():
        _check_results(by_bits, ("bits", "radius", "precision_within_radius"), name=f"results_by_bits[{method!r}]")
    all_results = [result for by_bits in results_by_bits.values() for result in by_bits.values()]
    radii = {result["radius"] for result in all_results}
    if len(radii) != 1:
        raise DahpError(f"results_by_bits: expected one Hamming radius across all results, got {sorted(radii)}")
    figure, (axes,) = _new_figure(1)
    for index, (method, by_bits) in enumerate(results_by_bits.items()):
        points = sorted((result["bits"], result["precision_within_radius"]) for result in by_bits.values())
        axes.plot(*zip(*points), marker="o", linestyle=_line_style(index), label=method)
    axes.set_xticks(sorted({result["bits"] for result in all_results}))
    radius = radii.pop()
    _style(axes, f"Precision within Hamming radius {radius}", "code length (bits)", f"P@H≤{radius}")
    _legend_beside(figure, axes)
    _save_png(figure, path)


def map_vs_minutes_figure(runs: dict[str, tuple[float, float]], chance: float | None = None,
                          target: float | None = None) -> Figure:
    """mAP against wall-clock minutes, one labelled point per recipe: what a CPU-minute buys.

    ``runs`` maps a label to ``(minutes, mAP)``; ``chance`` and ``target`` draw dashed and
    dotted horizontal lines.
    """
    if not isinstance(runs, dict) or not runs:
        raise DahpError("runs: expected a non-empty dict of label -> (minutes, mAP)")
    for label, point in runs.items():
        if not (isinstance(point, tuple | list) and len(point) == 2 and all(math.isfinite(v) for v in point)):
            raise DahpError(f"runs[{label!r}]: expected (minutes, mAP) as two finite numbers, got {point!r}")
    figure, (axes,) = _new_figure(1)
    for index, (label, (minutes, value)) in enumerate(sorted(runs.items(), key=lambda item: item[1][0])):
        marker = "osD^v"[index // 10 % 5]  # a new marker each time the ten colours come round again
        axes.plot([minutes], [value], marker=marker, linestyle="none", label=label, color=f"C{index % 10}")
    if chance is not None:
        axes.axhline(chance, color="0.4", linestyle="--", linewidth=1.0, label=f"chance ({chance:.3f})")
    if target is not None:
        axes.axhline(target, color="0.2", linestyle=":", linewidth=1.0, label=f"target ({target:.2f})")
    axes.set_xlim(left=0)
    axes.set_ylim(0, 1)
    _style(axes, "mAP@ALL against wall-clock minutes", "minutes (train + encode + evaluate)", "mAP@ALL")
    _legend_beside(figure, axes)
    return figure


def plot_map_vs_minutes(runs: dict[str, tuple[float, float]], path: str | Path, chance: float | None = None,
                        target: float | None = None) -> None:
    _save_png(map_vs_minutes_figure(runs, chance, target), path)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per method: bits, mAP@K, tie-aware mAP@K, chance mAP@K, P@H≤r and P@N.

    N is 1000 when evaluated (the paper's figure), else the largest N evaluated; K, r
    and N get their own columns because they may differ between rows.  The chance column
    (a random ranking's mAP@K on the same split) shows what the figures beside it beat;
    results written before it existed show "–".
    """
    _check_results(results, ("bits", "top_k", "map", "map_expected", "radius", "precision_within_radius",
                             "precision_at_n"))
    lines = [
        "| method | bits | K | mAP@K | expected mAP@K | chance mAP@K | r | P@H≤r | N | P@N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, result in results.items():
        n_grid = result["precision_at_n"]["n"]
        n = 1000 if 1000 in n_grid else max(n_grid)
        precision_at_n = result["precision_at_n"]["precision"][n_grid.index(n)]
        k = "all" if result["top_k"] is None else result["top_k"]
        chance = f"{result['chance_map']:.4f}" if "chance_map" in result else "–"
        lines.append(
            f"| {method} | {result['bits']} | {k} | {result['map']:.4f} | {result['map_expected']:.4f} | {chance} | "
            f"{result['radius']} | {result['precision_within_radius']:.4f} | {n} | {precision_at_n:.4f} |"
        )
    return "\n".join(lines) + "\n"
