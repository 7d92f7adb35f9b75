import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from dahp.codes import pack_codes
from dahp.errors import DahpError
from dahp.metrics import (
    chance_levels,
    chance_map,
    evaluate,
    mean_average_precision,
    precision_at_n,
    precision_recall_by_radius,
    precision_recall_by_rank,
    precision_recall_within_radius,
    relevance,
)


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


def random_case(
    seed: int, multi_label: bool, bits: int = 4, n_query: int = 13, n_database: int = 50, label_density: float = 0.25
):
    rng = np.random.default_rng(seed)
    query_bits = rng.integers(0, 2, size=(n_query, bits))
    database_bits = rng.integers(0, 2, size=(n_database, bits))
    if multi_label:
        query_labels = (rng.random((n_query, 5)) < label_density).astype(np.uint8)
        database_labels = (rng.random((n_database, 5)) < label_density).astype(np.uint8)
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


# --- Tie-aware mAP, PR curves, P@N, precision within a radius, evaluate() --------------------------------------


def reference_rankings(query_bits, database_bits, query_labels, database_labels):
    """Per query: (distances, relevance flags) in database order, in pure Python."""
    out = []
    for q_code, q_label in zip(query_bits.tolist(), query_labels.tolist()):
        distances, flags = [], []
        for d_code, d_label in zip(database_bits.tolist(), database_labels.tolist()):
            distances.append(sum(a != b for a, b in zip(q_code, d_code)))
            if isinstance(q_label, list):
                flags.append(any(a and b for a, b in zip(q_label, d_label)))
            else:
                flags.append(q_label == d_label)
        out.append((distances, flags))
    return out


def ap_at_k(ranked_flags, k) -> Fraction:
    """AP@K of one ranked list of relevance flags, normalised by hits in the top K."""
    hits, total = 0, Fraction(0)
    for rank, flag in enumerate(ranked_flags[:k], start=1):
        if flag:
            hits += 1
            total += Fraction(hits, rank)
    return total / hits if hits else Fraction(0)


def tie_groups(distances, flags):
    """Relevance flags grouped by distance, groups in ascending distance, members in database order."""
    return [[f for d, f in zip(distances, flags) if d == value] for value in sorted(set(distances))]


def reference_expected_ap_by_enumeration(distances, flags, k) -> Fraction:
    """Average AP@K over ALL orderings of the tied items (every permutation of every tie group)."""
    groups = tie_groups(distances, flags)
    orderings = list(itertools.product(*(itertools.permutations(group) for group in groups)))
    return sum(ap_at_k([f for group in ordering for f in group], k) for ordering in orderings) / len(orderings)


def group_precision_sum(positions, before, relevant_before) -> Fraction:
    """Sum of precision@rank over relevant items at the given sorted 0-based positions of a group."""
    return sum((Fraction(relevant_before + i + 1, before + p + 1) for i, p in enumerate(positions)), Fraction(0))


def reference_expected_ap_by_arrangements(distances, flags, k) -> Fraction:
    """E[AP@K] for larger tie groups: enumerate the distinct relevant-position sets of each group.

    A uniformly random permutation of a group puts its r relevant items on a uniformly
    random r-subset of positions.  The sum of precisions is additive over groups and the
    groups are independent, so only the group straddling rank K (which fixes the
    normaliser) is enumerated jointly with the others' expected sums.
    """
    k = min(k, len(flags))  # K beyond the database: everything
    before, relevant_before, whole_sum = 0, 0, Fraction(0)
    for group in tie_groups(distances, flags):
        n, r = len(group), sum(group)
        if before + n >= k:  # the boundary group: enumerate its arrangements together with the normaliser
            taken = k - before
            expectation = Fraction(0)
            arrangements = list(itertools.combinations(range(n), r))
            for positions in arrangements:
                inside = [p for p in positions if p < taken]
                retrieved = relevant_before + len(inside)
                if retrieved:
                    expectation += (whole_sum + group_precision_sum(inside, before, relevant_before)) / retrieved
            return expectation / len(arrangements)
        arrangements = list(itertools.combinations(range(n), r))
        whole_sum += sum(
            (group_precision_sum(positions, before, relevant_before) for positions in arrangements), Fraction(0)
        ) / len(arrangements)
        before, relevant_before = before + n, relevant_before + r
    raise AssertionError("unreachable: the last group always reaches K")


