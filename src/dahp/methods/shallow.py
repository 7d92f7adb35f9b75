"""The shallow references on fixed features: LSH and ITQ.

These are the benchmark's non-deep baselines.  They learn no network: they hash
fixed feature vectors, which come from a frozen network or from raw pixels — the
caller's choice — so a gap between them and a deep method measures what training
the network adds.  Both follow scikit-learn's estimator style (parameters in the
constructor, learned state in attributes ending in ``_``, ``fit`` returns ``self``)
and give codes in the package's one format: packed ``uint8`` rows from
:func:`dahp.codes.pack_codes`, bit 1 exactly where the projection is ``> 0``.

Both centre with the mean of the *training* features only; ``encode`` subtracts that
same mean from new features, so queries never influence their own codes.
"""

from __future__ import annotations

import numbers
from typing import TypeVar

import numpy as np
from sklearn.decomposition import PCA

from ..codes import check_bits, pack_codes
from ..errors import DahpError
from .registry import Method, register_method

_Hasher = TypeVar("_Hasher", bound="_LinearHasher")


def check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DahpError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_features(features: np.ndarray, who: str) -> np.ndarray:
    """A finite 2-D real array with at least one row and column, as float64.

    Integer arrays (e.g. pixels) are accepted and converted; bool, complex and
    object arrays are not features and are refused.
    """
    array = np.asarray(features)
    if array.dtype.kind not in "fiu":
        raise DahpError(f"{who}: features must be a real-valued float array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DahpError(f"{who}: features must be a 2-D array (n_samples, n_features), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DahpError(f"{who}: features must have at least one row and one column, got shape {array.shape}")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = array.size - int(finite.sum())
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DahpError(f"{who}: features contain {bad} NaN or infinite values (first in row {row})")
    return array


class _LinearHasher:
    """Shared part: ``code = [(x - mean_) @ projection_ > 0]``, with ``projection_`` learned by ``fit``."""

    def __init__(self, bits: int, seed: int = 0) -> None:
        self.bits = check_bits(check_int(bits, "bits", 1))
        self.seed = check_int(seed, "seed", 0)
        self.mean_: np.ndarray | None = None
        self.projection_: np.ndarray | None = None  # (n_features_in_, bits)
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={value!r}" for name, value in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, object]:
        return {"bits": self.bits, "seed": self.seed}

    def fit(self: _Hasher, features: np.ndarray, labels: np.ndarray | None = None) -> _Hasher:
        """Learn the mean and the ``(n_features, bits)`` projection from training rows; returns ``self``.

        ``labels`` is accepted (and ignored: LSH and ITQ are unsupervised) so that every
        shallow method is fitted the same way, as scikit-learn's ``fit(X, y=None)``."""
        who = f"{type(self).__name__}.fit"
        array = check_features(features, who)
        if array.shape[0] < 2:
            raise DahpError(f"{who}: need at least 2 training samples to centre the features, got {array.shape[0]}")
        mean = array.mean(axis=0)
        self.projection_ = self._learn_projection(array - mean)
        self.mean_ = mean
        self.n_features_in_ = array.shape[1]
        return self

    def _learn_projection(self, centred: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_real(self, features: np.ndarray) -> np.ndarray:
        """``(n, bits)`` float64 real projections of ``features``; their signs are the codes."""
        name = type(self).__name__
        if self.mean_ is None or self.projection_ is None:
            raise DahpError(f"{name} is not fitted: call fit(training_features) before encoding")
        array = check_features(features, f"{name}.encode")
        if array.shape[1] != self.n_features_in_:
            raise DahpError(
                f"{name}.encode: features have {array.shape[1]} dimensions but the hasher was "
                f"fitted on {self.n_features_in_}"
            )
        return (array - self.mean_) @ self.projection_

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Packed ``(n, ceil(bits/8))`` uint8 codes: bit 1 where the projection is ``> 0``."""
        return pack_codes(self.encode_real(features))


class LSH(_LinearHasher):
    """Sign random projections (Charikar, STOC 2002), the "LSH" baseline of hashing papers
    (after Gionis, Indyk & Motwani, VLDB 1999).

    ``fit`` draws ``bits`` directions from a standard Gaussian with
    ``numpy.random.default_rng(seed)``; bit k of x is ``[(x - mean_) . w_k > 0]``.
    Deviations from the textbook hash: features are centred with the training mean
    (Charikar's hyperplanes pass through the origin; centring is what hashing papers
    run, otherwise features that are all positive, such as ReLU outputs, give nearly
    constant bits), and a projection of exactly 0 gives bit 0.

    Attributes after ``fit``: ``mean_`` (n_features,), ``projection_`` (n_features, bits),
    ``n_features_in_``.
    """

    def _learn_projection(self, centred: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((centred.shape[1], self.bits))


class ITQ(_LinearHasher):
    """Iterative Quantization (Gong & Lazebnik, CVPR 2011; Gong et al., TPAMI 2013), unsupervised PCA-ITQ.

    ``fit`` centres the training features, projects them on their top ``bits``
    principal components (scikit-learn ``PCA``) to get V, starts from a random
    orthogonal rotation R (QR of a Gaussian matrix from ``default_rng(seed)``), and
    alternates ``iterations`` times: B = sign(V R), then R = the orthogonal Procrustes
    solution from the SVD of Bᵀ V, minimising the quantisation loss ``||B - V R||²_F``.
    ``quantization_loss_[t]`` is that loss (summed over the training set, as in the
    paper) after iteration t, for the codes the rotation then gives: it never increases.
    ``iterations=0`` leaves the random rotation (the papers' PCA-RR).

    Deviations from the authors' MATLAB code: a projection of exactly 0 maps to -1 /
    bit 0 (theirs: +1), so training uses the same sign as :func:`dahp.codes.pack_codes`;
    PCA is scikit-learn's (its solver chosen by ``svd_solver="auto"``, seeded with
    ``seed`` when that is the randomized one) instead of an eigendecomposition of the
    covariance.

    Attributes after ``fit``: ``mean_``, ``pca_`` (the fitted PCA), ``rotation_``
    (bits, bits), ``projection_`` = ``pca_.components_.T @ rotation_``,
    ``quantization_loss_`` (iterations,), ``n_features_in_``.
    """

    def __init__(self, bits: int, iterations: int = 50, seed: int = 0) -> None:
        super().__init__(bits, seed)
        self.iterations = check_int(iterations, "iterations", 0)
        self.pca_: PCA | None = None
        self.rotation_: np.ndarray | None = None
        self.quantization_loss_: np.ndarray | None = None

    def _params(self) -> dict[str, object]:
        return {"bits": self.bits, "iterations": self.iterations, "seed": self.seed}

    def _learn_projection(self, centred: np.ndarray) -> np.ndarray:
        n_samples, n_features = centred.shape
        if self.bits > min(n_samples, n_features):
            raise DahpError(
                f"ITQ.fit: {self.bits} bits need {self.bits} principal components, but PCA of "
                f"{n_samples} training samples with {n_features} features gives at most "
                f"{min(n_samples, n_features)}: use fewer bits or more samples/features"
            )
        pca = PCA(n_components=self.bits, random_state=self.seed).fit(centred)
        projected = centred @ pca.components_.T  # V: (n, bits); centred already has zero mean
        rotation, losses = itq_rotation(projected, self.iterations, np.random.default_rng(self.seed))
        self.pca_ = pca
        self.rotation_ = rotation
        self.quantization_loss_ = losses
        return pca.components_.T @ rotation


def itq_rotation(
    projected: np.ndarray, iterations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """ITQ's alternation on PCA projections V ``(n, c)``: the rotation R ``(c, c)`` and the loss per iteration.

    R starts as a random orthogonal matrix from ``rng``; each iteration sets B = sign(V R)
    (0 -> -1), then R = argmin over orthogonal R of ``||B - V R||²_F``, which with
    Bᵀ V = U S Wᵀ is W Uᵀ (orthogonal Procrustes), and records ``||sign(V R) - V R||²_F``
    for the new R.  Each step minimises the same loss over one variable, so the losses
    never increase.  :class:`ITQ` is PCA followed by this; any ``c >= 1`` works here.
    """
    rotation = _random_rotation(rng, projected.shape[1])
    signs = np.where(projected @ rotation > 0, 1.0, -1.0)
    losses = np.empty(iterations)
    for step in range(iterations):
        left, _, right_t = np.linalg.svd(signs.T @ projected)
        rotation = right_t.T @ left.T
        rotated = projected @ rotation
        signs = np.where(rotated > 0, 1.0, -1.0)
        losses[step] = np.square(signs - rotated).sum()
    return rotation, losses


def _random_rotation(rng: np.random.Generator, size: int) -> np.ndarray:
    """A Haar-uniform random orthogonal ``(size, size)`` matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


register_method(Method(
    "lsh", "LSH", "Charikar. Similarity estimation techniques from rounding algorithms. STOC 2002",
    build_shallow=lambda bits, seed: LSH(bits, seed=seed),
))
register_method(Method(
    "itq", "ITQ", "Gong & Lazebnik. Iterative quantization: a Procrustean approach to learning binary codes. CVPR 2011",
    build_shallow=lambda bits, seed: ITQ(bits, seed=seed),
    paper_cifar10={12: 0.1620, 24: 0.1692, 32: 0.1725, 48: 0.1754},
))
