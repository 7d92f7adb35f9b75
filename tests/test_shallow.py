import numpy as np
import pytest
from synthetic import assert_packed_codes, clustered

from dahp.codes import unpack_codes
from dahp.errors import DahpError
from dahp.methods.shallow import ITQ, LSH, itq_rotation
from dahp.metrics import mean_average_precision

HASHERS = [LSH, ITQ]


@pytest.fixture(scope="module")
def split():
    features, labels = clustered()
    return features[:100], labels[:100], features[100:], labels[100:]  # queries, database (= training set)


def retrieval_map(hasher, split) -> float:
    query, query_labels, database, database_labels = split
    hasher.fit(database)
    return mean_average_precision(
        hasher.encode(query), hasher.encode(database), query_labels, database_labels, hasher.bits, workers=1
    )


def test_codes_retrieve_same_cluster_far_above_chance_and_itq_beats_lsh(split) -> None:
    chance = 1 / 5  # 5 equal clusters: a random ranking's mAP is about the relevant fraction
    lsh = retrieval_map(LSH(32), split)
    itq = retrieval_map(ITQ(32), split)
    assert lsh > 2 * chance
    assert itq > 0.75
    assert itq > lsh + 0.2


@pytest.mark.parametrize("bits", [8, 12, 24])
@pytest.mark.parametrize("hasher", HASHERS)
def test_encode_gives_packed_uint8_codes(hasher, bits: int, split) -> None:
    query, _, database, _ = split
    assert_packed_codes(hasher(bits).fit(database), query, bits)


@pytest.mark.parametrize("hasher", HASHERS)
def test_deterministic_under_a_seed(hasher, split) -> None:
    query, _, database, _ = split
    first = hasher(16, seed=3).fit(database)
    again = hasher(16, seed=3).fit(database)
    other = hasher(16, seed=4).fit(database)
    np.testing.assert_array_equal(first.encode(query), again.encode(query))
    np.testing.assert_array_equal(first.projection_, again.projection_)
    assert not np.allclose(first.projection_, other.projection_)


@pytest.mark.parametrize("hasher", HASHERS)
def test_codes_are_linear_threshold_at_the_training_mean(hasher, split) -> None:
    """Reflecting x through the training mean flips every bit; scaling x - mean by c > 0 keeps them."""
    query, _, database, _ = split
    model = hasher(12).fit(database)
    mean = database.mean(axis=0)
    bits = unpack_codes(model.encode(query), 12)
    np.testing.assert_allclose(model.mean_, mean)
    np.testing.assert_array_equal(unpack_codes(model.encode(2 * mean - query), 12), 1 - bits)
    np.testing.assert_array_equal(unpack_codes(model.encode(mean + 3.5 * (query - mean)), 12), bits)


def test_lsh_projects_centred_features_on_seeded_gaussian_directions(split) -> None:
    query, _, database, _ = split
    model = LSH(24, seed=7).fit(database)
    directions = np.random.default_rng(7).standard_normal((64, 24))
    np.testing.assert_array_equal(model.projection_, directions)
    np.testing.assert_allclose(model.encode_real(query), (query - database.mean(axis=0)) @ directions)


def test_itq_quantization_loss_never_increases_and_matches_the_final_codes(split) -> None:
    _, _, database, _ = split
    model = ITQ(16, iterations=50).fit(database)
    loss = model.quantization_loss_
    assert loss.shape == (50,)
    assert np.all(np.diff(loss) <= 1e-9 * loss[0])
    assert loss[-1] < 0.95 * loss[0]  # it does optimise, not just stand still
    rotated = model.encode_real(database)  # V R on the training set
    np.testing.assert_allclose(loss[-1], np.square(np.where(rotated > 0, 1.0, -1.0) - rotated).sum())


def test_itq_rotation_is_orthogonal_and_composes_the_projection(split) -> None:
    _, _, database, _ = split
    model = ITQ(16).fit(database)
    rotation = model.rotation_
    assert rotation.shape == (16, 16)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(model.projection_, model.pca_.components_.T @ rotation)


def test_itq_without_iterations_is_pca_with_a_random_rotation(split) -> None:
    _, _, database, _ = split
    model = ITQ(8, iterations=0).fit(database)
    assert model.quantization_loss_.shape == (0,)
    np.testing.assert_allclose(model.rotation_ @ model.rotation_.T, np.eye(8), atol=1e-10)


def test_itq_rotation_maps_a_tilted_square_onto_the_quadrant_corners() -> None:
    """By hand: points at (±√2, 0), (0, ±√2) lie one per quadrant under any generic rotation, so the first
    B = sign(V R) holds the four corners (±1, ±1) in the same cyclic order, and Procrustes then turns the
    square exactly onto them (a rotation by 45° modulo 90°): zero loss, one quadrant per point."""
    root2 = np.sqrt(2.0)
    square = np.array([[root2, 0.0], [0.0, root2], [-root2, 0.0], [0.0, -root2]])
    projected = np.repeat(square, 5, axis=0)
    for seed in range(5):
        rotation, loss = itq_rotation(projected, 3, np.random.default_rng(seed))
        np.testing.assert_allclose(loss, 0.0, atol=1e-12)
        np.testing.assert_allclose(np.abs(rotation), np.full((2, 2), 1 / root2))
        corners = square @ rotation
        np.testing.assert_allclose(np.abs(corners), 1.0)
        assert len({tuple(np.sign(corner)) for corner in corners}) == 4