def reference_radius(distances, flags, radius):
    inside = [f for d, f in zip(distances, flags) if d <= radius]
    n_relevant = sum(flags)
    precision = sum(inside) / len(inside) if inside else 0.0  # empty ball: precision 0
    recall = sum(inside) / n_relevant if n_relevant else 0.0
    return precision, recall


def reference_rank(distances, flags, n):
    order = sorted(range(len(distances)), key=lambda j: (distances[j], j))
    cutoff = min(n, len(order))
    hits = sum(flags[j] for j in order[:cutoff])
    n_relevant = sum(flags)
    return hits / cutoff, hits / n_relevant if n_relevant else 0.0


def tie_heavy_case(seed: int, multi_label: bool, bits: int, n_query: int = 11, n_database: int = 40):
    """Random codes with many ties; at least one query has no relevant database item."""
    query_bits, database_bits, query_labels, database_labels = random_case(
        seed, multi_label, bits, n_query, n_database, label_density=0.3
    )
    query_labels[0] = 0 if multi_label else 7  # no label / a class absent from the database
    return query_bits, database_bits, query_labels, database_labels


def packed(case):
    query_bits, database_bits, query_labels, database_labels = case
    return pack_codes(query_bits), pack_codes(database_bits), query_labels, database_labels, query_bits.shape[1]


CASES = [(seed, multi_label, bits) for seed, multi_label, bits in itertools.product((0, 1), (False, True), (4, 6))]


@pytest.mark.parametrize(("seed", "multi_label", "bits"), CASES)
@pytest.mark.parametrize("top_k", [1, 3, 10, 25, None])
def test_expected_map_matches_arrangement_reference(seed, multi_label, bits, top_k) -> None:
    case = tie_heavy_case(seed, multi_label, bits, n_database=30)  # tie groups of up to ~10: enumerable
    rankings = reference_rankings(*case)
    k = top_k or len(case[1])
    expected = sum(reference_expected_ap_by_arrangements(d, f, k) for d, f in rankings) / len(rankings)
    got = mean_average_precision(*packed(case), top_k=top_k, chunk_size=4, ties="expected")
    assert got == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_expected_map_equals_average_over_all_permutations(multi_label: bool, seed: int) -> None:
    case = tie_heavy_case(seed, multi_label, bits=2, n_query=4, n_database=7)
    rankings = reference_rankings(*case)
    for top_k in (1, 2, 3, 5, None, 10):
        k = top_k or 7
        enumerated = [reference_expected_ap_by_enumeration(d, f, k) for d, f in rankings]
        # The decomposed reference used for larger cases agrees with brute force here.
        assert enumerated == [reference_expected_ap_by_arrangements(d, f, k) for d, f in rankings]
        got = mean_average_precision(*packed(case), top_k=top_k, chunk_size=3, ties="expected")
        assert got == pytest.approx(float(sum(enumerated) / len(enumerated)), abs=1e-12)


@pytest.mark.parametrize("top_k", [1, 4, None])
def test_expected_map_equals_database_order_without_ties(top_k) -> None:
    # Against the all-zeros and all-ones queries, items with 0..8 ones are at distinct distances.
    rng = np.random.default_rng(4)
    database_bits = np.array([[1] * ones + [0] * (8 - ones) for ones in rng.permutation(9)])
    query_bits = np.array([[0] * 8, [1] * 8])
    args = (pack_codes(query_bits), pack_codes(database_bits), np.array([0, 1]), rng.integers(0, 2, size=9), 8)
    expected = mean_average_precision(*args, top_k=top_k, ties="expected")
    assert expected == pytest.approx(mean_average_precision(*args, top_k=top_k), abs=1e-12)


