"""``dahp benchmark``: every method on the same split, backbone and budget, in one resumable run.

A *budget* is a named recipe (``dahp/budgets/<name>.json``, or any JSON file of the same
shape): data protocol, input size, backbone and weights, optimiser settings shared by
every deep method, and per-method exceptions. The library code here knows no particular
experiment; the recipes live in those files.

Each (method, bits) run writes ``runs/<method>-<bits>.json`` atomically when it is done
(configuration, seed, wall times, images/s and all metrics); deep runs also keep their
model and per-epoch checkpoint under ``models/<method>-<bits>/``. Rerunning the same
command skips finished runs and resumes an interrupted training from its checkpoint;
a folder holding runs of another budget, split or seed is refused, never mixed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .anchors import generate_anchors
from .data import ImageCollection, Preprocess, get_protocol, iterate_batches, resolve_source, split_digest
from .errors import DahpError
from .hasher import CHECKPOINT_FILE, DeepHasher
from .methods import Method, parse_methods
from .methods.registry import TABLE_IV
from .metrics import chance_levels, evaluate
from .models import ModelConfig, create_backbone, init_backbone
from .models.inference import inference_copy
from .models.weights import weights_spec
from .reports import write_json, write_report
from .serialization import atomic_write_bytes
from .training import TrainConfig

BUDGET_NAMES = ("smoke", "cpu", "cpu-pretrained", "cpu-transfer", "paper")
SHALLOW_FEATURES = ("pixels", "backbone")
TABLE_III = ("dpsh", "dahp-v1", "dahp-v2", "dahp")
# Database-order mAP above this multiple of its tie-aware value: the ties, not the codes, rank.
TIE_INFLATION = 1.10
# CIFAR-10 by name: cifar10, cifar-10, cifar_10 (any case), but not cifar100.
CIFAR10_NAME = re.compile(r"cifar[-_]?10(?!\d)", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """One benchmark recipe; see ``dahp/budgets/*.json`` for the shipped ones."""

    name: str
    description: str
    dataset: str
    protocol: str
    image_size: int
    model: dict[str, Any]
    train: dict[str, Any]
    protocol_parameters: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] | None = None  # None: the backbone weights' own normalisation
    std: tuple[float, float, float] | None = None
    weights: str = "none"
    shared_backbone: bool = False
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    shallow_features: str = "pixels"
    top_k: int | None = None
    """Also report mAP@K (the paper's mAP@1000 on multi-label data); None: mAP@ALL only."""

    def __post_init__(self) -> None:
        if self.top_k is not None and (type(self.top_k) is not int or self.top_k < 1):
            raise DahpError(f"budget {self.name}: top_k must be a positive integer or null, got {self.top_k!r}")
        if self.shallow_features not in SHALLOW_FEATURES:
            raise DahpError(f"budget {self.name}: shallow_features must be one of {SHALLOW_FEATURES}, "
                            f"got {self.shallow_features!r}")
        if (self.mean is None) != (self.std is None):
            raise DahpError(f"budget {self.name}: give both mean and std, or neither (the weights' own)")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(self.mean))
            object.__setattr__(self, "std", tuple(self.std))
        self.network()  # validates the shared network settings up front
        TrainConfig(**self.train)
        for method, overrides in self.method_train.items():
            TrainConfig(**{**self.train, **overrides})
            parse_methods(method)

    @classmethod
    def load(cls, name_or_path: str) -> Budget:
        """A shipped budget by name, or a JSON file; unknown keys are errors naming the file."""
        if name_or_path in BUDGET_NAMES:
            text = resources.files("dahp").joinpath("budgets", f"{name_or_path}.json").read_text()
            where = f"budget {name_or_path}"
        else:
            path = Path(name_or_path)
            if not path.is_file():
                raise DahpError(f"--budget must be one of {', '.join(BUDGET_NAMES)} or a JSON file; "
                                f"{name_or_path!r} is neither")
            text, where = path.read_text(), str(path)
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DahpError(f"{where} is not a valid budget ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_options(self, method: str) -> dict[str, Any]:
        """The training settings of ``method``'s runs: the shared ones with its exceptions."""
        return {**self.train, **self.method_train.get(method, {})}

    def network(self, bits: int = 48) -> ModelConfig:
        return ModelConfig(bits=bits, **self.model)

    def preprocess(self, image_size: int) -> Preprocess:
        """At ``image_size``, normalised as the budget says or as its backbone's weights expect."""
        if self.mean is not None:
            return Preprocess(image_size, self.mean, self.std)
        model = self.network()
        backbone = create_backbone(model.backbone, output_stride=model.output_stride, small_stem=model.small_stem)
        return weights_spec(backbone).preprocess(image_size)


@dataclass
class RunPlan:
    """What one (method, bits) run trains and how, fixed before anything trains."""

    method: Method
    bits: int
    model: ModelConfig | None
    train: TrainConfig | None
    preprocess: Preprocess
    weights: str

    @property
    def name(self) -> str:
        return f"{self.method.name}-{self.bits}"


def _deep_plan(method: Method, bits: int, budget: Budget, num_classes: int, seed: int) -> RunPlan:
    base = budget.network(bits)
    model = method.model_config(base, shared_backbone=budget.shared_backbone)
    train = TrainConfig(**budget.train_options(method.name), method=method.name, seed=seed)
    method.loss(train.loss_settings(bits, num_classes, model))  # rejects options the method does not have
    backbone = create_backbone(model.backbone, output_stride=model.output_stride, small_stem=model.small_stem)
    smallest = getattr(backbone, "min_image_size", 1)
    return RunPlan(method, bits, model, train, budget.preprocess(max(budget.image_size, smallest)),
                   weights_for(budget, backbone))


def weights_for(budget: Budget, backbone: torch.nn.Module) -> str:
    """``none``, a file, or ``pretrained``: the backbone's local pretrained copy, which must exist."""
    if budget.weights != "pretrained":
        return budget.weights
    local = weights_spec(backbone).locate()
    if local is None:
        raise DahpError(f"budget {budget.name} needs pretrained {type(backbone).__name__} weights and this machine "
                        f"has none: {weights_spec(backbone).how_to_get}")
    return str(local)


def plan_runs(methods: list[Method], bits: list[int], budget: Budget, num_classes: int, seed: int) -> list[RunPlan]:
    """Every run's configuration, validated before the first one trains (bits against the
    anchors, method options, backbones, weights), so a bad request fails in seconds."""
    for length in bits:
        generate_anchors(length, num_classes, seed=seed)
    plans = []
    for length in bits:
        for method in methods:
            if method.deep:
                plans.append(_deep_plan(method, length, budget, num_classes, seed))
            else:
                plans.append(RunPlan(method, length, None, None, budget.preprocess(budget.image_size), budget.weights))
    return plans


# --- running -----------------------------------------------------------------------


@dataclass
class BenchmarkData:
    """The split the whole benchmark shares, and what identifies it in the results."""

    query: ImageCollection
    train: ImageCollection
    database: ImageCollection
    record: dict[str, Any]  # source, protocol, sizes, split digest


def split_data(data: ImageCollection, source: str, budget: Budget, seed: int) -> BenchmarkData:
    protocol = get_protocol(budget.protocol, seed=seed, **budget.protocol_parameters)
    split = protocol.split(data)
    if len(split.query) == 0 or len(split.train) == 0:
        raise DahpError(f"protocol {protocol.name} draws {len(split.query)} queries and {len(split.train)} training "
                        f"images from {source}: the benchmark needs both")
    record = {"source": source, "protocol": protocol.to_dict(), "sizes": split.sizes(),
              "split_sha256": split_digest(split)}
    resolved = resolve_source(source)
    if resolved is not None:  # lets `dahp evaluate` find the data of a run's model from another folder
        record["source_resolved"] = resolved
    return BenchmarkData(data.subset(split.query), data.subset(split.train), data.subset(split.database), record)


def _identity(budget: Budget, data: BenchmarkData, seed: int) -> dict[str, Any]:
    return {"budget": budget.to_dict(), "split_sha256": data.record["split_sha256"], "seed": seed}


def _claim_folder(out: Path, identity: dict[str, Any]) -> None:
    """Write ``benchmark.json`` on first use; afterwards refuse a different budget, split or seed."""
    path = out / "benchmark.json"
    identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
    if path.is_file():
        saved = json.loads(path.read_text())
        try:  # settings added to budgets since the folder was claimed read back as their defaults
            saved["budget"] = json.loads(json.dumps(Budget(**saved["budget"]).to_dict()))
        except (TypeError, KeyError, DahpError):
            pass
        if saved != identity:
            differing = sorted(key for key in identity if saved.get(key) != identity[key])
            raise DahpError(f"{out} holds a benchmark with a different {', '.join(differing)}; "
                            "use a new --out folder (runs of different setups are never mixed)")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, identity)


def _mean_rate(history: list[dict[str, float]]) -> float:
    return float(np.mean([epoch["images_per_s"] for epoch in history]))


def _run_deep(plan: RunPlan, data: BenchmarkData, out: Path, device: str, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    assert plan.model is not None and plan.train is not None
    run_dir = out / "models" / plan.name
    hasher = DeepHasher(plan.model, plan.train, plan.preprocess, weights=plan.weights, device=device,
                        progress=progress)
    hasher.fit(data.train, out_dir=run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file(), data_spec=data.record)
    started = time.perf_counter()
    codes = [hasher.encode(part, batch_size=256, progress=progress, role=role)
             for part, role in ((data.query, "query"), (data.database, "database"))]
    encode_seconds = time.perf_counter() - started
    info = {
        "model_config": plan.model.to_dict(), "train_config": plan.train.to_dict(),
        "preprocess": plan.preprocess.to_dict(), "weights": hasher.weights_note_,
        "train_seconds": sum(epoch["seconds"] for epoch in hasher.history_),
        "train_images_per_s": _mean_rate(hasher.history_),
        "encode_seconds": encode_seconds,
        "encode_images_per_s": (len(data.query) + len(data.database)) / encode_seconds,
        "history": hasher.history_, "model_file": str(run_dir / "model.dahp"),
    }
    return codes[0], codes[1], info


@torch.inference_mode()
def extract_features(collection: ImageCollection, preprocess: Preprocess, backbone: torch.nn.Module | None,
                     progress: bool = False) -> np.ndarray:
    """Fixed feature rows for the shallow methods: the normalised pixels, or a frozen
    backbone's globally pooled feature map."""
    rows = []
    order = np.arange(len(collection))
    with tqdm(total=len(collection), desc="features", unit="img", disable=not progress) as bar:
        for images, indices in iterate_batches(collection, order, 256, preprocess):
            if backbone is None:
                rows.append(images.flatten(1).numpy())
            else:
                rows.append(backbone(images).mean(dim=(2, 3)).numpy())
            bar.update(len(indices))
    return np.concatenate(rows).astype(np.float32)


class _FeatureCache:
    """Features are computed once per benchmark and shared by every shallow run."""

    def __init__(self, budget: Budget, data: BenchmarkData, progress: bool) -> None:
        self.budget, self.data, self.progress = budget, data, progress
        self.features: dict[str, np.ndarray] | None = None
        self.description = ""

    def get(self, preprocess: Preprocess) -> dict[str, np.ndarray]:
        if self.features is None:
            backbone = None
            self.description = f"pixels at {preprocess.image_size} px"
            if self.budget.shallow_features == "backbone":
                model = self.budget.network()
                backbone = create_backbone(model.backbone, output_stride=model.output_stride,
                                           small_stem=model.small_stem).eval()
                note = init_backbone(backbone, weights_for(self.budget, backbone))
                backbone = inference_copy(backbone)  # the same features, about 2x faster
                self.description = f"pooled {model.backbone} features ({note})"
            self.features = {part: extract_features(getattr(self.data, part), preprocess, backbone, self.progress)
                             for part in ("train", "query", "database")}
        return self.features


def _run_shallow(plan: RunPlan, cache: _FeatureCache) -> tuple[np.ndarray, np.ndarray, dict]:
    started = time.perf_counter()
    features = cache.get(plan.preprocess)
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    encoder = plan.method.shallow(plan.bits, seed=0).fit(features["train"], cache.data.train.labels)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    query, database = encoder.encode(features["query"]), encoder.encode(features["database"])
    encode_seconds = time.perf_counter() - started
    info = {"features": cache.description, "feature_seconds": feature_seconds, "train_seconds": train_seconds,
            "encode_seconds": encode_seconds,
            "encode_images_per_s": (len(query) + len(database)) / max(encode_seconds, 1e-9)}
    return query, database, info


def run_benchmark(
    data: BenchmarkData,
    plans: list[RunPlan],
    budget: Budget,
    out: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every planned run; returns run name -> its JSON record, and writes the report."""
    out = Path(out)
    _claim_folder(out, _identity(budget, data, seed))
    cache = _FeatureCache(budget, data, progress)
    records: dict[str, dict[str, Any]] = {}
    chance: dict[str, float] | None = None
    for number, plan in enumerate(plans, 1):
        path = out / "runs" / f"{plan.name}.json"
        if path.is_file():
            records[plan.name] = json.loads(path.read_text())
            if "chance_map" not in records[plan.name]["metrics"]:  # a run recorded before the chance level
                chance = chance or chance_levels(data.query.labels, data.database.labels)
                records[plan.name]["metrics"].update(chance)
            echo(f"[{number}/{len(plans)}] {plan.name}: done before, mAP {records[plan.name]['metrics']['map']:.4f}")
            continue
        echo(f"[{number}/{len(plans)}] {plan.name}: {plan.method.title}, {plan.bits} bits ...")
        started = time.perf_counter()
        if plan.method.deep:
            query, database, info = _run_deep(plan, data, out, device, progress)
        else:
            query, database, info = _run_shallow(plan, cache)
        metrics = evaluate(query, database, data.query.labels, data.database.labels, plan.bits)
        record = {"method": plan.method.name, "title": plan.method.title, "bits": plan.bits, "seed": seed,
                  "budget": budget.name, "dahp_version": __version__, "torch_version": torch.__version__,
                  "wall_seconds": time.perf_counter() - started, **info, "metrics": metrics}
        if budget.top_k is not None:
            record["metrics_at_k"] = evaluate(query, database, data.query.labels, data.database.labels, plan.bits,
                                              top_k=budget.top_k)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
        records[plan.name] = record
        echo(f"[{number}/{len(plans)}] {plan.name}: mAP@ALL {metrics['map']:.4f} "
             f"({record['wall_seconds']:.0f} s)")
        if tie_inflated(metrics):
            echo(f"[{number}/{len(plans)}] {plan.name}: warning: its codes have (nearly) collapsed; the database "
                 f"order decides the ranking (tie-aware mAP {metrics['map_expected']:.4f})")
    write_benchmark_report(out, records, budget, data.record)
    return records


# --- the report -------------------------------------------------------------------------


def tie_inflated(metrics: dict[str, Any]) -> bool:
    """Whether the database order, not the codes, decides a run's mAP.

    (Nearly) collapsed codes put most of the database into a few tie groups; on a
    database stored class by class (image folders, CIFAR-10) the database order then
    lists some queries' classes first, and the database-order mAP rises well above
    chance (0.19 for one shared code on CIFAR-10) while the tie-aware mAP stays near it.
    """
    return metrics["map"] > TIE_INFLATION * metrics["map_expected"]


def shows_paper_figures(data_record: dict[str, Any]) -> bool:
    """Whether the DAHP paper's CIFAR-10 figures belong beside this benchmark's.

    The rule: the source names CIFAR-10 (the built-in ``cifar10``, or a path with a component
    like ``cifar10-jpeg.tar.gz`` or ``cifar-10-batches-py``; not ``cifar100``) *and* the
    split is one of the ``cifar10`` protocols. Neither alone will do: the shipped budgets'
    ``cifar10`` protocol splits any collection with 600 images per class (``--data
    my-photos/``), and a per-class draw of other sizes is not the paper's setup.
    """
    source = str(data_record.get("source", "")).partition("?")[0]
    protocol = str(data_record.get("protocol", {}).get("name", ""))
    return protocol.startswith("cifar10") and any(CIFAR10_NAME.search(part) for part in PurePath(source).parts)


def chance_level(records: dict[str, dict[str, Any]]) -> float | None:
    """The random-ranking mAP@ALL of the benchmark's split (every run shares it); None for old records."""
    levels = [record["metrics"]["chance_map"] for record in records.values() if "chance_map" in record["metrics"]]
    return levels[0] if levels else None


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _map_cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return _cell(None)
    return _cell(run["metrics"]["map"]) + ("‡" if tie_inflated(run["metrics"]) else "")


def _times_chance(run: dict[str, Any] | None) -> str:
    """A run's mAP as a multiple of its split's random-ranking mAP."""
    if run is None or not run["metrics"].get("chance_map"):
        return "–"
    return f"{run['metrics']['map'] / run['metrics']['chance_map']:.2f}"


def table_iv(records: dict[str, dict[str, Any]], methods: list[Method], paper: bool = True) -> str:
    """Methods x code lengths, measured mAP@ALL (with the paper's CIFAR-10 figure beside it when
    ``paper``, see :func:`shows_paper_figures`) and, when the records carry the chance level, its
    multiple of chance; the paper's rows first in its order, then the methods it does not list."""
    bits = sorted({record["bits"] for record in records.values()})
    ratios = chance_level(records) is not None
    columns = [f"{b} bits (paper)" if paper else f"{b} bits" for b in bits]
    if ratios:
        columns = [column for pair in zip(columns, ["× chance"] * len(bits)) for column in pair]
    lines = ["| method | " + " | ".join(columns) + " | wall time |", "|---" * (len(columns) + 2) + "|"]
    inflated = [name for name, record in sorted(records.items()) if tie_inflated(record["metrics"])]
    rank = {name: position for position, name in enumerate(TABLE_IV)}
    for method in sorted(methods, key=lambda m: rank.get(m.name, len(rank))):
        runs = {b: records.get(f"{method.name}-{b}") for b in bits}
        if not any(runs.values()):
            continue
        cells = []
        for b, run in runs.items():
            cells.append(f"{_map_cell(run)} ({_cell(method.paper_cifar10.get(b))})" if paper else _map_cell(run))
            if ratios:
                cells.append(_times_chance(run))
        seconds = sum(run["wall_seconds"] for run in runs.values() if run)
        lines.append(f"| {method.title} | " + " | ".join(cells) + f" | {seconds / 60:.1f} min |")
    if inflated:
        lines.append("\n‡ Codes (nearly) collapsed: the database order, not the codes, decides the ranking. "
                     "Tie-aware mAP: " + ", ".join(
                         f"{name} {records[name]['metrics']['map_expected']:.4f}" for name in inflated) + ".")
    return "\n".join(lines) + "\n"


def table_at_k(records: dict[str, dict[str, Any]]) -> str:
    """mAP@K beside the split's random-ranking mAP@K, for runs whose budget asked for it."""
    rows = [(name, record) for name, record in sorted(records.items()) if "metrics_at_k" in record]
    if not rows:
        return ""
    lines = ["| run | mAP@K | chance mAP@K | × chance |", "|---|---|---|---|"]
    for name, record in rows:
        at_k = record["metrics_at_k"]
        lines.append(f"| {name} (K = {at_k['top_k']}) | {at_k['map']:.4f} | {at_k['chance_map']:.4f} | "
                     f"{at_k['map'] / at_k['chance_map']:.2f} |")
    return "\n".join(lines) + "\n"


def table_iii(records: dict[str, dict[str, Any]], methods: list[Method], bits: int = 48, paper: bool = True) -> str:
    """The ablation at one code length: each variant's mAP and its ratio to DPSH, measured and
    (when ``paper``) the paper's; empty with fewer than two variants run (one row compares nothing)."""
    rows = [m for name in TABLE_III for m in methods if m.name == name and f"{name}-{bits}" in records]
    if len(rows) < 2:
        return ""
    dpsh = records.get(f"dpsh-{bits}")
    paper_dpsh = next((m.paper_cifar10.get(bits) for m in methods if m.name == "dpsh"), None)
    header = f"| variant ({bits} bits) | mAP@ALL | × DPSH |" + (" paper | paper × DPSH |" if paper else "")
    lines = [header, "|---" * (5 if paper else 3) + "|"]
    for method in rows:
        measured = records[f"{method.name}-{bits}"]["metrics"]["map"]
        ratio = f"{measured / dpsh['metrics']['map']:.3f}" if dpsh else "–"
        line = f"| {method.title} | {measured:.4f} | {ratio} |"
        if paper:
            published = method.paper_cifar10.get(bits)
            paper_ratio = f"{published / paper_dpsh:.3f}" if published and paper_dpsh else "–"
            line += f" {_cell(published)} | {paper_ratio} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def speed_table(records: dict[str, dict[str, Any]]) -> str:
    lines = ["| run | train s | train img/s | encode img/s | wall s |", "|---|---|---|---|---|"]
    for name, record in records.items():
        train_rate = record.get("train_images_per_s")
        lines.append(f"| {name} | {record['train_seconds']:.1f} | {f'{train_rate:.1f}' if train_rate else '–'} | "
                     f"{record['encode_images_per_s']:.0f} | {record['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_benchmark_report(out: Path, records: dict[str, dict[str, Any]], budget: Budget,
                           data_record: dict[str, Any]) -> Path:
    """``results.md`` (Tables III and IV, speeds) and the full evaluation report with plots.

    The paper's figures appear only for CIFAR-10 (:func:`shows_paper_figures`); the
    random-ranking mAP of the split is stated so every figure can be read against it.
    """
    methods = parse_methods(",".join(dict.fromkeys(record["method"] for record in records.values())))
    largest = max(record["bits"] for record in records.values())
    sizes = data_record["sizes"]
    paper = shows_paper_figures(data_record)
    chance = chance_level(records)
    about_paper = ("paper figures are the DAHP paper's CIFAR-10 results (224 px, ImageNet-pretrained ResNet-18, GPU)"
                   if paper else "paper figures are for CIFAR-10 and are not shown")
    parts = [
        f"# dahp benchmark — budget `{budget.name}`\n",
        f"{budget.description}\n",
        f"Data: {data_record['source']}, protocol {data_record['protocol']['name']} "
        f"(seed {data_record['protocol']['seed']}): {sizes}. mAP@ALL with database-order ties; {about_paper}.\n",
    ]
    if chance is not None:
        parts.append(f"chance (random ranking) mAP: {chance:.4f}\n")
    parts += [f"## Table IV layout: mAP@ALL by code length{' (paper in parentheses)' if paper else ''}\n",
              table_iv(records, methods, paper)]
    at_k = table_at_k(records)
    if at_k:
        parts += ["## mAP@K (database-order ties)\n", at_k]
    ablation = table_iii(records, methods, 48 if any(r["bits"] == 48 for r in records.values()) else largest, paper)
    if ablation:
        parts += ["## Table III layout: the ablation\n", ablation]
    parts += ["## Speed\n", speed_table(records),
              "Full metrics (tie-aware mAP, P@H≤2, P@N, PR curves) and plots: `evaluation/`.\n"]
    path = out / "results.md"
    atomic_write_bytes(path, "\n".join(parts).encode())
    write_report(out / "evaluation", {name: r["metrics"] for name, r in records.items()},
                 {name: r["title"] for name, r in records.items()}, {"budget": budget.to_dict(), **data_record})
    return path
