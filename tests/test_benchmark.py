"""``dahp benchmark``: the smoke budget end to end, resuming, and refusing bad or mixed setups."""

import json
from pathlib import Path

import numpy as np
import pytest

from dahp.benchmark import Budget, shows_paper_figures, table_iii, table_iv, tie_inflated, write_benchmark_report
from dahp.codes import pack_codes
from dahp.errors import DahpError
from dahp.methods import parse_methods
from dahp.metrics import evaluate
from dahp.models import ModelConfig
from dahp.training import TrainConfig

pytestmark = pytest.mark.slow


def _custom_budget(tmp_path, name="custom", **changes):
    data = {**Budget.load("smoke").to_dict(), "name": name, **changes}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_smoke_benchmark_writes_tables_runs_and_plots_then_resumes(cli, tmp_path, capsys):
    out = tmp_path / "bench"
    cli(["benchmark", "--budget", "smoke", "--methods", "dahp,dpsh,csq,itq", "--bits", "12,16", "--out", out,
         "--quiet"])
    printed = capsys.readouterr().out
    for title in ("| DAHP |", "| DPSH |", "| CSQ |", "| ITQ |"):
        assert title in printed
    # digits, not CIFAR-10: no paper figures, and the split's own chance level
    assert "paper figures are for CIFAR-10 and are not shown" in printed and "(0.8194)" not in printed
    assert "chance (random ranking) mAP: 0.10" in printed and "| × chance |" in printed
    assert "Table III layout" in printed and "paper × DPSH" not in printed
    runs = sorted(path.name for path in (out / "runs").iterdir())
    assert runs == sorted(f"{m}-{b}.json" for m in ("dahp", "dpsh", "csq", "itq") for b in (12, 16))
    record = json.loads((out / "runs" / "dpsh-16.json").read_text())
    assert record["model_config"]["backbone"] == "alexnet" and record["preprocess"]["image_size"] == 63
    assert record["train_config"]["method"] == "dpsh" and record["seed"] == 0
    assert 0 <= record["metrics"]["map"] <= 1 and record["train_images_per_s"] > 0
    itq = json.loads((out / "runs" / "itq-12.json").read_text())
    assert itq["metrics"]["map"] > 0.3  # ITQ on pixels of digits is far above chance (0.1)
    assert (out / "evaluation" / "pr_curves.png").stat().st_size > 0
    assert (out / "evaluation" / "precision_radius_vs_bits.png").is_file()

    # a run recorded before the chance level existed gets it from the split
    old = out / "runs" / "itq-16.json"
    old_record = json.loads(old.read_text())
    for key in ("chance_map", "chance_precision"):
        del old_record["metrics"][key]
    old.write_text(json.dumps(old_record))
    # an interrupted run: its result is lost but its finished checkpoint remains
    (out / "runs" / "dahp-12.json").unlink()
    before = (out / "runs" / "csq-12.json").stat().st_mtime_ns
    cli(["benchmark", "--budget", "smoke", "--methods", "dahp,dpsh,csq,itq", "--bits", "12,16", "--out", out,
         "--quiet"])
    printed = capsys.readouterr().out
    assert printed.count("done before") == 7
    itq_row = next(line for line in printed.splitlines() if line.startswith("| ITQ |"))
    assert "–" not in itq_row and itq_row.count(" | ") == 5  # 12 and 16 bits, each with its multiple of chance
    assert (out / "runs" / "csq-12.json").stat().st_mtime_ns == before
    redone = json.loads((out / "runs" / "dahp-12.json").read_text())
    assert len(redone["history"]) == 1  # restored from the checkpoint, not trained again


def test_a_folder_of_another_budget_is_refused(cli, tmp_path):
    out = tmp_path / "bench"
    cli(["benchmark", "--budget", "smoke", "--methods", "itq", "--out", out, "--quiet"])
    other = _custom_budget(tmp_path, train={**Budget.load("smoke").train, "lr": 0.01})
    with pytest.raises(DahpError, match="holds a benchmark with a different budget"):
        cli(["benchmark", "--budget", other, "--methods", "itq", "--out", out, "--quiet"])
    with pytest.raises(DahpError, match="different seed"):
        cli(["benchmark", "--budget", "smoke", "--methods", "itq", "--out", out, "--seed", 1, "--quiet"])
    # a folder claimed before a budget setting existed is still the same benchmark
    claimed = json.loads((out / "benchmark.json").read_text())
    del claimed["budget"]["top_k"]
    (out / "benchmark.json").write_text(json.dumps(claimed))
    cli(["benchmark", "--budget", "smoke", "--methods", "itq", "--out", out, "--quiet"])


