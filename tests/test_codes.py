import numpy as np
import pytest

from dahp.codes import demoted_codes, hamming_distance, pack_codes, unpack_codes
from dahp.errors import DahpError

BIT_LENGTHS = [1, 7, 8, 12, 48, 64, 100]


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_pack_unpack_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    code_bits = rng.integers(0, 2, size=(9, bits), dtype=np.uint8)
    packed = pack_codes(code_bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (9, (bits + 7) // 8)
    unpacked = unpack_codes(packed, bits)
    assert unpacked.dtype == np.uint8
    np.testing.assert_array_equal(unpacked, code_bits)


def test_padding_bits_are_zero() -> None:
    packed = pack_codes(np.ones((1, 12)))
    np.testing.assert_array_equal(packed, [[0xFF, 0xF0]])


def test_big_endian_bit_order() -> None:
    np.testing.assert_array_equal(pack_codes(np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1]])), [[0x81, 0x80]])


def test_sign_binary_and_real_inputs_agree() -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((20, 30))
    real[0, :5] = 0.0  # zero maps to bit 0
    signs = np.where(real > 0, 1, -1)
    binary = (real > 0).astype(np.uint8)
    expected = pack_codes(binary)
    np.testing.assert_array_equal(pack_codes(signs), expected)
    np.testing.assert_array_equal(pack_codes(real), expected)
    np.testing.assert_array_equal(pack_codes(signs.astype(np.float32)), expected)
    np.testing.assert_array_equal(unpack_codes(expected, 30)[0, :5], 0)


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_hamming_distance_matches_brute_force(bits: int) -> None:
    rng = np.random.default_rng(100 + bits)
    query = rng.integers(0, 2, size=(7, bits))
    database = rng.integers(0, 2, size=(11, bits))
    distances = hamming_distance(pack_codes(query), pack_codes(database))
    assert distances.shape == (7, 11)
    assert np.issubdtype(distances.dtype, np.integer)
    for i in range(7):
        for j in range(11):
            assert distances[i, j] == sum(int(a != b) for a, b in zip(query[i], database[j]))


def test_demoted_codes_flip_the_weakest_bit_of_the_unsure_rows_only() -> None:
    outputs = np.array([
        [2.0, -2.0, 0.1, 2.0],    # weakest 0.1 < 0.5 x mean 1.525: its bit flips to 0
        [1.0, -1.0, 1.0, -0.9],   # weakest 0.9 >= 0.5 x mean 0.975: kept
        [-0.2, 3.0, 3.0, 3.0],    # weakest -0.2 < 0.5 x mean 2.3: its bit flips to 1
    ])
    expected = pack_codes(np.array([[1, 0, 0, 1], [1, 0, 1, 0], [1, 1, 1, 1]]))
    np.testing.assert_array_equal(demoted_codes(outputs, 0.5), expected)
    np.testing.assert_array_equal(demoted_codes(outputs, 0.0), pack_codes(outputs))  # 0: the sign codes

    real = np.random.default_rng(3).standard_normal((200, 12))
    plain, demoted = pack_codes(real), demoted_codes(real, 0.1)
    moved = hamming_distance(plain, demoted).diagonal()
    certainty = np.abs(real)
    unsure = certainty.min(1) < 0.1 * certainty.mean(1)
    assert set(moved[unsure]) == {1} and set(moved[~unsure]) == {0}  # one bit, and only the unsure rows
    assert 0 < unsure.sum() < len(real)
    with pytest.raises(DahpError, match="2-D"):
        demoted_codes(np.zeros(5), 0.5)


def test_hamming_distance_extremes() -> None:
    codes = pack_codes(np.array([[1] * 12, [-1] * 12]))
    np.testing.assert_array_equal(hamming_distance(codes, codes), [[0, 12], [12, 0]])


def test_pack_rejects_non_2d() -> None:
    with pytest.raises(DahpError):
        pack_codes(np.ones(8))
    with pytest.raises(DahpError):
        pack_codes(np.ones((2, 0)))


def test_unpack_validates_width_and_dtype() -> None:
    packed = pack_codes(np.ones((3, 12)))
    with pytest.raises(DahpError, match="3 bytes per code, got 2"):
        unpack_codes(packed, 17)
    with pytest.raises(DahpError):
        unpack_codes(packed, 0)
    with pytest.raises(DahpError, match="uint8"):
        unpack_codes(packed.astype(np.int64), 12)
    with pytest.raises(DahpError):
        unpack_codes(packed[0], 12)


def test_hamming_distance_validates_inputs() -> None:
    a = pack_codes(np.ones((3, 12)))
    b = pack_codes(np.ones((4, 20)))
    with pytest.raises(DahpError, match="width"):
        hamming_distance(a, b)
    with pytest.raises(DahpError, match="uint8"):
        hamming_distance(a.astype(np.int32), a)
    with pytest.raises(DahpError, match="2-D"):
        hamming_distance(a, a[0])
    with pytest.raises(DahpError):
        hamming_distance(a.tolist(), a)
