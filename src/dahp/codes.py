"""Binary hash codes as packed bit arrays.

Codes cross every module boundary as ``(n, ceil(bits / 8))`` uint8 arrays made by
``np.packbits`` along axis 1 (big-endian bit order, zero-padded), together with
their bit length.  Packing keeps a 59,000-image database at 48 bits in 354 KB and
lets Hamming distance be a byte-wise XOR + popcount.
"""

from __future__ import annotations

import numpy as np

from dahp.errors import DahpError

MIN_BITS, MAX_BITS = 8, 256  # code lengths the models, anchors and indexes support


def check_bits(bits: int) -> int:
    """Validate a code length once, with the message every command shows."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise DahpError(f"--bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


def _byte_width(bits: int) -> int:
    return (bits + 7) // 8


def _check_packed(packed: np.ndarray, name: str) -> None:
    """Reject anything that is not a 2-D uint8 packed code matrix."""
    if not isinstance(packed, np.ndarray) or packed.ndim != 2 or packed.dtype != np.uint8:
        shape = getattr(packed, "shape", None)
        dtype = getattr(packed, "dtype", type(packed).__name__)
        raise DahpError(
            f"{name}: expected a 2-D uint8 array of packed codes (n, ceil(bits/8)), "
            f"got shape {shape} dtype {dtype}"
        )


def pack_codes(signs_or_bits: np.ndarray) -> np.ndarray:
    """Pack an ``(n, c)`` code matrix into ``(n, ceil(c/8))`` uint8.

    Bit ``= 1`` exactly where the value is ``> 0``: 0/1 input keeps its bits,
    -1/+1 sign codes map +1 -> 1 and -1 -> 0, and real-valued network outputs are
    thresholded at zero (zero itself -> 0).  One rule for all three forms means
    ``sign(h)`` and ``h`` give the same code.  Padding bits are zero, so they
    never contribute to a Hamming distance.
    """
    return np.packbits(_code_matrix(signs_or_bits) > 0, axis=1)


def _code_matrix(values: np.ndarray) -> np.ndarray:
    """``values`` as an array, checked to be an ``(n, bits)`` matrix with ``bits >= 1``."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] == 0:
        raise DahpError(f"codes: expected a 2-D array (n, bits) with bits >= 1, got shape {values.shape}")
    return values


def demoted_codes(outputs: np.ndarray, ratio: float) -> np.ndarray:
    """Packed codes of real outputs ``(n, c)`` with uncertain rows demoted: a row whose least
    certain output ``|b_k|`` is below ``ratio`` times its mean ``|b|`` gets bit ``k`` flipped.

    Why: codes trained against anchors collapse onto them, so a query's nearest group of
    equal distances holds thousands of images, sure and unsure alike, listed in whatever
    order the database has. One bit is the least a code can say about certainty: a demoted
    image lies one bit farther from the queries that agreed with its weakest bit, behind the
    sure members of its group and still beside them. Only a database is stored this way;
    queries keep their sign codes. ``ratio`` 0 demotes nothing (plain sign codes).
    """
    values = _code_matrix(outputs)
    bits = values > 0
    unsure = np.flatnonzero(unsure_rows(values, ratio))
    bits[unsure, np.abs(values[unsure]).argmin(axis=1)] ^= True
    return np.packbits(bits, axis=1)


def unsure_rows(outputs: np.ndarray, ratio: float) -> np.ndarray:
    """Which rows of real outputs :func:`demoted_codes` demotes: the least certain ``|b_k|``
    below ``ratio`` times the row's mean ``|b|``."""
    certainty = np.abs(_code_matrix(outputs))
    return certainty.min(axis=1) < ratio * certainty.mean(axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(n, bits)`` uint8 array of 0/1."""
    _check_packed(packed, "packed codes")
    if bits < 1:
        raise DahpError(f"bits must be >= 1, got {bits}")
    if packed.shape[1] != _byte_width(bits):
        raise DahpError(
            f"packed codes: {bits} bits need {_byte_width(bits)} bytes per code, "
            f"got {packed.shape[1]}"
        )
    return np.unpackbits(packed, axis=1, count=bits)


def hamming_distance(query_packed: np.ndarray, database_packed: np.ndarray) -> np.ndarray:
    """``(q, B) x (n, B)`` packed codes -> ``(q, n)`` int32 Hamming distances.

    Rows are zero-padded to a multiple of 8 bytes and viewed as uint64 so the
    XOR + popcount touches one word per 64 bits instead of one per byte.  Memory
    is ``O(q * n)``; callers bound it by chunking over queries.
    """
    _check_packed(query_packed, "query codes")
    _check_packed(database_packed, "database codes")
    if query_packed.shape[1] != database_packed.shape[1]:
        raise DahpError(
            f"query and database codes differ in width: {query_packed.shape[1]} vs "
            f"{database_packed.shape[1]} bytes per code (expected equal bit lengths)"
        )
    query_words = _as_words(query_packed)
    database_words = _as_words(database_packed)
    xor = query_words[:, None, :] ^ database_words[None, :, :]
    return np.bitwise_count(xor).sum(axis=2, dtype=np.int32)


def _as_words(packed: np.ndarray) -> np.ndarray:
    """View packed rows as uint64 words (zero-padding adds no set bits)."""
    pad = -packed.shape[1] % 8
    widened = np.pad(packed, ((0, 0), (0, pad))) if pad else np.ascontiguousarray(packed)
    return widened.view(np.uint64)
