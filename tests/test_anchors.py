import json
from functools import cache
from math import comb

import numpy as np
import pytest

from dahp.anchors import AnchorSet, generate_anchors, lexicode
from dahp.errors import DahpError

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def brute_distances(codes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances i < j, by XOR + popcount (independent of the module)."""
    packed = np.packbits(codes, axis=1)
    out = []
    for i in range(len(packed) - 1):
        out.append(POPCOUNT[packed[i] ^ packed[i + 1 :]].sum(axis=1))
    return np.concatenate(out)


def brute_lexicode(bits: int, d: int) -> list[int]:
    kept: list[int] = []
    for w in range(2**bits):
        if all(bin(w ^ v).count("1") >= d for v in kept):
            kept.append(w)
    return kept


def gilbert_varshamov(bits: int, k: int) -> int:
    """Largest d with k * V(bits, d-1) <= 2^bits: greedy picking always reaches it."""
    d = 1
    while d < bits and k * sum(comb(bits, i) for i in range(d + 1)) <= 2**bits:
        d += 1
    return d


def as_ints(codes: np.ndarray) -> list[int]:
    return [int("".join(map(str, row)), 2) for row in codes]


@cache
def anchors(bits: int, classes: int, seed: int = 0, method: str = "auto") -> AnchorSet:
    return generate_anchors(bits, classes, seed=seed, method=method)


# --- the paper's worked example (c = 12, k = 10 -> H = 6, 16 candidates) ----------


def test_lexicode_worked_example() -> None:
    codes = lexicode(12, 6)
    assert codes.shape == (16, 12) and codes.dtype == np.uint8
    assert not codes[0].any()
    assert brute_distances(codes).min() >= 6
    assert len(lexicode(12, 7)) < 10


def test_lexicode_anchors_worked_example() -> None:
    a = generate_anchors(12, 10, method="lexicode")
    assert a.method == "lexicode"
    assert a.candidates == 16
    assert a.codes.shape == (10, 12)
    assert len({tuple(r) for r in a.codes}) == 10
    assert a.min_distance >= 6
    chosen = as_ints(a.codes)
    assert chosen == sorted(chosen)
    assert set(chosen) <= set(as_ints(lexicode(12, 6)))


def test_auto_keeps_the_paper_result_for_12_bits() -> None:
    a = anchors(12, 10)
    assert a.method == "lexicode" and a.candidates == 16 and a.min_distance == 6


@pytest.mark.parametrize(("bits", "d"), [(8, 3), (10, 4), (12, 6), (9, 1), (7, 7), (11, 5)])
def test_lexicode_matches_brute_force(bits: int, d: int) -> None:
    assert as_ints(lexicode(bits, d)) == brute_lexicode(bits, d)


def test_lexicode_bit_order_and_limit() -> None:
    np.testing.assert_array_equal(lexicode(8, 1)[1], [0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(lexicode(12, 6, limit=5), lexicode(12, 6)[:5])


@pytest.mark.parametrize(("bits", "d", "limit"), [(25, 3, None), (12, 0, None), (12, 13, None), (12, 6, 0)])
def test_lexicode_rejects_bad_arguments(bits: int, d: int, limit: int | None) -> None:
    with pytest.raises(DahpError):
        lexicode(bits, d, limit)


# --- the minimum-distance property -------------------------------------------------

# (bits, classes, floor the construction guarantees beyond Gilbert-Varshamov)
CASES = [
    (12, 10, 6),  # the paper's lexicode
    (32, 10, 16),  # Hadamard rows
    (48, 10, 24),  # Hadamard 32 + Hadamard 16 side by side
    (48, 100, 18),  # extended BCH [32,7,12] + [16,7,6] side by side
    (64, 1000, 28),  # extended BCH [64,10,28]
    (128, 100, 64),  # Hadamard / first-order Reed-Muller
    (256, 1000, 120),  # extended BCH [256,10,120]
    (18, 100, 7),  # lexicode beats the scalable construction here
]


@pytest.mark.parametrize(("bits", "classes", "floor"), CASES)
def test_min_distance_property(bits: int, classes: int, floor: int) -> None:
    a = anchors(bits, classes)
    assert a.codes.shape == (classes, bits) and a.codes.dtype == np.uint8
    assert set(np.unique(a.codes)) <= {0, 1}
    d = brute_distances(a.codes)
    assert a.min_distance == d.min() >= 1  # distinct codes
    assert a.mean_distance == pytest.approx(d.mean())
    assert a.plotkin_bound == pytest.approx(bits * classes / (2 * (classes - 1)))
    # c*k/(2(k-1)) bounds the mean distance, hence the minimum, for every code set.
    assert a.min_distance <= a.mean_distance <= a.plotkin_bound + 1e-9
    assert a.min_distance >= gilbert_varshamov(bits, classes)
    assert a.min_distance >= floor


@pytest.mark.parametrize(("bits", "classes"), [(32, 10), (64, 64), (64, 128)])
def test_hadamard_quality(bits: int, classes: int) -> None:
    assert anchors(bits, classes).min_distance >= bits // 2


@pytest.mark.parametrize(("bits", "classes"), [(10, 10), (18, 100), (16, 30)])
def test_auto_is_the_better_of_both(bits: int, classes: int) -> None:
    lex = generate_anchors(bits, classes, method="lexicode")
    scalable = generate_anchors(bits, classes, method="scalable")
    assert anchors(bits, classes).min_distance == max(lex.min_distance, scalable.min_distance)


@pytest.mark.parametrize("method", ["lexicode", "scalable", "auto"])
def test_single_class(method: str) -> None:
    a = generate_anchors(16, 1, method=method)
    assert a.codes.shape == (1, 16)
    assert a.min_distance == 16 and a.mean_distance == 16.0 and a.plotkin_bound == 16.0


def test_as_many_classes_as_words() -> None:
    a = generate_anchors(8, 256)
    assert len({tuple(r) for r in a.codes}) == 256 and a.min_distance == 1


# --- determinism, signs, serialisation ---------------------------------------------


@pytest.mark.parametrize(("bits", "classes", "method"), [(48, 100, "auto"), (12, 10, "lexicode"), (20, 5, "scalable")])
def test_deterministic_per_seed(bits: int, classes: int, method: str) -> None:
    a = generate_anchors(bits, classes, seed=7, method=method)
    b = generate_anchors(bits, classes, seed=7, method=method)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a == b
    other = generate_anchors(bits, classes, seed=8, method=method)
    assert not np.array_equal(a.codes, other.codes)


def test_signed_maps_bits_to_plus_minus_one() -> None:
    a = anchors(32, 10)
    s = a.signed()
    assert s.dtype == np.float32 and s.shape == a.codes.shape
    np.testing.assert_array_equal(s == 1, a.codes == 1)
    np.testing.assert_array_equal(s == -1, a.codes == 0)


@pytest.mark.parametrize(("bits", "classes", "method"), [(12, 10, "lexicode"), (48, 100, "auto"), (16, 1, "auto")])
def test_dict_round_trip(bits: int, classes: int, method: str) -> None:
    a = generate_anchors(bits, classes, seed=3, method=method)
    d = json.loads(json.dumps(a.to_dict()))
    assert d["bits"] == bits and d["classes"] == classes and d["seed"] == 3
    assert d["min_distance"] == a.min_distance and d["candidates"] == a.candidates
    assert all(len(row) == bits for row in d["codes"])
    b = AnchorSet.from_dict(d)
    assert b == a
    assert (b.method, b.seed, b.candidates, b.min_distance) == (a.method, a.seed, a.candidates, a.min_distance)


def _edited(**changes: object) -> dict:
    d = generate_anchors(12, 10, method="lexicode").to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "bad",
    [
        _edited(bits=13),
        _edited(classes=9),
        _edited(codes=_edited()["codes"][:9]),
        _edited(codes=[_edited()["codes"][0]] * 10),  # duplicate anchors
        _edited(codes=["0" * 11 + "2"] + _edited()["codes"][1:]),
        _edited(codes=["0" * 11] + _edited()["codes"][1:]),
        _edited(codes="010"),
        _edited(min_distance=7),
        _edited(mean_distance=1.0),
        _edited(plotkin_bound=6.0),
        _edited(candidates=5),
        _edited(seed="zero"),
        {k: v for k, v in _edited().items() if k != "codes"},
        [1, 2, 3],
    ],
)
def test_from_dict_rejects_inconsistent_data(bad: object) -> None:
    with pytest.raises(DahpError):
        AnchorSet.from_dict(bad)  # type: ignore[arg-type]


def test_anchor_set_rejects_bad_codes() -> None:
    with pytest.raises(DahpError, match="distinct"):
        AnchorSet(codes=np.zeros((2, 8), dtype=np.uint8), method="x", seed=0)
    with pytest.raises(DahpError, match="0/1"):
        AnchorSet(codes=np.full((2, 8), 2), method="x", seed=0)


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bits": 300, "classes": 10}, "--bits must be between 8 and 256, got 300"),
        ({"bits": 7, "classes": 10}, "--bits"),
        ({"bits": 12.5, "classes": 10}, "--bits"),
        ({"bits": 32, "classes": 0}, "--classes"),
        ({"bits": 32, "classes": 1001}, "--classes"),
        ({"bits": 32, "classes": 10, "seed": -1}, "--seed"),
        ({"bits": 32, "classes": 10, "method": "greedy"}, "--method must be one of auto, lexicode, scalable"),
        ({"bits": 32, "classes": 10, "method": "lexicode"}, "--bits"),
        ({"bits": 8, "classes": 300}, "cannot make 300 distinct 8-bit anchors: at most 2^8 codes exist"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, needle: str) -> None:
    with pytest.raises(DahpError) as info:
        generate_anchors(**kwargs)
    assert needle in str(info.value)


def test_min_distance_requirement_is_checked_against_plotkin():
    from dahp.anchors import plotkin_max_codes, require_min_distance

    anchors = generate_anchors(12, 10)
    assert require_min_distance(anchors, 6) is anchors
    assert plotkin_max_codes(12, 7) == 6  # 2 * floor(7 / (14 - 12))
    with pytest.raises(DahpError, match="impossible for 10 codes of 12 bits: the Plotkin bound allows at most 6"):
        require_min_distance(anchors, 7)
    wide = generate_anchors(64, 1000)
    assert plotkin_max_codes(64, 32) is None
    with pytest.raises(DahpError, match="best 1000 codes of 64 bits found have minimum distance"):
        require_min_distance(wide, wide.min_distance + 1)
