"""The ``dahp`` command line: demo, anchors, data, train, encode, evaluate, export, index, search, serve.

User errors (bad options, bad files, impossible requests) print one ``dahp: error:``
line and exit with status 2 (argparse's usage errors) or 1 (everything else); only
bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .codes import MAX_BITS, MIN_BITS, check_bits
from .errors import DahpError
from .export import add_export_command
from .index.commands import add_index_commands
from .options import (
    DefaultsHelpFormatter,
    add_runtime_options,
    add_source_options,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from .web import settings as serving


def _bits(text: str) -> int:
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer between {MIN_BITS} and {MAX_BITS}, got {text!r}") from None
    except DahpError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--bits ")) from None


# --- commands -------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    started = time.perf_counter()
    run_demo(epochs=args.epochs, bits=args.bits, seed=args.seed, progress=not args.quiet)
    print(f"\nwall time {time.perf_counter() - started:.1f} s")


def cmd_anchors(args: argparse.Namespace) -> None:
    from .anchors import generate_anchors, require_min_distance

    anchors = generate_anchors(args.bits, args.classes, seed=args.seed, method=args.method)
    if args.min_distance is not None:
        require_min_distance(anchors, args.min_distance)
    if args.json:
        print(json.dumps(anchors.to_dict(), indent=2))
        return
    extra = f", {anchors.candidates} candidate codes" if anchors.candidates is not None else ""
    print(f"{anchors.classes} anchors of {anchors.bits} bits (method {anchors.method}{extra}, seed {anchors.seed})")
    print(f"minimum Hamming distance {anchors.min_distance}, mean {anchors.mean_distance:.2f}, "
          f"Plotkin bound {anchors.plotkin_bound:.2f}")
    for index, code in enumerate(anchors.to_dict()["codes"]):
        print(f"{index:>5} {code}")


def _collection(args: argparse.Namespace, spec: str):
    """Load ``spec`` with the shared data options; report skipped unreadable images."""
    from .data import load_source

    data = load_source(spec, image_root=args.image_root, cache_dir=args.cache_dir, skip_bad=args.skip_bad)
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable images (--skip-bad), e.g. {data.skipped[0][0]}: "
              f"{data.skipped[0][1]}", file=sys.stderr)
    return data


# The sizing flags of _add_protocol_options and the protocol parameter each sets. Without
# --protocol they select the first of _SIZED_PROTOCOLS that takes all the flags given.
_PROTOCOL_FLAGS = {"--query-per-class": "query_per_class", "--train-per-class": "train_per_class",
                   "--query-size": "query", "--train-size": "train"}
_SIZED_PROTOCOLS = ("per-class", "random")


def _flags_of(name: str) -> list[str]:
    """The sizing flags protocol ``name`` takes (those whose parameter it has)."""
    from .data import PROTOCOLS

    return [flag for flag, parameter in _PROTOCOL_FLAGS.items() if parameter in PROTOCOLS[name].defaults]


def _protocol_flags(args: argparse.Namespace) -> dict[str, int]:
    """The sizing flags given on the command line, flag -> value."""
    given = {flag: getattr(args, flag.removeprefix("--").replace("-", "_")) for flag in _PROTOCOL_FLAGS}
    return {flag: value for flag, value in given.items() if value is not None}


def _protocol(args: argparse.Namespace, default: str):
    """--protocol with its seed and sizing flags; without --protocol the flags pick the protocol they size
    (--query-per-class / --train-per-class: per-class, --query-size / --train-size: random)."""
    from .data import get_protocol

    flags = _protocol_flags(args)
    name = args.protocol or default
    if args.protocol is None and flags:
        fitting = [candidate for candidate in _SIZED_PROTOCOLS if set(flags) <= set(_flags_of(candidate))]
        if not fitting:
            owners = "; ".join(f"{candidate}: {', '.join(_flags_of(candidate))}" for candidate in _SIZED_PROTOCOLS)
            raise DahpError(f"{', '.join(flags)} size different protocols ({owners}): give the flags of one")
        name = fitting[0]
    foreign = [flag for flag in flags if flag not in _flags_of(name)]
    if foreign:
        takes = ", ".join(_flags_of(name)) or "no sizing flags"
        raise DahpError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to protocol "
                        f"{name}: it takes {takes}")
    return get_protocol(name, seed=args.split_seed, **{_PROTOCOL_FLAGS[flag]: value for flag, value in flags.items()})


def _data_record(args: argparse.Namespace, protocol, split) -> dict[str, object]:
    """What a model or report records about its data; absolute paths beside the typed ones (when they
    exist) let ``dahp evaluate MODEL`` find the data from another folder."""
    from .data import resolve_source, split_digest

    record: dict[str, object] = {"source": args.data, "image_root": args.image_root}
    resolved = resolve_source(args.data)
    if resolved is not None:
        record["source_resolved"] = resolved
    if args.image_root and Path(args.image_root).exists():
        record["image_root_resolved"] = str(Path(args.image_root).resolve())
    return record | {"protocol": protocol.to_dict(), "sizes": split.sizes(), "split_sha256": split_digest(split)}


def cmd_data_describe(args: argparse.Namespace) -> None:
    from .data import describe

    data = _collection(args, args.data)
    protocol = _protocol(args, "all")
    print(f"protocol {protocol.name} (seed {protocol.seed}): {json.dumps(dict(protocol.parameters))}")
    print(describe(data, protocol.split(data)))


def cmd_methods(args: argparse.Namespace) -> None:
    from .methods import get_method, list_methods

    for name in list_methods():
        method = get_method(name)
        kind = "network" if method.deep else "fixed features"
        print(f"{name:<10} {method.title:<34} [{kind}] {method.citation}")


# Options of `dahp train` that a budget may set, by the configuration they go to; their
# built-in defaults (used when neither the budget nor the command line gives them) are the
# dataclasses' own. `attention` and `backbone` default to the method's.
MODEL_OPTIONS = ("backbone", "output_stride", "small_stem", "attention", "hidden_dim", "hash_norm", "head_channels",
                 "residual_fusion", "mirror_average", "demote_uncertain")
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer", "schedule", "anchor_weight",
                 "quantization_weight", "pairs", "augment", "workers", "frozen_epochs", "backbone_lr_scale",
                 "frozen_batch_norm", "min_steps", "micro_batch_size", "frozen_stages")


def _given(args: argparse.Namespace, options: tuple[str, ...]) -> dict[str, object]:
    """The options typed on the command line (their parser default is None, meaning not given)."""
    return {name: getattr(args, name) for name in options if getattr(args, name) is not None}


def _train_settings(args: argparse.Namespace):
    """(model, train config, preprocessing, weights) from the built-in defaults, then ``--budget``,
    then the flags typed: a budget is a starting point every flag can override."""
    from dataclasses import replace

    from .benchmark import Budget, weights_for
    from .data import default_preprocess
    from .methods import get_method
    from .models import ModelConfig, create_backbone
    from .models.weights import weights_spec
    from .training import TrainConfig

    method = get_method(args.method)
    budget = Budget.load(args.budget) if args.budget else None
    model_options = {**(budget.model if budget else {}), **_given(args, MODEL_OPTIONS)}
    attention = model_options.pop("attention", None)
    base = ModelConfig(bits=args.bits, **model_options)
    shared = args.backbone is not None or bool(budget and budget.shared_backbone)  # one backbone, any method
    model = method.model_config(base, attention=attention, shared_backbone=shared)
    train_options = {**(budget.train_options(method.name) if budget else {}), **_given(args, TRAIN_OPTIONS)}
    config = TrainConfig(method=method.name, seed=args.seed, **train_options)
    backbone = create_backbone(model.backbone, output_stride=model.output_stride, small_stem=model.small_stem)
    size = args.image_size or (budget.image_size if budget else None)
    if args.data == "digits" and size is None:
        preprocess = default_preprocess("digits")
    else:  # the normalisation the backbone's weights were trained with, unless the budget fixes one
        preprocess = weights_spec(backbone).preprocess(size)
        if budget and budget.mean is not None:
            preprocess = replace(preprocess, mean=budget.mean, std=budget.std)
    weights = args.weights if args.weights is not None else (weights_for(budget, backbone) if budget else None)
    return model, config, preprocess, weights


def _say_where_training_resumes(checkpoint: Path, epochs: int) -> None:
    from .serialization import read_header

    if checkpoint.is_file():  # when it is not, fit() says so
        done = read_header(checkpoint, "checkpoint")[0].get("epochs_done")
        print(f"resuming from {checkpoint} after epoch {done} of {epochs}")


def cmd_train(args: argparse.Namespace) -> None:
    from .data import save_protocol
    from .distributed import is_main_process
    from .hasher import CHECKPOINT_FILE, MODEL_FILE, DeepHasher

    model, config, preprocess, weights = _train_settings(args)
    data = _collection(args, args.data)
    protocol = _protocol(args, "all")
    split = protocol.split(data)
    train = data.subset(split.train)
    hasher = DeepHasher(model, config, preprocess, weights=weights, device=args.device, progress=not args.quiet)
    rank0 = is_main_process()  # under torchrun, rank 0 alone prints and writes files
    if rank0:
        sized = config.sized_for(len(train))
        print(f"training {hasher.method_name()} ({model.backbone}, {preprocess.image_size} px) on {len(train)} images "
              f"of {args.data} ({train.num_classes} classes; protocol {protocol.name}, seed {protocol.seed}), "
              f"{args.bits} bits, {sized.epochs} epochs{f' (--min-steps {config.min_steps})' if sized != config else ''}"
              f"{f' from --budget {args.budget}' if args.budget else ''}, device {hasher.device}")
        save_protocol(Path(args.out) / "protocol.json", protocol, split)
        if args.resume:
            _say_where_training_resumes(Path(args.out) / CHECKPOINT_FILE, sized.epochs)
    hasher.fit(train, out_dir=args.out, resume=args.resume, data_spec=_data_record(args, protocol, split))
    if rank0:
        note = hasher.weights_note_
        print(f"backbone: restored from the checkpoint (at the start: {note})" if args.resume else f"backbone: {note}")
        last = hasher.history_[-1]
        print(f"epoch {last['epoch']}: loss {last['loss']:.4f}, {last['images_per_s']:.0f} images/s")
        print(f"model saved to {Path(args.out) / MODEL_FILE}")


def cmd_encode(args: argparse.Namespace) -> None:
    from .hasher import DeepHasher
    from .serialization import atomic_write_npz

    hasher = DeepHasher.load(args.model, device=args.device)
    data = _collection(args, args.images)
    started = time.perf_counter()
    codes = hasher.encode(data, batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                          role=args.role)
    seconds = time.perf_counter() - started
    atomic_write_npz(args.output, codes=codes, bits=np.int64(hasher.bits), labels=data.labels,
                     names=np.array(data.names()), class_names=np.array(data.class_names))
    print(f"encoded {len(data)} images to {hasher.bits}-bit codes in {seconds:.1f} s "
          f"({len(data) / seconds:.0f} images/s) -> {args.output}")


def _run_name(path: str, taken: set[str]) -> str:
    """``runs/dahp48/model.dahp`` -> ``dahp48``; other files by their stem; made unique."""
    file = Path(path)
    name = file.parent.name if file.name == "model.dahp" and file.parent.name else file.stem
    unique, counter = name, 2
    while unique in taken:
        unique, counter = f"{name}-{counter}", counter + 1
    return unique


def _recorded_data(record: dict[str, object], model: str) -> tuple[str, str | None]:
    """The source and image root a model was trained on, as typed when that exists from here,
    else as resolved at training time; an error suggesting --data when neither exists."""
    from .data import source_exists

    source, resolved = str(record["source"]), record.get("source_resolved")
    if not source_exists(source):
        if resolved is None or not source_exists(str(resolved)):
            also = f" (nor {resolved})" if resolved is not None else ""
            raise DahpError(f"{model} was trained on {source}, which is not found from here ({Path.cwd()}){also}: "
                            "give --data PATH (the same data where it is now)")
        source = str(resolved)
    image_root = record.get("image_root")
    if image_root and not Path(str(image_root)).exists() and record.get("image_root_resolved"):
        image_root = record["image_root_resolved"]
    return source, None if image_root is None else str(image_root)


def _evaluation_sets(args: argparse.Namespace, hasher, model: str):
    """(query, database, context) from --query/--database, --data + protocol, or the model's own record."""
    if args.query is not None or args.database is not None:
        if args.query is None or args.database is None:
            raise DahpError("--query and --database must be given together")
        query, database = _collection(args, args.query), _collection(args, args.database)
        if query.class_names != database.class_names:
            raise DahpError(f"--query classes {query.class_names} differ from --database classes "
                            f"{database.class_names}")
        return query, database, {"query": args.query, "database": args.database}
    from .data import Protocol, split_digest

    record = hasher.data_spec_
    if args.data is None:
        if "protocol" not in record:
            raise DahpError("the model file records no data protocol: give --data (and --protocol)")
        source, image_root = _recorded_data(record, model)
        args.data, args.image_root = source, args.image_root or image_root
    data = _collection(args, args.data)
    explicit = args.protocol is not None or bool(_protocol_flags(args))
    protocol = _protocol(args, "all") if explicit else Protocol.from_dict(record["protocol"])
    split = protocol.split(data)
    if len(split.query) == 0:
        raise DahpError(f"protocol {protocol.name} draws no queries: give --protocol (e.g. per-class with "
                        "--query-per-class N, or random with --query-size N) or --query DIR and --database DIR")
    if not explicit and record.get("split_sha256") not in (None, split_digest(split)):
        raise DahpError(f"{args.data} now splits differently from when the model was trained "
                        "(the images or their order changed); give --protocol explicitly to evaluate anyway")
    context = _data_record(args, protocol, split) | {"skipped": len(data.skipped)}
    return data.subset(split.query), data.subset(split.database), context


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .hasher import DeepHasher
    from .metrics import evaluate
    from .plots import markdown_table
    from .reports import write_report

    hashers = {}
    for path in args.models:
        hashers[_run_name(path, set(hashers))] = DeepHasher.load(path, device=args.device)
    query, database, context = _evaluation_sets(args, next(iter(hashers.values())), args.models[0])
    results, methods, models = {}, {}, {}
    for name, hasher in hashers.items():
        codes = []
        for role, part in (("query", query), ("database", database)):
            if not args.quiet:
                print(f"{name}: encoding {len(part)} {role} images", file=sys.stderr)
            codes.append(hasher.encode(part, batch_size=args.batch_size, workers=args.workers,
                                       progress=not args.quiet, role=role))
        results[name] = evaluate(*codes, query.labels, database.labels, hasher.bits, top_k=args.top_k,
                                 radius=args.radius)
        methods[name] = hasher.method_name()
        models[name] = {"path": str(Path(args.models[len(models)]).resolve()), "method": methods[name],
                        "model_config": hasher.model_config.to_dict(), "train_config": hasher.train_config.to_dict()}
    files = write_report(args.out, results, methods, {**context, "models": models}, query.skipped + database.skipped)
    if args.json:
        print(json.dumps({name: {key: result[key] for key in ("bits", "queries", "database", "top_k", "map",
                                                              "map_expected", "chance_map",
                                                              "precision_within_radius")}
                          for name, result in results.items()}))
    else:
        print(markdown_table(results), end="")
        print("wrote " + ", ".join(str(file) for file in files))