def test_hand_computed_fractions() -> None:
    # Query 0000.  Database: two items at distance 0 (relevant, then not), one relevant at distance 1,
    # one irrelevant at distance 4.  Database order ranks R, I, R, I.
    query = pack_codes(np.array([[0, 0, 0, 0]]))
    database = pack_codes(np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]))
    args = (query, database, np.array([0]), np.array([0, 1, 0, 1]), 4)
    # Database order: AP = (1/1 + 2/3) / 2 = 5/6.
    assert mean_average_precision(*args) == pytest.approx(float(Fraction(5, 6)), abs=1e-15)
    # Expected: the tied pair is R,I or I,R -> AP 5/6 or (1/2 + 2/3)/2 = 7/12; mean 17/24.
    assert mean_average_precision(*args, ties="expected") == pytest.approx(float(Fraction(17, 24)), abs=1e-15)
    # K=1: AP@1 is 1 or 0 -> 1/2.  K=2: R,I -> 1; I,R -> (1/2)/1 -> mean 3/4.
    assert mean_average_precision(*args, top_k=1, ties="expected") == pytest.approx(0.5, abs=1e-15)
    assert mean_average_precision(*args, top_k=2, ties="expected") == pytest.approx(0.75, abs=1e-15)
    # By radius: r=0 -> 1 of 2 retrieved, 1 of 2 relevant; r=1..3 -> 2 of 3; r=4 -> 2 of 4.
    precision, recall = precision_recall_by_radius(*args)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 2 / 3, 2 / 3, 1 / 2], atol=1e-15)
    np.testing.assert_allclose(recall, [1 / 2, 1, 1, 1, 1], atol=1e-15)
    assert precision_recall_within_radius(*args) == pytest.approx((2 / 3, 1.0), abs=1e-15)
    # P@N with database-order ties: R, I, R, I; N = 10 is capped at the 4 items.
    np.testing.assert_allclose(precision_at_n(*args, n_values=[1, 2, 3, 10]), [1, 1 / 2, 2 / 3, 1 / 2], atol=1e-15)
    _, rank_recall = precision_recall_by_rank(*args, n_values=[1, 2, 3, 10])
    np.testing.assert_allclose(rank_recall, [1 / 2, 1 / 2, 1, 1], atol=1e-15)


@pytest.mark.parametrize(("seed", "multi_label", "bits"), CASES)
def test_radius_and_rank_metrics_match_reference(seed, multi_label, bits) -> None:
    case = tie_heavy_case(seed, multi_label, bits)
    rankings = reference_rankings(*case)
    args = packed(case)
    assert any(sum(flags) == 0 for _, flags in rankings)  # a query with nothing relevant
    if bits == 6:
        assert any(min(distances) > 0 for distances, _ in rankings)  # an empty ball at radius 0

    precision, recall = precision_recall_by_radius(*args, chunk_size=4)
    assert precision.shape == recall.shape == (bits + 1,)
    for radius in range(bits + 1):
        per_query = [reference_radius(d, f, radius) for d, f in rankings]
        assert precision[radius] == pytest.approx(np.mean([p for p, _ in per_query]), abs=1e-12)
        assert recall[radius] == pytest.approx(np.mean([r for _, r in per_query]), abs=1e-12)
    for radius in (0, 2, 3, bits + 5):  # above bits: capped, everything is inside
        per_query = [reference_radius(d, f, radius) for d, f in rankings]
        got = precision_recall_within_radius(*args, radius=radius, chunk_size=3)
        assert got == pytest.approx(tuple(np.mean(per_query, axis=0)), abs=1e-12)

    n_values = [1, 2, 5, 17, 40, 41, 1000]
    per_query = np.array([[reference_rank(d, f, n) for n in n_values] for d, f in rankings])
    rank_precision, rank_recall = precision_recall_by_rank(*args, n_values=n_values, chunk_size=4)
    np.testing.assert_allclose(rank_precision, per_query[:, :, 0].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(rank_recall, per_query[:, :, 1].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(precision_at_n(*args, n_values=n_values, chunk_size=5), rank_precision, atol=1e-15)


def test_empty_radius_and_no_relevant_queries_count_as_zero() -> None:
    # Query 0 has nothing within radius 1 (all items at distance >= 3); query 1's class is absent.
    query = pack_codes(np.array([[1, 1, 1, 1], [0, 0, 0, 0]]))
    database = pack_codes(np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]))
    args = (query, database, np.array([0, 5]), np.array([0, 0, 1]), 4)
    # Query 0 precision 0 (empty ball), query 1 precision 0 (nothing relevant); both count.
    assert precision_recall_within_radius(*args, radius=1) == (0.0, 0.0)
    # Radius 3: query 0 retrieves items 1 (relevant) and 2 -> 1/2, recall 1/2; query 1 still 0, 0.
    assert precision_recall_within_radius(*args, radius=3) == pytest.approx((1 / 4, 1 / 4), abs=1e-15)
    # Query 0 ranks item 1 (R), item 2 (I) tied at 3, then item 0 (R): AP 5/6, expected 17/24; query 1: 0.
    assert mean_average_precision(*args) == pytest.approx(float(Fraction(5, 12)), abs=1e-15)
    assert mean_average_precision(*args, ties="expected") == pytest.approx(float(Fraction(17, 48)), abs=1e-15)


