"""What a search user sees first among equally near hits: ties in listing order against the index's.

Hamming distance ties a lot, and DAHP's codes tie more than most (its anchor loss puts a class
on one code), so which of the equally near images come first decides the first page of
results. An index built from class folders lists them one folder after another; ordering
ties by listing position would put the earliest folders' images first. ``dahp index`` numbers
the images of a build in a fixed shuffle instead (``dahp.index.store.tie_order``) and orders
ties by that number.

This encodes a per-class split's queries and database images with the model and prints
P@1 and P@k of the ranking with ties in listing order and with ties in the index's order
(ids numbered by ``tie_order``). With ``--through-index`` it also builds the index (through
``Index.build``, as ``dahp index build`` does) and checks that its hits are that second
ranking. Single-label sources only (relevance: the same class).

    python benchmarks/tie_order.py --model runs/pairs-shipped/models/dahp-48/model.dahp \\
        --data data/cifar-pairs --query-per-class 10 --train-per-class 20 --through-index
    python benchmarks/tie_order.py --model runs/micro14/models/dahp-48/model.dahp \\
        --data ../shared/datasets/cifar10-jpeg.tar.gz --query-per-class 100 --train-per-class 500
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from dahp.codes import hamming_distance
from dahp.data import get_protocol, load_source
from dahp.hasher import DeepHasher
from dahp.index import Index
from dahp.index.store import tie_order


def _precision(relevant: np.ndarray) -> tuple[float, float]:
    """P@1 and P@k of a (queries, k) relevance matrix."""
    return float(relevant[:, 0].mean()), float(relevant.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--query-per-class", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--through-index", action="store_true", help="also build the index and check its hits")
    args = parser.parse_args()

    data = load_source(args.data)
    if (data.labels.sum(axis=1) != 1).any():
        raise SystemExit(f"{args.data}: every image needs exactly one label")
    split = get_protocol("per-class", args.seed, query_per_class=args.query_per_class,
                         train_per_class=args.train_per_class).split(data)
    classes = data.labels.argmax(axis=1)
    hasher = DeepHasher.load(args.model)
    queries, database = data.subset(split.query), data.subset(split.database)
    query_codes, database_codes = hasher.encode(queries), hasher.encode(database, role="database")  # as an index

    distances = hamming_distance(query_codes, database_codes)
    query_classes = classes[split.query][:, None]

    def first_hits(tie_rank: np.ndarray) -> np.ndarray:
        """Database positions of each query's first k hits, ties ordered by ``tie_rank``."""
        return np.lexsort((np.broadcast_to(tie_rank, distances.shape), distances), axis=1)[:, : args.k]

    listed = first_hits(np.arange(len(database)))
    ids = np.empty(len(database), np.int64)
    ids[tie_order(len(database))] = np.arange(len(database))  # the id dahp index gives each database image
    shuffled = first_hits(ids)
    if args.through_index:
        with tempfile.TemporaryDirectory() as work:
            list_file = Path(work) / "database.txt"
            list_file.write_text("".join(f"{Path(path).resolve()} {' '.join(map(str, row))}\n"
                                         for path, row in zip(database.images, database.labels)))
            index = Index.build(args.model, str(list_file), Path(work) / "index", progress=False)
            found = np.array([[hit.id for hit in row] for row in index.search(query_codes, k=args.k)])
        if not np.array_equal(found, ids[shuffled]):
            raise SystemExit("the index's hits are not the ranking with ties in id order")
        print("the index's hits are the ranking with ties in id order (checked)")
    database_classes = classes[split.database]
    listed_precision = _precision(database_classes[listed] == query_classes)
    shuffled_precision = _precision(database_classes[shuffled] == query_classes)

    nearest = distances.min(axis=1, keepdims=True)
    tied = (distances == nearest).sum(axis=1)
    print(f"{len(queries)} queries, {len(database)} database images, {data.num_classes} classes, "
          f"{hasher.bits} bits; images at the nearest distance per query: median {np.median(tied):.0f}")
    print(f"{'ties ordered by':28s} {'P@1':>6s} {f'P@{args.k}':>6s}")
    print(f"{'listing position':28s} {listed_precision[0]:6.3f} {listed_precision[1]:6.3f}")
    print(f"{'the index ids (dahp index)':28s} {shuffled_precision[0]:6.3f} {shuffled_precision[1]:6.3f}")


if __name__ == "__main__":
    main()
