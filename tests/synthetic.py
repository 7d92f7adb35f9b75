"""Synthetic feature sets and the code contract shared by the shallow-method tests
(imported by name: pytest puts tests/ on the path)."""

import numpy as np

from dahp.codes import unpack_codes


def clustered(seed: int = 0, clusters: int = 5, per_cluster: int = 200, dims: int = 64, separation: float = 0.7,
              noise_dims: int = 0, noise_scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (unit noise, centres ~ N(0, separation²)), label = cluster, shuffled.

    ``noise_dims`` extra dimensions of pure noise with standard deviation ``noise_scale``
    dominate the variance without carrying any label information."""
    rng = np.random.default_rng(seed)
    centres = separation * rng.standard_normal((clusters, dims))
    labels = np.repeat(np.arange(clusters), per_cluster)
    features = centres[labels] + rng.standard_normal((len(labels), dims))
    features = np.hstack([features, noise_scale * rng.standard_normal((len(labels), noise_dims))])
    order = rng.permutation(len(labels))
    return features[order], labels[order]


def assert_packed_codes(model, query: np.ndarray, bits: int) -> None:
    """``encode`` gives packed uint8 rows whose bits are exactly ``encode_real > 0``, zero-padded."""
    codes = model.encode(query)
    assert codes.dtype == np.uint8
    assert codes.shape == (len(query), (bits + 7) // 8)
    real = model.encode_real(query)
    assert real.shape == (len(query), bits)
    np.testing.assert_array_equal(unpack_codes(codes, bits), real > 0)
    if bits % 8:
        assert not np.any(codes[:, -1] & ((1 << (8 - bits % 8)) - 1))  # zero padding