def test_evaluate_combines_all_metrics_and_is_json_serialisable() -> None:
    case = tie_heavy_case(3, True, 5, n_query=9)
    args = packed(case)
    n_values = [1, 3, 10, 100]
    result = evaluate(*args, top_k=10, radius=1, n_values=n_values, chunk_size=2, workers=2)
    assert json.loads(json.dumps(result)) == result
    assert (result["bits"], result["queries"], result["database"], result["top_k"], result["radius"]) == (5, 9, 40, 10, 1)
    assert result["map"] == pytest.approx(mean_average_precision(*args, top_k=10), abs=1e-12)
    assert result["map_expected"] == pytest.approx(mean_average_precision(*args, top_k=10, ties="expected"), abs=1e-12)
    precision, recall = precision_recall_by_radius(*args)
    assert result["pr_by_radius"]["radius"] == list(range(6))
    np.testing.assert_allclose(result["pr_by_radius"]["precision"], precision, atol=1e-12)
    np.testing.assert_allclose(result["pr_by_radius"]["recall"], recall, atol=1e-12)
    assert (result["precision_within_radius"], result["recall_within_radius"]) == pytest.approx(
        (precision[1], recall[1]), abs=1e-12
    )
    rank_precision, rank_recall = precision_recall_by_rank(*args, n_values=n_values)
    assert result["precision_at_n"]["n"] == result["pr_by_rank"]["n"] == n_values
    np.testing.assert_allclose(result["precision_at_n"]["precision"], rank_precision, atol=1e-12)
    np.testing.assert_allclose(result["pr_by_rank"]["recall"], rank_recall, atol=1e-12)
    assert {"ranking", "map_expected", "empty_radius", "no_relevant"} <= set(result["conventions"])
    # Chunking and threading do not change anything.
    again = evaluate(*args, top_k=10, radius=1, n_values=n_values, chunk_size=64, workers=1)
    for key in ("map", "map_expected", "precision_within_radius"):
        assert again[key] == pytest.approx(result[key], abs=1e-12)
    assert evaluate(*args)["top_k"] is None
    assert len(evaluate(*args)["precision_at_n"]["n"]) == 1000


def test_longer_codes_use_all_metrics() -> None:
    case = tie_heavy_case(8, False, 48, n_query=6, n_database=30)
    rankings = reference_rankings(*case)
    result = evaluate(*packed(case), top_k=7, n_values=[5, 30])
    expected = np.mean([float(reference_expected_ap_by_arrangements(d, f, 7)) for d, f in rankings])
    assert result["map_expected"] == pytest.approx(expected, abs=1e-12)
    assert result["precision_at_n"]["precision"][1] == pytest.approx(
        np.mean([reference_rank(d, f, 30)[0] for d, f in rankings]), abs=1e-12
    )


