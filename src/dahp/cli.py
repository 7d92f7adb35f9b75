"""The ``dahp`` command line: demo, anchors, train, encode, evaluate.

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


def _bits(text: str) -> int:
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer between {MIN_BITS} and {MAX_BITS}, got {text!r}") from None
    except DahpError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--bits ")) from None


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


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


def _split_args(args: argparse.Namespace):
    """The collection named by --data and the split asked for (None: use every image)."""
    from .data import load_collection, split_per_class

    data = load_collection(args.data)
    if args.query_per_class or args.train_per_class:
        return data, split_per_class(data.labels, args.query_per_class, args.train_per_class, args.split_seed)
    return data, None


def _data_spec(args: argparse.Namespace) -> dict[str, object]:
    return {"source": args.data, "query_per_class": args.query_per_class,
            "train_per_class": args.train_per_class, "split_seed": args.split_seed}


def cmd_train(args: argparse.Namespace) -> None:
    from .data import default_preprocess
    from .hasher import MODEL_FILE, DeepHasher
    from .models import ModelConfig
    from .training import TrainConfig

    data, split = _split_args(args)
    train = data.subset(split.train) if split is not None else data
    model = ModelConfig(bits=args.bits, output_stride=args.output_stride, small_stem=args.small_stem,
                        attention=not args.no_attention, hidden_dim=args.hidden_dim)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, optimizer=args.optimizer, schedule=args.schedule,
        anchor_weight=args.anchor_weight, quantization_weight=args.quantization_weight, pairs=args.pairs,
        seed=args.seed, workers=args.workers,
    )
    hasher = DeepHasher(model, config, default_preprocess(args.data, args.image_size), weights=args.weights, device=args.device,
                        progress=not args.quiet)
    print(f"training on {len(train)} images of {args.data} ({train.num_classes} classes), "
          f"{args.bits} bits, device {hasher.device}")
    hasher.fit(train, out_dir=args.out, resume=args.resume, data_spec=_data_spec(args))
    print(f"backbone: {hasher.weights_note_}")
    last = hasher.history_[-1]
    print(f"epoch {last['epoch']}: loss {last['loss']:.4f}, {last['images_per_s']:.0f} images/s")
    print(f"model saved to {Path(args.out) / MODEL_FILE}")


def cmd_encode(args: argparse.Namespace) -> None:
    from .data import load_collection
    from .hasher import DeepHasher
    from .serialization import atomic_write_npz

    hasher = DeepHasher.load(args.model, device=args.device)
    data = load_collection(args.images)
    started = time.perf_counter()
    codes = hasher.encode(data, batch_size=args.batch_size, workers=args.workers)
    seconds = time.perf_counter() - started
    atomic_write_npz(args.output, codes=codes, bits=np.int64(hasher.bits), labels=data.labels,
                     names=np.array(data.names()), class_names=np.array(data.class_names))
    print(f"encoded {len(data)} images to {hasher.bits}-bit codes in {seconds:.1f} s "
          f"({len(data) / seconds:.0f} images/s) -> {args.output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import load_collection
    from .hasher import DeepHasher
    from .metrics import mean_average_precision

    hasher = DeepHasher.load(args.model, device=args.device)
    if args.query is not None or args.database is not None:
        if args.query is None or args.database is None:
            raise DahpError("--query and --database must be given together")
        query, database = load_collection(args.query), load_collection(args.database)
        if query.class_names != database.class_names:
            raise DahpError(f"--query classes {query.class_names} differ from --database classes "
                            f"{database.class_names}")
    else:
        if args.data is None:
            spec = hasher.data_spec_
            args.data, args.query_per_class = spec["source"], spec.get("query_per_class", 0)
            args.train_per_class, args.split_seed = spec.get("train_per_class", 0), spec.get("split_seed", 0)
        data, split = _split_args(args)
        if split is None:
            raise DahpError("evaluation needs a query/database split: give --query-per-class, "
                            "or --query DIR and --database DIR")
        query, database = data.subset(split.query), data.subset(split.database)
    query_codes = hasher.encode(query, batch_size=args.batch_size, workers=args.workers)
    database_codes = hasher.encode(database, batch_size=args.batch_size, workers=args.workers)
    score = mean_average_precision(query_codes, database_codes, query.labels, database.labels,
                                   hasher.bits, top_k=args.top_k)
    at = "ALL" if args.top_k is None else str(args.top_k)
    result = {"bits": hasher.bits, "queries": len(query), "database": len(database), f"mAP@{at}": score}
    print(json.dumps(result) if args.json else f"mAP@{at} = {score:.4f} ({len(query)} queries, "
          f"{len(database)} database images, {hasher.bits} bits)")


# --- parser ---------------------------------------------------------------------


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query-per-class", type=_non_negative_int, default=0, metavar="N",
                        help="queries drawn per class (database = all non-query images)")
    parser.add_argument("--train-per-class", type=_non_negative_int, default=0, metavar="N",
                        help="training images drawn per class (0 and no queries: train on everything)")
    parser.add_argument("--split-seed", type=_non_negative_int, default=0, metavar="S")


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--workers", type=_non_negative_int, default=0, help="image-decoding processes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dahp", description="Deep attention-guided hashing (DAHP) for image retrieval.")
    parser.add_argument("--version", action="version", version=f"dahp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", cmd_demo, "train DAHP and its DPSH-loss ablation on scikit-learn's digits and compare")
    demo.add_argument("--epochs", type=_positive_int, default=12)
    demo.add_argument("--bits", type=_bits, default=48)
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    anchors = command("anchors", cmd_anchors, "generate AHCG anchor codes, one per class")
    anchors.add_argument("--bits", type=_bits, required=True)
    anchors.add_argument("--classes", type=_positive_int, required=True)
    anchors.add_argument("--seed", type=_non_negative_int, default=0)
    anchors.add_argument("--method", choices=("auto", "lexicode", "scalable"), default="auto")
    anchors.add_argument("--min-distance", type=_positive_int, default=None, metavar="H",
                         help="fail unless every pair of anchors is at least H bits apart")
    anchors.add_argument("--json", action="store_true", help="print JSON instead of text")

    train = command("train", cmd_train, "train a DAHP model; checkpoints every epoch into --out")
    train.add_argument("--data", required=True, help="'digits' (embedded) or an image folder ROOT/<class>/<image>")
    train.add_argument("--out", required=True, type=Path, help="run directory (checkpoint.dahp, model.dahp)")
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.dahp")
    _add_split_options(train)
    train.add_argument("--bits", type=_bits, default=48)
    train.add_argument("--epochs", type=_positive_int, default=50)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--lr", type=float, default=0.04)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=1e-5)
    train.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    train.add_argument("--schedule", choices=("constant", "cosine", "step"), default="constant")
    train.add_argument("--anchor-weight", type=float, default=0.05, help="lambda of the anchor loss (0: off)")
    train.add_argument("--quantization-weight", type=float, default=0.0, help="DPSH's quantization term weight")
    train.add_argument("--pairs", choices=("memory", "batch"), default="memory",
                       help="pair each batch with a memory of all training codes (DPSH) or only with itself")
    train.add_argument("--image-size", type=_positive_int, default=None, help="input resolution (default 224; digits: 8)")
    train.add_argument("--output-stride", type=int, choices=(2, 4, 8, 16, 32), default=8)
    train.add_argument("--small-stem", action="store_true", help="3x3 stride-1 stem without max-pool, for small images")
    train.add_argument("--no-attention", action="store_true", help="plain ResNet-18 (ablation DAHP-v1)")
    train.add_argument("--hidden-dim", type=_positive_int, default=1000)
    train.add_argument("--weights", default=None,
                       help="torchvision ResNet-18 state dict file, or 'none' (default: torchvision's cache if present)")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    train.add_argument("--workers", type=_non_negative_int, default=0, help="image-decoding processes")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    encode = command("encode", cmd_encode, "encode images to packed binary codes (.npz)")
    encode.add_argument("model", help="model file (model.dahp)")
    encode.add_argument("images", help="'digits' or an image folder")
    encode.add_argument("-o", "--output", required=True, type=Path, help="output .npz")
    _add_runtime_options(encode)

    evaluate = command("evaluate", cmd_evaluate, "mAP of Hamming ranking for a query/database split")
    evaluate.add_argument("model", help="model file (model.dahp)")
    evaluate.add_argument("--data", default=None, help="collection to split (default: the model's training data)")
    _add_split_options(evaluate)
    evaluate.add_argument("--query", default=None, help="query image folder (with --database)")
    evaluate.add_argument("--database", default=None, help="database image folder (with --query)")
    evaluate.add_argument("--top-k", type=_positive_int, default=None, help="mAP@K (default: all)")
    evaluate.add_argument("--json", action="store_true")
    _add_runtime_options(evaluate)
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