def test_a_budget_with_top_k_reports_map_at_k_beside_its_chance_level(cli, tmp_path, capsys):
    budget = _custom_budget(tmp_path, top_k=20)
    cli(["benchmark", "--budget", budget, "--methods", "itq", "--bits", "16", "--out", tmp_path / "out", "--quiet"])
    record = json.loads((tmp_path / "out" / "runs" / "itq-16.json").read_text())
    at_k, at_all = record["metrics_at_k"], record["metrics"]
    assert at_k["top_k"] == 20 and at_all["top_k"] is None
    assert at_k["map"] != at_all["map"] and at_k["chance_map"] < at_k["map"] <= 1
    row = f"| itq-16 (K = 20) | {at_k['map']:.4f} | {at_k['chance_map']:.4f} | {at_k['map'] / at_k['chance_map']:.2f} |"
    assert "## mAP@K" in capsys.readouterr().out and row in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(DahpError, match="top_k must be a positive integer or null, got 0"):
        Budget.load(str(_custom_budget(tmp_path, "zero", top_k=0)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "dahp,nope"], r"unknown method 'nope'; valid methods: dahp, dahp-v1"),
        (["--budget", "tiny"], "--budget must be one of smoke, cpu, cpu-pretrained, cpu-transfer, paper or a JSON file"),
        (["--methods", "dpsh", "--bits", "12", "--budget", "{bad_lr}"], "--lr must be a positive number"),
        (["--budget", "{bad_key}"], "is not a valid budget"),
        (["--budget", "{bad_method}"], "unknown method 'dahq'"),
    ],
)
def test_bad_requests_fail_before_training(cli, tmp_path, argv, message):
    budgets = {
        "{bad_lr}": _custom_budget(tmp_path, "bad_lr", train={"epochs": 1, "lr": 0}),
        "{bad_key}": _custom_budget(tmp_path, "bad_key", colour="blue"),
        "{bad_method}": _custom_budget(tmp_path, "bad_method", method_train={"dahq": {"lr": 0.1}}),
    }
    argv = [budgets.get(arg, arg) for arg in argv]
    with pytest.raises(DahpError, match=message):
        cli(["benchmark", "--out", tmp_path / "out", *argv])
    assert not (tmp_path / "out" / "runs").exists()