def test_new_validation_errors() -> None:
    codes = pack_codes(np.ones((3, 12)))
    labels = np.array([0, 1, 2])
    args = (codes, codes, labels, labels, 12)
    with pytest.raises(DahpError, match="ties"):
        mean_average_precision(*args, ties="random")
    for bad in ([], [0, 5], [1.5], [[1, 2]]):
        with pytest.raises(DahpError, match="n_values"):
            precision_at_n(*args, n_values=bad)
    with pytest.raises(DahpError, match="radius"):
        precision_recall_within_radius(*args, radius=-1)
    with pytest.raises(DahpError, match="workers"):
        evaluate(*args, workers=0)
    with pytest.raises(DahpError, match="top_k"):
        evaluate(*args, top_k=0)
    dirty = codes.copy()
    dirty[:, -1] |= 0b0001  # a padding bit beyond bit 12
    with pytest.raises(DahpError, match="beyond bit 12"):
        evaluate(codes, dirty, labels, labels, 12)


# --- chance: a uniformly random ranking ------------------------------------------------------------


def _average_over_permutations(query_labels, database_labels, top_k) -> float:
    """mAP@K averaged over every ordering of the database: the definition of a random ranking's mAP."""
    n = len(database_labels)
    zeros = np.zeros((1, 4), dtype=np.uint8)
    scores = [
        reference_map(zeros.repeat(len(query_labels), 0), zeros.repeat(n, 0), query_labels,
                      database_labels[list(order)], top_k)
        for order in itertools.permutations(range(n))
    ]
    return float(np.mean(scores))


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("top_k", [1, 3, None])
def test_chance_map_is_the_mean_over_all_orderings_of_the_database(multi_label: bool, top_k) -> None:
    _, _, query_labels, database_labels = random_case(5, multi_label, n_query=4, n_database=7, label_density=0.4)
    expected = _average_over_permutations(query_labels, database_labels, top_k)
    assert chance_map(query_labels, database_labels, top_k=top_k, chunk_size=3) == pytest.approx(expected, abs=1e-12)


def test_chance_map_closed_form_and_its_floor_of_about_r_over_n() -> None:
    # Ten balanced classes (CIFAR-10's shape): every query has R = N/10 relevant items.
    database_labels = np.repeat(np.arange(10), 590)
    query_labels = np.repeat(np.arange(10), 10)
    n, r = len(database_labels), 590
    a = (r - 1) / (n - 1)
    closed_form = a + (1 - a) * np.sum(1.0 / np.arange(1, n + 1)) / n
    levels = chance_levels(query_labels, database_labels)
    assert levels["chance_map"] == pytest.approx(closed_form, abs=1e-12)
    assert 0.1 < levels["chance_map"] < 0.102 and levels["chance_precision"] == pytest.approx(0.1, abs=1e-15)
    # Multi-hot one-hot labels are the same split as class ids.
    one_hot = np.eye(10, dtype=np.uint8)
    assert chance_levels(one_hot[query_labels], one_hot[database_labels]) == pytest.approx(levels, abs=1e-12)
    # A class absent from the database scores 0 and counts.
    assert chance_map(np.array([0, 11]), database_labels) == pytest.approx(levels["chance_map"] / 2, abs=1e-12)


def test_evaluate_reports_the_chance_level_of_its_own_split() -> None:
    case = tie_heavy_case(2, True, 6, n_query=9)
    query_labels, database_labels = case[2], case[3]
    for top_k in (5, None):
        result = evaluate(*packed(case), top_k=top_k, chunk_size=4)
        assert result["chance_map"] == pytest.approx(chance_map(query_labels, database_labels, top_k), abs=1e-12)
        shared = relevance(query_labels, database_labels)
        assert result["chance_precision"] == pytest.approx(shared.mean(), abs=1e-12)
    # Codes that tie everything are a random ranking, so their tie-aware mAP is the chance level.
    zeros = np.zeros((len(query_labels), 1), dtype=np.uint8)
    collapsed = evaluate(zeros, np.zeros((len(database_labels), 1), dtype=np.uint8), query_labels, database_labels, 8)
    assert collapsed["map_expected"] == pytest.approx(collapsed["chance_map"], abs=1e-12)
    with pytest.raises(DahpError, match="at least one query"):
        chance_map(query_labels[:0], database_labels)
