"""mAP as a trained model's database codes demote their unsure images, ratio by ratio.

``--demote-uncertain RATIO`` flips the least certain bit of a database image whose weakest
output is below RATIO times its mean (``dahp.codes.demoted_codes``); queries keep their sign
codes. The ratio is a property of the model, but choosing it needs no retraining: this
encodes the model's own split once (real outputs, the network's forward pass) and scores
the sign codes and each ratio's demoted database codes against the same queries, mAP in
database order (the SPEC's) and tie-aware.

    python benchmarks/demote_uncertain.py runs/frozen4/models/dahp-48/model.dahp --cache-dir /tmp/dahp-cache
    python benchmarks/demote_uncertain.py runs/mosaics/models/dahp-48/model.dahp --top-k 1000

``--outputs FILE.npz`` keeps the encoded outputs, so another sweep of the same model skips
the encoding (60,000 CIFAR-10 images take about 13 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from model_split import model_split

from dahp.codes import demoted_codes, pack_codes, unsure_rows
from dahp.hasher import DeepHasher
from dahp.metrics import mean_average_precision

RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def model_outputs(model: Path, data: str | None, cache_dir: str | None) -> dict[str, np.ndarray]:
    """The real outputs and labels of the queries and database of the split the model was trained on."""
    hasher = DeepHasher.load(model, device="cpu")
    collection, split = model_split(hasher, model, data, cache_dir, "demote_uncertain")
    query, database = collection.subset(split.query), collection.subset(split.database)
    return {"query": hasher.encode_real(query, progress=True), "database": hasher.encode_real(database, progress=True),
            "query_labels": query.labels, "database_labels": database.labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model file (model.dahp) trained by dahp train or dahp benchmark")
    parser.add_argument("--data", default=None, help="the model's training source, if not where it was")
    parser.add_argument("--cache-dir", default=None, help="where decoded archives are cached")
    parser.add_argument("--ratios", type=float, nargs="+", default=RATIOS)
    parser.add_argument("--top-k", type=int, default=None, help="mAP@K (default: mAP@ALL)")
    parser.add_argument("--outputs", type=Path, default=None, help="read the encoded outputs here, or save them")
    args = parser.parse_args()

    if args.outputs is not None and args.outputs.is_file():
        outputs = dict(np.load(args.outputs))
    else:
        outputs = model_outputs(args.model, args.data, args.cache_dir)
        if args.outputs is not None:
            np.savez(args.outputs, **outputs)
    query_codes, database = pack_codes(outputs["query"]), outputs["database"]
    labels, bits = (outputs["query_labels"], outputs["database_labels"]), database.shape[1]

    def scores(database_codes: np.ndarray) -> str:
        return " | ".join(f"{mean_average_precision(query_codes, database_codes, *labels, bits, args.top_k, ties=ties):.4f}"
                          for ties in ("database-order", "expected"))

    at = f"@{args.top_k}" if args.top_k else "@ALL"
    print(f"{len(query_codes)} queries, {len(database)} database images, {bits} bits")
    print(f"| ratio | database images demoted | mAP{at} | tie-aware |\n|---|---|---|---|")
    print(f"| 0 (sign codes) | 0 | {scores(pack_codes(database))} |")
    for ratio in args.ratios:
        print(f"| {ratio} | {unsure_rows(database, ratio).mean():.0%} | {scores(demoted_codes(database, ratio))} |", flush=True)


if __name__ == "__main__":
    main()
