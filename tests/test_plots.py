import json
from pathlib import Path

import numpy as np
import pytest

from dahp.codes import pack_codes
from dahp.errors import DahpError
from dahp.metrics import evaluate
from dahp.plots import (
    markdown_table,
    plot_pr_curves,
    plot_precision_at_n,
    plot_precision_within_radius_vs_bits,
    pr_curves_figure,
    precision_at_n_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_result(bits: int, seed: int, n_values=(1, 10, 100, 1000)) -> dict:
    rng = np.random.default_rng(seed)
    return evaluate(
        pack_codes(rng.integers(0, 2, size=(12, bits))), pack_codes(rng.integers(0, 2, size=(80, bits))),
        rng.integers(0, 3, size=12), rng.integers(0, 3, size=80), bits, n_values=list(n_values),
    )


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {"DAHP": fake_result(12, 0), "DPSH": fake_result(12, 1, n_values=(1, 5, 50))}


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary file left behind


def test_plots_write_valid_pngs(tmp_path: Path, results: dict[str, dict]) -> None:
    plot_pr_curves(results, tmp_path / "pr.png")
    plot_precision_at_n(results, tmp_path / "sub" / "p_at_n.png")
    by_bits = {
        method: {bits: fake_result(bits, seed + bits) for bits in (8, 16, 24)}
        for seed, method in enumerate(("DAHP", "DPSH"))
    }
    # Integer keys turned into strings by a JSON round trip plot the same.
    by_bits["DPSH"] = json.loads(json.dumps(by_bits["DPSH"]))
    plot_precision_within_radius_vs_bits(by_bits, tmp_path / "p_radius_vs_bits.png")
    for name in ("pr.png", "sub/p_at_n.png", "p_radius_vs_bits.png"):
        assert_png(tmp_path / name)


def test_plot_overwrites_existing_file(tmp_path: Path, results: dict[str, dict]) -> None:
    path = tmp_path / "pr.png"
    path.write_bytes(b"old")
    plot_pr_curves(results, path)
    assert_png(path)


def test_markdown_table(results: dict[str, dict]) -> None:
    results = {**results, "DAHP@1000": {**results["DAHP"], "top_k": 1000}}
    lines = markdown_table(results).splitlines()
    assert lines[0] == "| method | bits | K | mAP@K | expected mAP@K | chance mAP@K | r | P@H≤r | N | P@N |"
    assert lines[1].startswith("|---|")
    assert len(lines) == 2 + len(results)
    dahp = results["DAHP"]
    p_at_1000 = dahp["precision_at_n"]["precision"][3]
    assert lines[2] == (
        f"| DAHP | 12 | all | {dahp['map']:.4f} | {dahp['map_expected']:.4f} | {dahp['chance_map']:.4f} | 2 | "
        f"{dahp['precision_within_radius']:.4f} | 1000 | {p_at_1000:.4f} |"
    )
    # Without N = 1000 in the grid the largest N is reported.
    dpsh = results["DPSH"]
    assert lines[3].split(" | ")[-2:] == ["50", f"{dpsh['precision_at_n']['precision'][2]:.4f} |"]
    assert lines[4].split(" | ")[:3] == ["| DAHP@1000", "12", "1000"]


def _chance_lines(axes) -> list:
    return [line for line in axes.get_lines() if line.get_label().startswith("chance")]


def test_chance_is_dashed_on_the_rank_plots_and_a_column_of_the_table(results: dict[str, dict]) -> None:
    one = {"DAHP": results["DAHP"]}
    level = one["DAHP"]["chance_precision"]
    by_radius, by_rank = pr_curves_figure(one).axes
    (p_at_n,) = precision_at_n_figure(one).axes
    assert not _chance_lines(by_radius)  # a Hamming ball's precision has no fixed random level
    for axes in (by_rank, p_at_n):
        (line,) = _chance_lines(axes)
        assert line.get_linestyle() == "--" and list(line.get_ydata()) == pytest.approx([level, level], abs=1e-6)
        assert line.get_label() == f"chance ({level:.3f})"
    # Results read back from a report written before the chance level existed: no line, a dash in the table.
    old = {"DAHP": {key: value for key, value in results["DAHP"].items() if not key.startswith("chance")}}
    assert not _chance_lines(precision_at_n_figure(old).axes[0])
    assert markdown_table(old).splitlines()[2].split(" | ")[5] == "–"


def test_bad_inputs_raise_dahp_error(tmp_path: Path, results: dict[str, dict]) -> None:
    with pytest.raises(DahpError, match="results"):
        plot_pr_curves({}, tmp_path / "x.png")
    with pytest.raises(DahpError, match=r"results\['bad'\].*pr_by_radius"):
        plot_pr_curves({"bad": {"map": 0.5}}, tmp_path / "x.png")
    with pytest.raises(DahpError, match="precision_at_n"):
        markdown_table({"bad": {"map": 1}})
    mixed = {"A": {12: results["DAHP"], 16: {**results["DAHP"], "bits": 16, "radius": 3}}}
    with pytest.raises(DahpError, match="one Hamming radius"):
        plot_precision_within_radius_vs_bits(mixed, tmp_path / "x.png")
    with pytest.raises(DahpError, match="results_by_bits"):
        plot_precision_within_radius_vs_bits({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_importing_metrics_does_not_import_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, dahp.metrics, dahp.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_whole_benchmark_of_runs_gets_one_legend_beside_the_plots(tmp_path: Path) -> None:
    import warnings

    import matplotlib.image

    many = {f"method{i}-{bits}": fake_result(bits, i) for i in range(14) for bits in (12, 24, 32, 48)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" when 56 entries squash the axes
        plot_pr_curves(many, tmp_path / "pr.png")
    assert_png(tmp_path / "pr.png")
    plot_pr_curves({"a": fake_result(12, 0)}, tmp_path / "few.png")
    few_width = matplotlib.image.imread(tmp_path / "few.png").shape[1]
    assert matplotlib.image.imread(tmp_path / "pr.png").shape[1] > few_width  # grown to hold the legend


def test_lines_beyond_the_colour_cycle_change_style() -> None:
    from dahp.plots import _line_style

    assert [_line_style(i) for i in (0, 9, 10, 19, 20, 30, 40)] == ["-", "-", "--", "--", ":", "-.", "-"]


def test_map_against_minutes_draws_a_point_per_recipe_and_the_lines(tmp_path: Path) -> None:
    from dahp.plots import map_vs_minutes_figure, plot_map_vs_minutes

    runs = {"cpu-transfer": (30.4, 0.707), "cpu": (22.9, 0.247)}
    axes = map_vs_minutes_figure(runs, chance=0.1, target=0.8).axes[0]
    points = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
    assert points["cpu-transfer"] == ([30.4], [0.707]) and points["cpu"] == ([22.9], [0.247])
    assert points["chance (0.100)"][1] == [0.1, 0.1] and points["target (0.80)"][1] == [0.8, 0.8]
    plot_map_vs_minutes(runs, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(DahpError, match=r"runs\['cpu'\]: expected \(minutes, mAP\)"):
        plot_map_vs_minutes({"cpu": (22.9,)}, tmp_path / "bad.png")
    many = map_vs_minutes_figure({f"run {i}": (float(i), 0.5) for i in range(12)}).axes[0].get_lines()
    styles = {(line.get_color(), line.get_marker()) for line in many}
    assert len(styles) == 12  # past ten recipes the colours repeat, the markers tell them apart
