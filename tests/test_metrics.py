from fractions import Fraction

import numpy as np
import pytest

from dahp.codes import pack_codes
from dahp.errors import DahpError
from dahp.metrics import mean_average_precision, relevance


def reference_map(query_bits, database_bits, query_labels, database_labels, top_k=None) -> float:
    """Pure-Python mAP@K: rank by (distance, database index), normalise by hits."""
    total = 0.0
    for q_code, q_label in zip(query_bits.tolist(), query_labels.tolist()):
        distances = [sum(a != b for a, b in zip(q_code, d_code)) for d_code in database_bits.tolist()]
        order = sorted(range(len(distances)), key=lambda j: (distances[j], j))
        if top_k is not None:
            order = order[:top_k]
        hits, precision_sum = 0, 0.0
        for rank, j in enumerate(order, start=1):
            d_label = database_labels[j].tolist()
            if isinstance(q_label, list):
                is_relevant = any(a and b for a, b in zip(q_label, d_label))
            else:
                is_relevant = q_label == d_label
            if is_relevant:
                hits += 1
                precision_sum += hits / rank
        total += precision_sum / hits if hits else 0.0
    return total / len(query_bits)


def random_case(seed: int, multi_label: bool, bits: int = 4, n_query: int = 13, n_database: int = 50):
    rng = np.random.default_rng(seed)
    query_bits = rng.integers(0, 2, size=(n_query, bits))
    database_bits = rng.integers(0, 2, size=(n_database, bits))
    if multi_label:
        query_labels = (rng.random((n_query, 5)) < 0.25).astype(np.uint8)
        database_labels = (rng.random((n_database, 5)) < 0.25).astype(np.uint8)
    else:
        query_labels = rng.integers(0, 4, size=n_query)
        database_labels = rng.integers(0, 4, size=n_database)
    return query_bits, database_bits, query_labels, database_labels


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("top_k", [1, 5, None, 80])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_with_many_ties(multi_label: bool, top_k, seed: int) -> None:
    qb, db, ql, dl = random_case(seed, multi_label)
    expected = reference_map(qb, db, ql, dl, top_k)
    got = mean_average_precision(pack_codes(qb), pack_codes(db), ql, dl, bits=4, top_k=top_k, chunk_size=3)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bits", [12, 48])
def test_matches_reference_longer_codes(bits: int) -> None:
    qb, db, ql, dl = random_case(7, False, bits=bits, n_query=10, n_database=60)
    expected = reference_map(qb, db, ql, dl, 20)
    got = mean_average_precision(pack_codes(qb), pack_codes(db), ql, dl, bits=bits, top_k=20, chunk_size=4)
    assert got == pytest.approx(expected, abs=1e-12)


def test_chunk_size_does_not_change_result() -> None:
    qb, db, ql, dl = random_case(3, True, n_query=17)
    args = (pack_codes(qb), pack_codes(db), ql, dl, 4)
    results = {mean_average_precision(*args, chunk_size=c) for c in (1, 4, 17, 256)}
    assert max(results) - min(results) < 1e-12


def test_hand_computed_value() -> None:
    # Distances 2, 0, 1 -> ranking: item 1 (relevant), item 2 (not), item 0 (relevant).
    # AP = (1/1 + 2/3) / 2 = 5/6.
    query = pack_codes(np.array([[1, 1, 0, 0]]))
    database = pack_codes(np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]))
    got = mean_average_precision(query, database, np.array([0]), np.array([0, 0, 1]), bits=4)
    assert got == pytest.approx(float(Fraction(5, 6)), abs=1e-15)
    # Top 2: only item 1 is a hit -> AP@2 = 1.
    assert mean_average_precision(query, database, np.array([0]), np.array([0, 0, 1]), bits=4, top_k=2) == 1.0


def test_ties_are_broken_by_database_order() -> None:
    # All three items are at distance 0 from the query; only one is relevant.
    query = pack_codes(np.array([[1, 0, 1]]))
    database = pack_codes(np.array([[1, 0, 1]] * 3))
    query_labels = np.array([0])
    relevant_first = mean_average_precision(query, database, query_labels, np.array([0, 1, 1]), bits=3)
    relevant_last = mean_average_precision(query, database, query_labels, np.array([1, 1, 0]), bits=3)
    assert relevant_first == 1.0
    assert relevant_last == pytest.approx(1 / 3, abs=1e-15)


def test_query_without_relevant_item_counts_as_zero() -> None:
    codes = pack_codes(np.array([[1, 0], [0, 1]]))
    got = mean_average_precision(codes, codes, np.array([0, 9]), np.array([0, 1]), bits=2)
    assert got == pytest.approx(0.5)
    # Relevant item exists but falls outside the top K: also 0.
    database = pack_codes(np.array([[1, 0], [0, 1]]))
    query = pack_codes(np.array([[1, 0]]))
    assert mean_average_precision(query, database, np.array([1]), np.array([0, 1]), bits=2, top_k=1) == 0.0


def test_perfect_codes_give_one() -> None:
    rng = np.random.default_rng(5)
    class_codes = np.array([[1, 1, 0, 0, 1, 0, 1, 0], [0, 0, 1, 1, 0, 1, 0, 1], [1, 0, 1, 0, 0, 1, 1, 1]])
    database_labels = rng.integers(0, 3, size=40)
    query_labels = rng.integers(0, 3, size=6)
    got = mean_average_precision(
        pack_codes(class_codes[query_labels]), pack_codes(class_codes[database_labels]),
        query_labels, database_labels, bits=8,
    )
    assert got == 1.0


def test_relevance_single_and_multi_label() -> None:
    np.testing.assert_array_equal(
        relevance(np.array([0, 2]), np.array([2, 0, 0])),
        [[False, True, True], [True, False, False]],
    )
    query = np.array([[1, 0, 1], [0, 0, 0]])
    database = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(relevance(query, database), [[True, False, True], [False, False, False]])


def test_validation_errors() -> None:
    codes = pack_codes(np.ones((3, 12)))
    labels = np.array([0, 1, 2])
    with pytest.raises(DahpError, match="query labels"):
        mean_average_precision(codes, codes, labels[:2], labels, bits=12)
    with pytest.raises(DahpError, match="database labels"):
        mean_average_precision(codes, codes, labels, labels[:2], bits=12)
    with pytest.raises(DahpError, match="at least one"):
        mean_average_precision(codes[:0], codes, labels[:0], labels, bits=12)
    with pytest.raises(DahpError, match="at least one"):
        mean_average_precision(codes, codes[:0], labels, labels[:0], bits=12)
    with pytest.raises(DahpError, match="top_k"):
        mean_average_precision(codes, codes, labels, labels, bits=12, top_k=0)
    with pytest.raises(DahpError, match="same form"):
        mean_average_precision(codes, codes, labels, np.eye(3), bits=12)
    with pytest.raises(DahpError, match="same form"):
        relevance(np.eye(3, 4), np.eye(3))
    with pytest.raises(DahpError, match="bytes per code"):
        mean_average_precision(codes, codes, labels, labels, bits=20)
    with pytest.raises(DahpError, match="width"):
        mean_average_precision(codes, pack_codes(np.ones((3, 20))), labels, labels, bits=12)
    with pytest.raises(DahpError, match="chunk_size"):
        mean_average_precision(codes, codes, labels, labels, bits=12, chunk_size=0)
