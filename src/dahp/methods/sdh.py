"""SDH: Supervised Discrete Hashing (Shen, Shen, Liu & Shen, CVPR 2015) on fixed features.

The supervised shallow baseline: like LSH and ITQ it hashes fixed feature vectors,
but it learns from the training labels, so it separates what supervision alone buys
from what training a network adds.

SDH maps a sample to m RBF anchor features φ(x) = exp(-||x - a_j||² / (2σ²)) and
learns codes B ∈ {-1, 1}^{c×n}, a linear classifier W (c×k) on the codes and a hash
projection P (m×c) by

    min_{B,W,P} ||Y - Wᵀ B||² + λ||W||² + ν||B - Pᵀ φ(X)||²,

with Y the (k×n) 0/1 label matrix.  It alternates three exact block minimisations:
W = (B Bᵀ + λI)⁻¹ B Yᵀ (ridge regression), P = (φφᵀ + ρI)⁻¹ φ Bᵀ (ridge regression;
ρ is the reference code's ``Fmap.lambda``), and B by discrete cyclic coordinate
descent (DCC), one bit (row of B) at a time in closed form: with Q = W Y + ν Pᵀφ(X),
z the row, q its row of Q, v its row of W and B', W' the other rows,
z = sign(q - B'ᵀ W' v).  New samples get bit l = [p_lᵀ (φ(x) - mean φ) > 0].
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ..codes import check_bits, pack_codes
from ..errors import DahpError
from .registry import Method, register_method
from .shallow import check_features, check_int

_BLOCK_ELEMENTS = 1 << 22  # float64 entries per temporary (32 MB) when computing φ block by block


class SDH:
    """Supervised Discrete Hashing (Shen, Shen, Liu & Shen, CVPR 2015), the L2-loss variant.

    ``fit(features, labels)`` takes ``labels`` as an (n, k) multi-hot 0/1 array or a 1-D
    integer class vector (one-hot encoded over its distinct values).  With
    ``numpy.random.default_rng(seed)`` it draws ``anchors`` training rows (without
    replacement, capped at n) as RBF anchors, then B₀ = sign of a standard normal
    (c, n) draw (0 -> -1).  As in the authors' code, W and P are first fitted to B₀;
    each of ``iterations`` outer iterations then runs the B-step (at most ``dcc_sweeps``
    DCC sweeps over the bits, stopping early at a fixed point), the W-step and the
    P-step (see the module docstring for the equations).  ``objective_[t]`` is

        ||Y - Wᵀ B||² + λ||W||² + ν(||B - Pᵀ φ||² + ρ||P||²)

    after iteration t, where ρ = ``p_ridge``: the paper's objective plus the ridge
    term the P-step solves, so every step is an exact minimisation of this one value
    and it never increases.  Defaults are those of the authors' demo: λ = ``lam`` = 1,
    ν = ``nu`` = 1e-5, ρ = 1e-2, 5 outer iterations, 1000 anchors, at most 10 DCC sweeps.

    Deviations from the authors' MATLAB code:

    * σ: their demo uses σ = 0.4 on unit-normalised features; ours are raw pixels or
      pooled CNN features, so σ = sqrt(mean squared distance between training rows
      and anchors), the data-driven rule left commented out in their demo.
    * φ is centred with the mean of the training φ (``phi_mean_``, also subtracted at
      encode time) instead of appending a constant-1 column whose weight the P ridge
      also penalises.
    * DCC ties: where q - B'ᵀW'v is exactly 0 the bit keeps its current value (MATLAB's
      ``sign`` writes 0 into B).  The B-step starts from the current B, not from
      B = 0 as theirs does, so each bit update is an exact minimisation and the
      objective cannot increase.
    * The hash function is [projection > 0]: a projection of exactly 0 gives bit 0,
      the rule of :func:`dahp.codes.pack_codes`.

    Attributes after ``fit``: ``anchors_`` (m, n_features), ``sigma_``, ``phi_mean_`` (m,),
    ``projection_`` (m, bits) = P, ``classifier_`` (bits, k) = W, ``objective_``
    (iterations,), ``n_features_in_``.
    """

    def __init__(
        self,
        bits: int,
        anchors: int = 1000,
        lam: float = 1.0,
        nu: float = 1e-5,
        p_ridge: float = 1e-2,
        iterations: int = 5,
        dcc_sweeps: int = 10,
        seed: int = 0,
    ) -> None:
        self.bits = check_bits(check_int(bits, "bits", 1))
        self.anchors = check_int(anchors, "anchors", 1)
        self.lam = _check_positive(lam, "lam")
        self.nu = _check_positive(nu, "nu")
        self.p_ridge = _check_positive(p_ridge, "p_ridge")
        self.iterations = check_int(iterations, "iterations", 1)
        self.dcc_sweeps = check_int(dcc_sweeps, "dcc_sweeps", 1)
        self.seed = check_int(seed, "seed", 0)
        self.anchors_: np.ndarray | None = None
        self.sigma_: float | None = None
        self.phi_mean_: np.ndarray | None = None
        self.projection_: np.ndarray | None = None
        self.classifier_: np.ndarray | None = None
        self.objective_: np.ndarray | None = None
        self.n_features_in_: int | None = None

    def __repr__(self) -> str:
        params = {
            "bits": self.bits, "anchors": self.anchors, "lam": self.lam, "nu": self.nu, "p_ridge": self.p_ridge,
            "iterations": self.iterations, "dcc_sweeps": self.dcc_sweeps, "seed": self.seed,
        }
        return f"SDH({', '.join(f'{name}={value!r}' for name, value in params.items())})"

    def fit(self, features: np.ndarray, labels: np.ndarray | None = None) -> SDH:
        """Learn anchors, σ, W and P from training rows and their labels; returns ``self``.

        ``labels`` defaults to ``None`` only to match the shallow-encoder signature:
        SDH is supervised and refuses to fit without them."""
        array = check_features(features, "SDH.fit")
        n_samples = array.shape[0]
        if n_samples < 2:
            raise DahpError(f"SDH.fit: need at least 2 training samples, got {n_samples}")
        targets = label_matrix(labels, n_samples, "SDH.fit")
        rng = np.random.default_rng(self.seed)
        anchors = array[rng.choice(n_samples, size=min(self.anchors, n_samples), replace=False)]
        sigma = rbf_bandwidth(array, anchors)
        phi = np.empty((n_samples, len(anchors)))
        for rows in _row_blocks(array.shape, len(anchors)):
            phi[rows] = rbf_features(array[rows], anchors, sigma)
        phi_mean = phi.mean(axis=0)
        phi -= phi_mean
        codes = np.where(rng.standard_normal((self.bits, n_samples)) > 0, 1.0, -1.0)
        projection, classifier, objective = self._alternate(phi, targets, codes)
        self.anchors_, self.sigma_, self.phi_mean_ = anchors, sigma, phi_mean
        self.projection_, self.classifier_, self.objective_ = projection, classifier, objective
        self.n_features_in_ = array.shape[1]
        return self

    def _alternate(
        self, phi: np.ndarray, targets: np.ndarray, codes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The SDH alternation on centred φ (n, m): returns P, W and the objective per iteration."""
        gram = phi.T @ phi
        gram[np.diag_indices_from(gram)] += self.p_ridge
        factor = cho_factor(gram)  # φφᵀ + ρI is the same every P-step: factor it once
        classifier = _classifier_step(codes, targets, self.lam)
        projection = cho_solve(factor, phi.T @ codes.T)
        objective = np.empty(self.iterations)
        for step in range(self.iterations):
            fitted = (phi @ projection).T  # Pᵀφ(X), (c, n)
            codes = dcc_sweeps(codes, classifier, classifier @ targets + self.nu * fitted, self.dcc_sweeps)
            classifier = _classifier_step(codes, targets, self.lam)
            projection = cho_solve(factor, phi.T @ codes.T)
            fitted = (phi @ projection).T
            objective[step] = sdh_objective(
                codes, targets, classifier, fitted, projection, self.lam, self.nu, self.p_ridge
            )
        return projection, classifier, objective

    def encode_real(self, features: np.ndarray) -> np.ndarray:
        """``(n, bits)`` float64 projections Pᵀ(φ(x) - phi_mean_); their signs are the codes."""
        if self.projection_ is None or self.anchors_ is None or self.phi_mean_ is None or self.sigma_ is None:
            raise DahpError("SDH is not fitted: call fit(training_features, training_labels) before encoding")
        array = check_features(features, "SDH.encode")
        if array.shape[1] != self.n_features_in_:
            raise DahpError(
                f"SDH.encode: features have {array.shape[1]} dimensions but the hasher was "
                f"fitted on {self.n_features_in_}"
            )
        projections = np.empty((array.shape[0], self.bits))
        for rows in _row_blocks(array.shape, len(self.anchors_)):
            phi = rbf_features(array[rows], self.anchors_, self.sigma_)
            projections[rows] = (phi - self.phi_mean_) @ self.projection_
        return projections

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Packed ``(n, ceil(bits/8))`` uint8 codes: bit 1 where the projection is ``> 0``."""
        return pack_codes(self.encode_real(features))


def dcc_bit_update(codes: np.ndarray, classifier: np.ndarray, target: np.ndarray, bit: int) -> np.ndarray:
    """DCC's closed-form minimiser of the SDH objective over row ``bit`` of B, the other rows fixed.

    ``codes`` B (c, n) in ±1, ``classifier`` W (c, k), ``target`` Q = W Y + ν Pᵀφ(X) (c, n).
    Over B the objective is const - 2 tr(Bᵀ Q) + ||Wᵀ B||² (||B||² is fixed), and
    in row z it is linear: 2 zᵀ(B'ᵀ W' v - q) + const, minimised by
    z = sign(q - B'ᵀ W' v).  Where that is exactly 0 every value is optimal and the
    current bit is kept.  Returns the new row (n,); ``codes`` is not modified.
    """
    coupling = classifier @ classifier[bit]  # w_j · v for every bit j
    coupling[bit] = 0.0  # B'ᵀ W' v leaves bit l itself out
    field = target[bit] - coupling @ codes
    return np.where(field > 0, 1.0, np.where(field < 0, -1.0, codes[bit]))


def dcc_sweeps(codes: np.ndarray, classifier: np.ndarray, target: np.ndarray, sweeps: int) -> np.ndarray:
    """Up to ``sweeps`` passes of :func:`dcc_bit_update` over all bits in order, stopping
    early when a pass changes nothing (a fixed point: later passes would not either).
    Returns new codes; ``codes`` is not modified."""
    codes = codes.copy()
    for _ in range(sweeps):
        changed = False
        for bit in range(len(codes)):
            row = dcc_bit_update(codes, classifier, target, bit)
            changed = changed or not np.array_equal(row, codes[bit])
            codes[bit] = row
        if not changed:
            break
    return codes


def sdh_objective(
    codes: np.ndarray, targets: np.ndarray, classifier: np.ndarray, fitted: np.ndarray,
    projection: np.ndarray, lam: float, nu: float, p_ridge: float,
) -> float:
    """||Y - Wᵀ B||² + λ||W||² + ν(||B - F||² + ρ||P||²) with F = Pᵀφ(X) (c, n) given as ``fitted``."""
    classification = np.square(targets - classifier.T @ codes).sum() + lam * np.square(classifier).sum()
    return float(classification + nu * (np.square(codes - fitted).sum() + p_ridge * np.square(projection).sum()))


def _classifier_step(codes: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """W = (B Bᵀ + λI)⁻¹ B Yᵀ, the ridge regression of the labels on the codes, (c, k)."""
    return np.linalg.solve(codes @ codes.T + lam * np.eye(len(codes)), codes @ targets.T)


def rbf_bandwidth(features: np.ndarray, anchors: np.ndarray) -> float:
    """σ = sqrt(mean over rows i and anchors j of ||x_i - a_j||²).

    About the rows' mean x̄ the cross terms average to zero, so the mean is exactly
    mean ||x_i - x̄||² + mean ||a_j - x̄||²: no n × m distance matrix is needed."""
    centre = features.mean(axis=0)
    mean_square = np.square(features - centre).sum(axis=1).mean() + np.square(anchors - centre).sum(axis=1).mean()
    if not mean_square > 0:
        raise DahpError("SDH.fit: all training rows are identical, so the RBF features carry no information")
    return float(np.sqrt(mean_square))


def rbf_features(features: np.ndarray, anchors: np.ndarray, sigma: float) -> np.ndarray:
    """φ (n, m) = exp(-||x - a_j||² / (2σ²)), squared distances as ||x||² + ||a||² - 2 x·a clamped at 0.

    Both sides are first shifted by the anchors' mean (distances do not change) so the
    expansion does not cancel two large norms when the features sit far from the origin."""
    centre = anchors.mean(axis=0)
    shifted, shifted_anchors = features - centre, anchors - centre
    squared = shifted @ shifted_anchors.T
    squared *= -2.0
    squared += np.square(shifted).sum(axis=1)[:, None]
    squared += np.square(shifted_anchors).sum(axis=1)[None, :]
    np.maximum(squared, 0.0, out=squared)
    squared *= -1.0 / (2.0 * sigma * sigma)
    return np.exp(squared, out=squared)


def _row_blocks(shape: tuple[int, int], n_anchors: int) -> Iterator[slice]:
    """Row slices small enough that a block's features and its (rows, anchors) φ stay near 32 MB."""
    n_rows, n_features = shape
    size = max(1, _BLOCK_ELEMENTS // max(n_features, n_anchors))
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


def label_matrix(labels: np.ndarray | None, n_samples: int, who: str) -> np.ndarray:
    """The (k, n) float64 0/1 label matrix Y from (n, k) multi-hot labels or a 1-D class vector.

    A 1-D vector is one-hot encoded over its distinct values (in sorted order), so
    classes 0..k-1 give the same Y as their one-hot form.  At least 2 classes must be
    present: with one, every code explains the labels equally and nothing is learned."""
    if labels is None:
        raise DahpError(f"{who}: SDH is supervised: pass the training labels, (n, k) multi-hot or (n,) classes")
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf" or array.ndim not in (1, 2):
        raise DahpError(
            f"{who}: labels must be an (n, k) multi-hot 0/1 array or an (n,) integer class vector, "
            f"got shape {array.shape} dtype {array.dtype}"
        )
    if array.shape[0] != n_samples:
        raise DahpError(f"{who}: labels have {array.shape[0]} rows but features have {n_samples}")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise DahpError(f"{who}: labels contain {int(np.isnan(array).sum())} NaN values")
    targets = _one_hot(array, who) if array.ndim == 1 else _multi_hot(array, who)
    present = int((targets.sum(axis=1) > 0).sum())
    if present < 2:
        raise DahpError(f"{who}: labels need at least 2 classes present, got {present}")
    return targets


def _one_hot(classes: np.ndarray, who: str) -> np.ndarray:
    integral = np.isfinite(classes) & (classes == np.round(classes))
    if not integral.all():
        raise DahpError(f"{who}: 1-D labels must be integer class indices, got {classes[~integral][0].item()!r}")
    values, index = np.unique(classes, return_inverse=True)
    targets = np.zeros((len(values), len(classes)))
    targets[index, np.arange(len(classes))] = 1.0
    return targets


def _multi_hot(labels: np.ndarray, who: str) -> np.ndarray:
    binary = (labels == 0) | (labels == 1)
    if not binary.all():
        raise DahpError(f"{who}: multi-hot labels must contain only 0 and 1, got {labels[~binary][0].item()!r}")
    return labels.T.astype(np.float64)


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise DahpError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


register_method(Method(
    "sdh", "SDH", "Shen, Shen, Liu & Shen. Supervised discrete hashing. CVPR 2015",
    build_shallow=lambda bits, seed: SDH(bits, seed=seed),
    paper_cifar10={12: 0.2850, 24: 0.3290, 32: 0.3410, 48: 0.3560},
))