def test_pretrained_budget_without_local_weights_fails_before_training(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    budget = _custom_budget(tmp_path, weights="pretrained")
    with pytest.raises(DahpError, match="needs pretrained .* weights and this machine has none"):
        cli(["benchmark", "--budget", budget, "--methods", "dahp", "--out", tmp_path / "out"])


def test_tables_put_paper_figures_beside_measured_ones():
    def record(method, bits, value):
        return {"method": method, "bits": bits, "wall_seconds": 60.0, "metrics": {"map": value, "map_expected": value}}

    records = {"dpsh-48": record("dpsh", 48, 0.40), "dahp-48": record("dahp", 48, 0.50),
               "dahp-12": record("dahp", 12, 0.30)}
    methods = parse_methods("dahp,dpsh")
    iv = table_iv(records, methods)
    assert "| DAHP | 0.3000 (0.8194) | 0.5000 (0.8477) | 2.0 min |" in iv
    assert "| DPSH | – (0.7292) | 0.4000 (0.7455) | 1.0 min |" in iv
    iii = table_iii(records, methods)
    assert "| DAHP | 0.5000 | 1.250 | 0.8477 | 1.137 |" in iii
    assert "‡" not in iv
    assert table_iii({"dahp-48": records["dahp-48"]}, methods) == ""  # one variant: no ablation to show


def test_paper_figures_only_for_cifar10_under_its_protocols():
    def record(source, protocol="cifar10"):
        return {"source": source, "protocol": {"name": protocol}}

    for source in ("cifar10", "../shared/datasets/cifar10-jpeg.tar.gz", "data/CIFAR-10-batches-py",
                   "/data/cifar_10/list.txt"):
        assert shows_paper_figures(record(source)) and shows_paper_figures(record(source, "cifar10-official"))
    assert not shows_paper_figures(record("cifar10", "per-class"))  # not the paper's split
    for source in ("digits", "my-photos/", "cifar100.tar.gz", "data/cifar-100-python", "photos.csv?label_column=x"):
        assert not shows_paper_figures(record(source))  # the cpu budget's protocol on other data


def _evaluated(method, bits, seed, wall=60.0):
    """A run record with real metrics of random codes on ten balanced classes (chance 0.1)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), 30)
    codes = pack_codes(rng.integers(0, 2, size=(300, bits)))
    metrics = evaluate(codes[::10], codes, labels[::10], labels, bits, n_values=[1, 10, 100])
    return {"method": method, "title": method.upper(), "bits": bits, "wall_seconds": wall, "train_seconds": 1.0,
            "encode_images_per_s": 100.0, "metrics": metrics}


def test_report_on_other_data_omits_the_paper_and_states_chance(tmp_path):
    records = {"dpsh-48": _evaluated("dpsh", 48, 0), "dahp-48": _evaluated("dahp", 48, 1)}
    dahp = records["dahp-48"]["metrics"]
    data = {"source": "photos/", "protocol": {"name": "cifar10", "seed": 0}, "sizes": {"query": 30}}
    text = write_benchmark_report(tmp_path, records, Budget.load("smoke"), data).read_text()
    assert "paper figures are for CIFAR-10 and are not shown" in text and "(paper in parentheses)" not in text
    assert f"chance (random ranking) mAP: {dahp['chance_map']:.4f}" in text
    assert "| method | 48 bits | × chance | wall time |" in text
    assert f"| DAHP | {dahp['map']:.4f} | {dahp['map'] / dahp['chance_map']:.2f} | 1.0 min |" in text
    assert "| variant (48 bits) | mAP@ALL | × DPSH |\n" in text and "0.8477" not in text and "paper ×" not in text
    cifar = write_benchmark_report(tmp_path, records, Budget.load("smoke"), {**data, "source": "cifar10"}).read_text()
    assert "paper figures are the DAHP paper's CIFAR-10 results" in cifar
    assert "| method | 48 bits (paper) | × chance | wall time |" in cifar and f"{dahp['map']:.4f} (0.8477)" in cifar
    assert "| paper | paper × DPSH |" in cifar


def test_table_iv_flags_runs_that_the_database_order_ranks():
    # One code for every image: every database image ties, so the database order ranks them.
    labels = np.repeat(np.arange(10), 50)
    database = np.zeros((500, 2), dtype=np.uint8)  # packed 12-bit codes
    query = np.zeros((20, 2), dtype=np.uint8)
    collapsed = evaluate(query, database, labels[::25], labels, 12)
    assert collapsed["map_expected"] < 0.12 < 0.2 < collapsed["map"]  # a tenth of the database is relevant
    assert tie_inflated(collapsed)
    records = {"dbdh-12": {"method": "dbdh", "bits": 12, "wall_seconds": 6.0, "metrics": collapsed},
               "dhn-12": {"method": "dhn", "bits": 12, "wall_seconds": 6.0,
                          "metrics": {"map": 0.30, "map_expected": 0.29}}}
    iv = table_iv(records, parse_methods("dbdh,dhn"))
    ratio = collapsed["map"] / collapsed["chance_map"]  # the database order's gain over chance, not the codes'
    assert f"| DBDH | {collapsed['map']:.4f}‡ (0.7266) | {ratio:.2f} | 0.1 min |" in iv
    assert "| DHN | 0.3000 (0.5550) | – | 0.1 min |" in iv  # a record from before the chance level
    assert f"Tie-aware mAP: dbdh-12 {collapsed['map_expected']:.4f}." in iv


def test_smoke_benchmark_of_all_methods_gives_the_whole_table_iv(cli, tmp_path, capsys):
    out = tmp_path / "all"
    cli(["benchmark", "--budget", "smoke", "--methods", "all", "--bits", "12,24,32,48", "--out", out, "--quiet"])
    printed = capsys.readouterr().out
    table = printed.split("Table IV layout")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method |")]
    titles = [row.split(" | ")[0][2:] for row in rows]
    paper_rows = ["DAHP", "DBDH", "DAgH", "DPSH", "HashNet", "DSH", "DLBHC (FastH)", "DHN", "SDH", "ITQ"]
    assert titles[:10] == paper_rows  # the paper's ten in its order, then the extra rows
    assert set(titles[10:]) == {"DAHP-v1 (ResNet-18 + DPSH loss)", "DAHP-v2 (v1 + dual attention)", "CSQ", "LSH"}
    assert "| SDH | " in table and "(0." not in table  # digits: no paper figures
    chance = float(printed.split("chance (random ranking) mAP: ")[1].split()[0])
    assert chance == pytest.approx(0.1, abs=0.01)
    for row in rows:  # a measured figure, its multiple of chance and the wall time in every row at every length
        cells = row.split(" | ")
        assert len(cells) == 10 and cells[-1].endswith("min |")
        assert all(0 < float(cell.rstrip("‡")) <= 1 for cell in cells[1:9:2]), row
        assert all(float(ratio) == pytest.approx(float(cell.rstrip("‡")) / chance, rel=0.01)
                   for cell, ratio in zip(cells[1:9:2], cells[2:9:2])), row
    sdh = json.loads((out / "runs" / "sdh-48.json").read_text())
    assert sdh["metrics"]["map"] > 0.4  # supervised on the digits' pixels: far above chance (0.1)


def test_untrained_control_budget_is_the_cpu_budget_left_untrained():
    control = Budget.load(str(Path(__file__).parents[1] / "benchmarks" / "untrained-cpu.json"))
    cpu = Budget.load("cpu")
    assert (control.dataset, control.protocol, control.image_size, control.model, control.weights) == (
        cpu.dataset, cpu.protocol, cpu.image_size, cpu.model, cpu.weights)
    assert control.train == {**cpu.train, "epochs": 1, "lr": 1e-9}  # the networks stay at their random init
    assert control.method_train == {}  # DPSH's lr override would train its AlexNet


BUDGETS = Path(__file__).parents[1] / "benchmarks" / "budgets"
RECORDS = Path(__file__).parents[1] / "benchmarks" / "records"


@pytest.mark.parametrize("path", sorted(BUDGETS.glob("*.json")), ids=lambda path: path.stem)
def test_committed_budgets_load(path):
    assert Budget.load(str(path)).name == path.stem


def test_the_cpu_transfer_records_ran_the_shipped_recipe_and_the_variants_it_was_chosen_over():
    """Each record differs from the shipped recipe, or from the recipe it replaced, in the
    settings its name says, and nothing else."""

    def settings(budget: dict) -> dict:  # a setting a record predates has its default
        kept = {key: value for key, value in Budget(**budget).to_dict().items() if key not in ("name", "description")}
        return {**kept, "train": TrainConfig(**kept["train"]).to_dict(), "model": ModelConfig(**kept["model"]).to_dict()}

    def recorded(name: str) -> dict:
        return settings(json.loads((RECORDS / name / "benchmark.json").read_text())["budget"])

    def budgeted(name: str) -> dict:
        return settings(Budget.load(str(BUDGETS / f"{name}.json")).to_dict())

    def same_recipe(name: str, recipe: dict) -> bool:  # on other data: the same network, training and size
        others = [budgeted(name), recorded(name)]
        return all((other["model"], other["train"], other["image_size"]) == (recipe["model"], recipe["train"], 160)
                   for other in others)

    def with_train(recipe: dict, **train: object) -> dict:
        return {**recipe, "train": {**recipe["train"], **train}}

    def with_model(recipe: dict, **model: object) -> dict:
        return {**recipe, "model": {**recipe["model"], **model}}

    shipped = json.loads(json.dumps(settings(Budget.load("cpu-transfer").to_dict())))
    assert shipped["model"]["demote_uncertain"] == 0.6
    assert shipped["train"]["frozen_stages"] == 4 and shipped["train"]["backbone_lr_scale"] == 0.06
    assert recorded("cpu-transfer-demote-uncertain") == shipped
    assert budgeted("cpu-transfer-demote-uncertain") == shipped
    assert recorded("cpu-transfer-demote-uncertain-table-iii") == shipped  # the ablation at the shipped recipe
    assert recorded("cpu-transfer-table-iv") == shipped  # the README's command from a clean clone, then Table IV
    for held_out in ("cpu-transfer-digits-20-per-class", "cpu-transfer-digits-100-per-class"):
        assert same_recipe(held_out, shipped)  # data no setting was chosen on

    # the recipe shipped until the demotion: the same training, sign codes
    shipped = with_model(shipped, demote_uncertain=0.0)
    assert recorded("cpu-transfer-frozen-stages-4") == shipped
    assert budgeted("cpu-transfer-frozen-stages-4") == shipped
    small = {**shipped, "protocol": "per-class", "protocol_parameters": {"query_per_class": 100, "train_per_class": 20}}
    assert recorded("cpu-transfer-frozen-stages-4-20-per-class") == small
    assert same_recipe("cpu-transfer-frozen-stages-4-pairs", shipped)

    # the recipe shipped until 2026-12-07: every backbone stage fine-tuned
    shipped, small = (with_train(recipe, frozen_stages=0) for recipe in (shipped, small))
    assert shipped["train"]["frozen_batch_norm"]
    assert recorded("cpu-transfer-14-epochs-backbone-0.06") == shipped
    assert budgeted("cpu-transfer-14-epochs-backbone-0.06") == shipped
    assert recorded("cpu-transfer-14-epochs-resized-crop") == with_train(shipped, augment="resized-crop")
    assert recorded("cpu-transfer-0.06-table-iii") == shipped  # the ablation at the shipped recipe
    assert recorded("cpu-transfer-table-iv-shallow") == shipped  # LSH, ITQ, SDH at 12-48 bits on its features
    assert recorded("cpu-transfer-14-epochs-backbone-0.06-20-per-class") == small
    assert same_recipe("cpu-transfer-14-epochs-backbone-0.06-pairs", shipped)
    assert same_recipe("cpu-transfer-14-epochs-backbone-0.06-mosaics", shipped)
    residual = with_model(shipped, residual_fusion=True)
    assert recorded("cpu-transfer-residual-fusion") == residual
    assert budgeted("cpu-transfer-residual-fusion") == residual
    assert recorded("cpu-transfer-residual-fusion-20-per-class") == {**small, "model": residual["model"]}
    assert same_recipe("cpu-transfer-residual-fusion-pairs", residual)
    lite1 = with_model(residual, backbone="efficientnet_lite1", mirror_average=True)
    assert recorded("cpu-transfer-lite1-residual-fusion-mirror") == lite1
    assert budgeted("cpu-transfer-lite1-residual-fusion-mirror") == lite1
    assert same_recipe("cpu-transfer-lite1-residual-fusion-mirror-pairs", lite1)
    assert recorded("cpu-transfer-lite1-residual-fusion-mirror-pairs-shallow") == \
        recorded("cpu-transfer-lite1-residual-fusion-mirror-pairs")  # SDH and ITQ on Lite1's frozen features
    assert recorded("cpu-transfer-lite1-residual-fusion-mirror-20-per-class") == {**small, "model": lite1["model"]}

    # the recipe shipped until 2026-12-06's seventh session: 10 epochs, whole batches, backbone at 0.02x
    previous = with_train(shipped, epochs=10, micro_batch_size=None, backbone_lr_scale=0.02)
    assert recorded("cpu-transfer-fbn-slow-backbone") == previous
    assert recorded("cpu-transfer-table-iii") == previous  # the ablation, beside that headline run
    assert budgeted("cpu-transfer-fbn-slow-backbone") == previous
    assert recorded("cpu-transfer-fbn-slow-backbone-20-per-class") == {**small, "train": previous["train"]}
    assert recorded("cpu-transfer-fbn") == with_train(previous, backbone_lr_scale=0.2)
    assert recorded("cpu-transfer-14-epochs-micro-32") == with_train(previous, epochs=14, micro_batch_size=32)
    assert recorded("cpu-transfer-128px-18-epochs-micro-32") == \
        {**with_train(previous, epochs=18, micro_batch_size=32), "image_size": 128}
    assert recorded("cpu-transfer-192px-14-epochs") == \
        {**with_train(previous, epochs=14, micro_batch_size=32), "image_size": 192}
    assert recorded("cpu-transfer-fbn-20-per-class") == {**small, "train": recorded("cpu-transfer-fbn")["train"]}
    for name in ("cpu-transfer-mosaics", "cpu-transfer-fbn-slow-backbone-pairs"):  # other data, that recipe
        assert same_recipe(name, previous)
    before = with_train(previous, backbone_lr_scale=0.2, frozen_batch_norm=False)  # the recipe before that
    assert recorded("cpu-transfer") == before
    assert recorded("cpu-transfer-20-per-class") == {**small, "train": before["train"]}