def test_itq_keeps_only_the_high_variance_subspace() -> None:
    """Features 0-7 vary with std 1-8, features 8-19 with std 1e-4: PCA with 8 components is the first 8 axes,
    so the projection ignores the rest and perturbing them does not change a code."""
    rng = np.random.default_rng(0)
    scales = np.concatenate([np.arange(8, 0, -1.0), np.full(12, 1e-4)])
    features = rng.standard_normal((400, 20)) * scales + 5.0
    model = ITQ(8).fit(features)
    assert np.abs(model.projection_[8:]).max() < 1e-3
    assert np.all(np.linalg.norm(model.pca_.components_[:, :8], axis=1) > 0.99)  # unit rows inside the 8 axes
    nudged = features.copy()
    nudged[:, 8:] += 1e-3 * rng.standard_normal((400, 12))
    changed = np.mean(np.any(model.encode(nudged) != model.encode(features), axis=1))
    assert changed < 0.02


@pytest.mark.parametrize("hasher", HASHERS)
def test_integer_features_are_accepted_as_floats(hasher) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(50, 32), dtype=np.uint8)
    as_ints = hasher(8).fit(pixels)
    as_floats = hasher(8).fit(pixels.astype(np.float64))
    np.testing.assert_array_equal(as_ints.encode(pixels), as_floats.encode(pixels.astype(np.float64)))


# ----- errors -----


@pytest.mark.parametrize("bits", [4, 7, 257, 1000])
@pytest.mark.parametrize("hasher", HASHERS)
def test_bits_out_of_range(hasher, bits: int) -> None:
    with pytest.raises(DahpError, match=f"between 8 and 256, got {bits}"):
        hasher(bits)


@pytest.mark.parametrize("bits", [8.0, "16", True, None])
@pytest.mark.parametrize("hasher", HASHERS)
def test_bits_must_be_an_integer(hasher, bits) -> None:
    with pytest.raises(DahpError, match="bits must be an integer"):
        hasher(bits)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_must_be_a_non_negative_integer(seed) -> None:
    with pytest.raises(DahpError, match="seed must be an integer >= 0"):
        LSH(8, seed=seed)


@pytest.mark.parametrize("iterations", [-1, 2.5])
def test_itq_iterations_must_be_a_non_negative_integer(iterations) -> None:
    with pytest.raises(DahpError, match="iterations must be an integer >= 0"):
        ITQ(8, iterations=iterations)


def test_itq_more_bits_than_samples_or_features_names_both() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DahpError, match=r"16 bits .* 20 training samples with 10 features gives at most 10"):
        ITQ(16).fit(rng.standard_normal((20, 10)))
    with pytest.raises(DahpError, match=r"16 bits .* 12 training samples with 64 features gives at most 12"):
        ITQ(16).fit(rng.standard_normal((12, 64)))
    ITQ(16).fit(rng.standard_normal((16, 16)))  # exactly enough is fine


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.zeros(64), r"2-D array \(n_samples, n_features\), got shape \(64,\)"),
        (np.zeros((4, 8, 8)), r"2-D array .* got shape \(4, 8, 8\)"),
        (np.zeros((0, 64)), r"at least one row and one column, got shape \(0, 64\)"),
        (np.zeros((30, 0)), r"at least one row and one column, got shape \(30, 0\)"),
        (np.ones((30, 64), dtype=bool), "real-valued float array, got dtype bool"),
        (np.ones((30, 64), dtype=complex), "real-valued float array, got dtype complex128"),
        (np.full((30, 64), "a"), "real-valued float array, got dtype <U1"),
        (np.ones((1, 64)), "at least 2 training samples"),
    ],
)
@pytest.mark.parametrize("hasher", HASHERS)
def test_fit_rejects_bad_features(hasher, features, message: str) -> None:
    with pytest.raises(DahpError, match=message):
        hasher(8).fit(features)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("hasher", HASHERS)
def test_non_finite_features_are_rejected_in_fit_and_encode(hasher, bad: float, split) -> None:
    query, _, database, _ = split
    broken = database.copy()
    broken[7, 3] = bad
    with pytest.raises(DahpError, match=r"fit: features contain 1 NaN or infinite values \(first in row 7\)"):
        hasher(8).fit(broken)
    model = hasher(8).fit(database)
    broken_query = query.copy()
    broken_query[2, 0] = bad
    with pytest.raises(DahpError, match=r"encode: features contain 1 NaN or infinite values \(first in row 2\)"):
        model.encode(broken_query)


@pytest.mark.parametrize("hasher", HASHERS)
def test_encode_before_fit(hasher, split) -> None:
    query = split[0]
    for encode in (hasher(8).encode, hasher(8).encode_real):
        with pytest.raises(DahpError, match=f"{hasher.__name__} is not fitted: call fit"):
            encode(query)


@pytest.mark.parametrize("hasher", HASHERS)
def test_encode_feature_dimension_must_match_fit(hasher, split) -> None:
    query, _, database, _ = split
    model = hasher(8).fit(database)
    with pytest.raises(DahpError, match="features have 63 dimensions but the hasher was fitted on 64"):
        model.encode(query[:, :63])
    with pytest.raises(DahpError, match=r"2-D array .* got shape \(64,\)"):
        model.encode(query[0])


def test_repr_shows_the_parameters() -> None:
    assert repr(LSH(16, seed=2)) == "LSH(bits=16, seed=2)"
    assert repr(ITQ(32)) == "ITQ(bits=32, iterations=50, seed=0)"