def _bits_list(text: str) -> list[int]:
    try:
        return [_bits(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated code lengths like 12,24,32,48: {exc}") from None


def cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import Budget, plan_runs, run_benchmark, split_data
    from .methods import parse_methods

    budget = Budget.load(args.budget)
    methods = parse_methods(args.methods)
    source = args.data or budget.dataset
    data = _collection(args, source)
    shared = split_data(data, source, budget, args.split_seed)
    plans = plan_runs(methods, args.bits, budget, data.num_classes, args.seed)
    print(f"benchmark {budget.name}: {len(plans)} runs ({', '.join(m.name for m in methods)} x "
          f"{', '.join(map(str, args.bits))} bits) on {source}: {shared.record['sizes']}")
    started = time.perf_counter()
    run_benchmark(shared, plans, budget, args.out, seed=args.seed, device=args.device, progress=not args.quiet)
    print((Path(args.out) / "results.md").read_text())
    print(f"wall time {time.perf_counter() - started:.0f} s; report in {args.out}/results.md and {args.out}/evaluation/")


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from .web import create_app
    except ImportError as exc:
        raise DahpError(f"dahp serve needs the web extra ({exc.name} is missing): pip install 'dahp[web]'") from None
    from .index import Index

    index = Index.load(args.index, device=args.device)
    app = create_app(index, max_upload_bytes=int(args.max_upload_mb * 2**20), full_paths=args.full_paths,
                     max_batch=args.batch_size, max_wait_ms=args.batch_wait_ms, max_queue=args.queue_size,
                     reload_interval=args.reload_seconds, device=args.device, runtime=args.runtime)
    print(f"serving {args.index} ({index.count} images, generation {index.info()['generation']}) on "
          f"http://{args.host}:{args.port}/  (Ctrl-C stops; /ready answers 200 once the model is loaded)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


# --- parser ---------------------------------------------------------------------


SERVE_RUNTIMES = ("auto", "pytorch", "onnxruntime")  # dahp.hasher.RUNTIMES, which would load torch here
SOURCE_HELP = ("'digits' (embedded), an image folder ROOT/<class>/<image>, a .tar.gz of one, a CIFAR-10 "
               "python-batches directory, 'cifar10' (download), a list file (.txt: 'path 0 1 0 ...') or a .csv")


def _add_protocol_options(parser: argparse.ArgumentParser) -> None:
    from .data import PROTOCOLS

    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                        help="named split (cifar10: 100 queries + 500 training per class, database = the rest)")
    parser.add_argument("--query-per-class", type=non_negative_int, default=None, metavar="N",
                        help="per-class protocol: queries drawn per class")
    parser.add_argument("--train-per-class", type=non_negative_int, default=None, metavar="N",
                        help="per-class protocol: training images per class (0: all non-query images)")
    parser.add_argument("--query-size", type=non_negative_int, default=None, metavar="N",
                        help="random protocol (multi-label data): queries drawn from the whole collection")
    parser.add_argument("--train-size", type=non_negative_int, default=None, metavar="N",
                        help="random protocol: training images drawn (0: all non-query images)")
    parser.add_argument("--split-seed", type=non_negative_int, default=0, metavar="S", help="seed of the split")


def _shipped_budgets() -> list[str]:
    """The budgets packaged with dahp, read from the package without importing torch."""
    from importlib import resources

    return sorted(entry.name.removesuffix(".json") for entry in resources.files("dahp").joinpath("budgets").iterdir()
                  if entry.name.endswith(".json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dahp", description="Deep attention-guided hashing (DAHP) for image retrieval.")
    parser.add_argument("--version", action="version", version=f"dahp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=DefaultsHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", cmd_demo, "train DAHP and its DPSH-loss ablation on scikit-learn's digits and compare")
    demo.add_argument("--epochs", type=positive_int, default=12, help="training epochs of each model")
    demo.add_argument("--bits", type=_bits, default=48, help="code length")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="split and initialisation seed")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    anchors = command("anchors", cmd_anchors, "generate AHCG anchor codes, one per class")
    anchors.add_argument("--bits", type=_bits, required=True, help="code length")
    anchors.add_argument("--classes", type=positive_int, required=True, help="number of anchors")
    anchors.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    anchors.add_argument("--method", choices=("auto", "lexicode", "scalable"), default="auto",
                         help="AHCG's exact lexicode search or its scalable variant")
    anchors.add_argument("--min-distance", type=positive_int, default=None, metavar="H",
                         help="fail unless every pair of anchors is at least H bits apart")
    anchors.add_argument("--json", action="store_true", help="print JSON instead of text")

    command("methods", cmd_methods, "list the hashing methods (DAHP, its ablations, the baselines)")

    train = command("train", cmd_train, "train a hashing model (DAHP, or any method of dahp methods with --method); "
                                         "checkpoints every epoch into --out")
    train.add_argument("--data", required=True, help=SOURCE_HELP)
    train.add_argument("--out", required=True, type=Path, help="run directory (checkpoint.dahp, model.dahp)")
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.dahp")
    add_source_options(train)
    _add_protocol_options(train)
    train.add_argument("--budget", default=None, metavar="NAME|FILE",
                       help="start from a benchmark budget's settings (network, optimiser, image size, weights): "
                            f"{', '.join(_shipped_budgets())} or a budget JSON file; the flags below override it")
    train.add_argument("--bits", type=_bits, default=48, help="code length (default 48)")

    def option(name: str, **kwargs: object) -> None:
        """A budget-settable option: its help names the built-in default, used without budget or flag."""
        key = name.removeprefix("--").replace("-", "_")
        shown = kwargs.pop("shown", defaults[key])
        text = str(kwargs.pop("help", "")).strip()
        kwargs["help"] = f"{text}{'; ' if text else ''}default {shown}, or the budget's"
        train.add_argument(name, default=None, **kwargs)  # type: ignore[arg-type]

    from dataclasses import fields

    from .models import ModelConfig, list_backbones
    from .training import AUGMENTATIONS, OPTIMIZERS, PAIR_MODES, SCHEDULES, TrainConfig

    defaults = {field.name: field.default for config in (ModelConfig, TrainConfig) for field in fields(config)}

    option("--epochs", type=positive_int)
    option("--batch-size", type=positive_int)
    option("--lr", type=float, help="learning rate (of the new layers, with --backbone-lr-scale)")
    option("--momentum", type=float)
    option("--weight-decay", type=float)
    option("--optimizer", choices=OPTIMIZERS)
    option("--schedule", choices=SCHEDULES, help="learning-rate schedule over the epochs")
    option("--frozen-epochs", type=non_negative_int,
           help="first train only the new layers (attention, head) on the frozen pretrained backbone")
    option("--backbone-lr-scale", type=float, help="the backbone's learning rate is --lr times this")
    option("--frozen-batch-norm", action=argparse.BooleanOptionalAction,
           help="fine-tune the backbone with its pretrained BatchNorm statistics fixed (batch statistics of "
                "other images shift every feature the head learned on the frozen backbone)")
    option("--frozen-stages", type=non_negative_int,
           help="keep the backbone's first N stages (the stem counts as one) at their pretrained weights and "
                "statistics: each step skips their backward pass")
    option("--min-steps", type=non_negative_int,
           help="raise the epochs so a small training set still gets this many optimiser steps")
    option("--micro-batch-size", type=positive_int, shown="the whole batch",
           help="run each batch's forward and backward in chunks of this many images, adding up their "
                "gradients for one step (faster on a CPU; needs --pairs memory)")
    train.add_argument("--method", default="dahp", help="loss and network variant (list them: dahp methods); default dahp")
    option("--anchor-weight", type=float, shown="the method's (DAHP 0.05)", help="lambda of DAHP's anchor loss (0: off)")
    option("--quantization-weight", type=float, shown="the method's published value",
           help="weight of the method's quantisation term")
    option("--augment", choices=AUGMENTATIONS,
           help="random flips (flip), also padded random crops (flip-crop) or random-resized crops of 35-100%% of the area (resized-crop)")
    option("--pairs", choices=PAIR_MODES,
           help="pair each batch with a memory of all training codes (DPSH) or only with itself")
    train.add_argument("--image-size", type=positive_int, default=None,
                       help="input resolution (default: the budget's, else the backbone weights' own, 224 for "
                            "ResNet-18; digits: 8)")
    option("--output-stride", type=int, choices=(2, 4, 8, 16, 32))
    option("--small-stem", action=argparse.BooleanOptionalAction,
           help="3x3 stride-1 stem without max-pool, for small images")
    option("--backbone", choices=list_backbones(), shown="the method's (resnet18; DPSH: alexnet)")
    option("--attention", action=argparse.BooleanOptionalAction, shown="the method's (dahp, dahp-v2: on)",
           help="dual attention on/off")
    option("--hidden-dim", type=positive_int, help="width of the head's FC1")
    option("--head-channels", type=positive_int, shown="none (the backbone's channels)",
           help="reduce the backbone's map to this many channels before attention (DANet's reduction)")
    option("--residual-fusion", action=argparse.BooleanOptionalAction,
           help="add the dual attention's fused output to its input, starting as the identity")
    option("--mirror-average", action=argparse.BooleanOptionalAction,
           help="encode each image with its left-right mirror and average the outputs (mirrored copies share "
                "a code; encoding takes twice as long)")
    option("--demote-uncertain", type=float, metavar="RATIO",
           help="in a database's codes, flip the least certain bit of an image whose weakest output is below "
                "RATIO times its mean, so that among equally near images the surer ones come first; "
                "queries keep their sign codes (0: off)")
    option("--hash-norm", action=argparse.BooleanOptionalAction,
           help="batch-normalise the hash outputs (keeps pairwise losses off the b = 0 saddle)")
    train.add_argument("--weights", default=None,
                       help="backbone state dict file, or 'none' (default: the budget's, else the backbone's "
                            "pretrained weights when they are on this machine)")
    train.add_argument("--seed", type=non_negative_int, default=0, help="initialisation and data-order seed (default 0)")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    option("--workers", type=non_negative_int, help="image-decoding processes")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    encode = command("encode", cmd_encode, "encode images to packed binary codes (.npz)")
    encode.add_argument("model", help="model file (model.dahp)")
    encode.add_argument("images", help=SOURCE_HELP)
    encode.add_argument("-o", "--output", required=True, type=Path, help="output .npz")
    encode.add_argument("--role", choices=("database", "query"), default="database",
                        help="codes to search in, with the model's --demote-uncertain rule, or to search with "
                             "(default: database)")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")
    add_source_options(encode)
    add_runtime_options(encode)

    evaluate = command("evaluate", cmd_evaluate,
                       "mAP@K, tie-aware mAP, PR curves, P@N and P@H<=r for one or more models; writes a report")
    evaluate.add_argument("models", nargs="+", metavar="MODEL", help="model files (model.dahp)")
    evaluate.add_argument("--data", default=None, help="collection to split (default: each model's training data). "
                          + SOURCE_HELP)
    add_source_options(evaluate)
    _add_protocol_options(evaluate)
    evaluate.add_argument("--query", default=None, help="query collection (with --database)")
    evaluate.add_argument("--database", default=None, help="database collection (with --query)")
    evaluate.add_argument("--top-k", type=positive_int, default=None, help="mAP@K (default: all)")
    evaluate.add_argument("--radius", type=non_negative_int, default=2, help="Hamming radius of P@H<=r")
    evaluate.add_argument("--out", type=Path, default=Path("dahp-evaluation"),
                          help="report folder: results.json, results.md, PNG plots (default ./dahp-evaluation)")
    evaluate.add_argument("--json", action="store_true", help="print the headline figures as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_options(evaluate)

    benchmark = command("benchmark", cmd_benchmark,
                        "train and evaluate several methods on one split and budget; Tables III/IV (resumable)")
    benchmark.add_argument("--data", "--dataset", dest="data", default=None,
                           help="the collection (default: the budget's dataset, e.g. cifar10). " + SOURCE_HELP)
    benchmark.add_argument("--methods", default="dahp,dahp-v1,dahp-v2,dpsh",
                           help="comma-separated method names, 'all', or 'table-iv' (the paper's ten rows); "
                                "list them: dahp methods")
    benchmark.add_argument("--bits", type=_bits_list, default=[48], help="code lengths, e.g. 12,24,32,48")
    benchmark.add_argument("--budget", default="smoke", metavar="NAME|FILE",
                           help=f"a shipped budget ({', '.join(_shipped_budgets())}) or a budget JSON file")
    benchmark.add_argument("--out", type=Path, required=True,
                           help="results folder; rerunning skips finished runs and resumes interrupted ones")
    benchmark.add_argument("--seed", type=non_negative_int, default=0, help="initialisation and data-order seed")
    benchmark.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the protocol's split")
    benchmark.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    benchmark.add_argument("--quiet", action="store_true", help="no progress bars")
    add_source_options(benchmark)

    add_export_command(command)
    add_index_commands(command)

    serve = command("serve", cmd_serve, "web page and JSON API to search an index by image")
    serve.add_argument("index", help="index directory (dahp index build)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serve.add_argument("--port", type=positive_int, default=8000, help="TCP port")
    serve.add_argument("--max-upload-mb", type=float, default=serving.MAX_UPLOAD_BYTES / 2**20,
                       help="larger uploads get HTTP 413")
    serve.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    serve.add_argument("--runtime", choices=SERVE_RUNTIMES, default="auto",
                       help="what runs the network: auto = onnxruntime on the CPU when installed (it runs without "
                            "Python's GIL, so request handling does not stall it), else pytorch")
    serve.add_argument("--batch-size", type=positive_int, default=serving.MAX_BATCH,
                       help="most concurrent queries encoded in one forward pass")
    serve.add_argument("--batch-wait-ms", type=non_negative_float, default=serving.MAX_WAIT_MS,
                       help="longest a query waits for others, still being decoded, to join its batch "
                            "(a lone query never waits)")
    serve.add_argument("--queue-size", type=positive_int, default=serving.MAX_QUEUE,
                       help="most search requests in the server at once; more get HTTP 503 with Retry-After")
    serve.add_argument("--reload-seconds", type=non_negative_float, default=serving.RELOAD_SECONDS,
                       help="how often to look for a generation committed by `dahp index add` and switch to it "
                            "(0: never)")
    serve.add_argument("--full-paths", action="store_true",
                       help="show each item's absolute path on this machine (default: relative to the folder "
                            "holding every indexed image)")

    data = command("data", lambda args: None, "inspect data sources and protocols")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    describe = data_commands.add_parser("describe", help="sizes per split and per class",
                                        description="sizes per split and per class for a source and protocol",
                                        formatter_class=DefaultsHelpFormatter)
    describe.set_defaults(handler=cmd_data_describe)
    describe.add_argument("data", metavar="SOURCE", help=SOURCE_HELP)
    add_source_options(describe)
    _add_protocol_options(describe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DahpError as exc:
        print(f"dahp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dahp: interrupted; a training run continues with --resume from its last checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
