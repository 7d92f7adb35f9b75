"""AHCG anchor codes (paper §III-E, Algorithm 1): one c-bit code per class, far apart.

The anchor loss pulls every image's code towards its class anchor, so classes are
easier to separate the larger the minimum pairwise Hamming distance of the anchors.

Two ways to build them:

* ``lexicode`` - the paper's exhaustive greedy scan. Exact and reproducible, but it
  walks all 2^c words, so ``generate_anchors`` allows it only for c <= 20.
* ``scalable`` - for any c in 8..256 and k <= 1000 classes. Several starting sets
  (Sylvester-Hadamard rows, extended BCH codes juxtaposed or punctured to c bits,
  the best of several random linear codes, uniformly random codes) are trimmed to
  k codes, polished by a deterministic bit-flip local search, and the best kept.

Every set reports its minimum distance against the Plotkin bound c*k / (2(k-1)).
numpy only: the trainer turns the codes into tensors itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import hadamard

from .codes import check_bits
from .errors import DahpError

MAX_CLASSES = 1000
METHODS = ("auto", "lexicode", "scalable")
LEXICODE_MAX_BITS = 24  # lexicode(): 2^24 flags = 16 MiB, at most ~4 s measured
LEXICODE_ANCHOR_MAX_BITS = 20  # generate_anchors(method="lexicode"): measured < 0.3 s
# Local-search budget, counted (not timed) so a seed always gives the same codes:
_POLISH_STEPS = 1500  # flips
_POLISH_WORK = 20_000_000  # distance entries scored, about 0.3 s
_RANDOM_LINEAR_TRIES = 16
_MAX_RANDOM_STARTS = 32
_RANDOM_START_WORK = 20_000  # random starts get about this many code bits in all

# Primitive polynomials (bit i = coefficient of x^i) for GF(2^a), a = 3..8.
_PRIMITIVE_POLY = {3: 0b1011, 4: 0b10011, 5: 0b100101, 6: 0b1000011, 7: 0b10001001, 8: 0b100011101}


@dataclass(frozen=True, eq=False)
class AnchorSet:
    """k anchor codes of c bits; row i is the anchor of class i."""

    codes: np.ndarray
    method: str
    seed: int
    candidates: int | None = None
    _min: int = field(init=False, repr=False)
    _mean: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
            raise DahpError(f"anchor codes must be a non-empty (classes, bits) array, got {codes.shape}")
        if not np.isin(codes, (0, 1)).all():
            raise DahpError("anchor codes must contain only 0/1 bits")
        codes = codes.astype(np.uint8)
        codes.setflags(write=False)
        if not isinstance(self.method, str) or not self.method:
            raise DahpError(f"anchor method must be a non-empty string, got {self.method!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise DahpError(f"anchor seed must be an integer, got {self.seed!r}")
        if self.candidates is not None and (
            isinstance(self.candidates, bool)
            or not isinstance(self.candidates, (int, np.integer))
            or self.candidates < codes.shape[0]
        ):
            raise DahpError(f"anchor candidates must be None or an integer >= classes, got {self.candidates!r}")
        k, c = codes.shape
        if k == 1:
            lo, mean = c, float(c)
        else:
            d = _pairwise(codes)[np.triu_indices(k, 1)]
            lo, mean = int(d.min()), float(d.mean())
        if lo == 0:
            raise DahpError("anchor codes must be distinct: two classes share a code")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "_min", lo)
        object.__setattr__(self, "_mean", mean)

    def __eq__(self, other: object) -> bool:
        # Written out because the generated __eq__ would compare arrays by truth value.
        if not isinstance(other, AnchorSet):
            return NotImplemented
        return (self.method, self.seed, self.candidates) == (other.method, other.seed, other.candidates) and (
            np.array_equal(self.codes, other.codes)
        )

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1])

    @property
    def classes(self) -> int:
        return int(self.codes.shape[0])

    @property
    def min_distance(self) -> int:
        """Smallest Hamming distance between two anchors (``bits`` for a single class)."""
        return self._min

    @property
    def mean_distance(self) -> float:
        """Mean Hamming distance over all pairs (``bits`` for a single class)."""
        return self._mean

    @property
    def plotkin_bound(self) -> float:
        """c*k / (2(k-1)): no k codes of c bits can beat it, since it bounds the mean distance."""
        k, c = self.classes, self.bits
        return float(c) if k == 1 else c * k / (2 * (k - 1))

    def signed(self) -> np.ndarray:
        """The ±1 form the loss uses: bit 1 -> +1, bit 0 -> -1."""
        return self.codes.astype(np.float32) * 2 - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "classes": self.classes,
            "method": self.method,
            "seed": self.seed,
            "candidates": self.candidates,
            "min_distance": self.min_distance,
            "mean_distance": self.mean_distance,
            "plotkin_bound": self.plotkin_bound,
            "codes": ["".join("1" if b else "0" for b in row) for row in self.codes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnchorSet:
        """Rebuild from ``to_dict`` output, refusing anything that does not add up."""
        if not isinstance(d, dict):
            raise DahpError(f"anchor data must be a mapping, got {type(d).__name__}")
        missing = [key for key in ("bits", "classes", "method", "seed", "codes") if key not in d]
        if missing:
            raise DahpError(f"anchor data lacks {', '.join(missing)}")
        rows = d["codes"]
        if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
            raise DahpError("anchor data 'codes' must be a list of '0'/'1' strings")
        if any(set(r) - {"0", "1"} for r in rows):
            raise DahpError("anchor data 'codes' may only contain the characters 0 and 1")
        if len({len(r) for r in rows}) > 1:
            raise DahpError("anchor data 'codes' strings differ in length")
        if len(rows) != d["classes"] or not rows or len(rows[0]) != d["bits"]:
            width = len(rows[0]) if rows else 0
            raise DahpError(
                f"anchor data says {d['classes']} classes x {d['bits']} bits but codes are {len(rows)} x {width}"
            )
        codes = np.array([[ch == "1" for ch in r] for r in rows], dtype=np.uint8)
        out = cls(codes=codes, method=d["method"], seed=d["seed"], candidates=d.get("candidates"))
        derived = {"min_distance": out.min_distance, "mean_distance": out.mean_distance,
                   "plotkin_bound": out.plotkin_bound}
        for key, value in derived.items():
            if key in d and not (isinstance(d[key], (int, float)) and math.isclose(d[key], value, abs_tol=1e-6)):
                raise DahpError(f"anchor data says {key}={d[key]!r} but the codes give {value}")
        return out


def lexicode(bits: int, min_distance: int, limit: int | None = None) -> np.ndarray:
    """The paper's greedy scan: keep each integer 0, 1, ..., 2^c - 1 that is at least
    ``min_distance`` away from every integer kept so far.

    Returns (n, bits) uint8, most significant bit first, code 0 first. Instead of
    comparing each word with all kept ones, every kept word w forbids w XOR (each
    word lighter than ``min_distance``), so the next code is the next allowed index.
    """
    if not 1 <= bits <= LEXICODE_MAX_BITS:
        raise DahpError(f"lexicode bits must be between 1 and {LEXICODE_MAX_BITS}, got {bits}")
    if not 1 <= min_distance <= bits:
        raise DahpError(f"lexicode min_distance must be between 1 and {bits}, got {min_distance}")
    if limit is not None and limit < 1:
        raise DahpError(f"lexicode limit must be positive, got {limit}")
    size = 1 << bits
    weight = np.zeros(1, dtype=np.uint8)
    for _ in range(bits):  # weight[x] = popcount(x), built by doubling
        weight = np.concatenate([weight, weight + 1])
    ball = np.flatnonzero(weight < min_distance)
    del weight
    allowed = np.ones(size, dtype=bool)
    kept = [0]
    while limit is None or len(kept) < limit:
        w = kept[-1]
        allowed[ball ^ w] = False
        step = int(np.argmax(allowed[w:]))  # first allowed index at or after w
        if not allowed[w + step]:
            break
        kept.append(w + step)
    return _int_to_bits(np.array(kept, dtype=np.int64), bits)


def plotkin_max_codes(bits: int, distance: int) -> int | None:
    """Most codes of ``bits`` bits that can be pairwise ``distance`` apart, when Plotkin decides it.

    For 2d > c at most 2*floor(d / (2d - c)) codes exist; for d > c none beyond one.
    Returns None where the bound says nothing (2d <= c).
    """
    if distance > bits:
        return 1
    if 2 * distance > bits:
        return 2 * (distance // (2 * distance - bits))
    return None


def require_min_distance(anchors: AnchorSet, distance: int) -> AnchorSet:
    """Refuse an anchor set whose minimum distance is below ``distance``, saying whether it is impossible."""
    if anchors.min_distance >= distance:
        return anchors
    limit = plotkin_max_codes(anchors.bits, distance)
    if limit is not None and anchors.classes > limit:
        raise DahpError(
            f"--min-distance {distance} is impossible for {anchors.classes} codes of {anchors.bits} bits: "
            f"the Plotkin bound allows at most {limit} such codes"
        )
    raise DahpError(
        f"--min-distance {distance}: the best {anchors.classes} codes of {anchors.bits} bits found have "
        f"minimum distance {anchors.min_distance} (Plotkin bound {anchors.plotkin_bound:.2f})"
    )


def generate_anchors(bits: int, classes: int, seed: int = 0, method: str = "auto") -> AnchorSet:
    """k = ``classes`` anchors of ``bits`` bits with a large minimum Hamming distance.

    ``lexicode`` is the paper's procedure (c <= 20): the largest H whose lexicode has
    >= k codes, then k of them drawn with ``seed`` and kept in increasing order.
    ``scalable`` works for every c. ``auto`` takes the paper's lexicode for c <= 20
    unless the scalable set has a strictly larger minimum distance (the mean does not
    count: it would overturn the paper's own c=12, k=10 example), else the scalable set.
    Same arguments, same codes.
    """
    _check_args(bits, classes, seed, method)
    if method == "lexicode":
        return _lexicode_anchors(bits, classes, seed)
    scalable = _scalable_anchors(bits, classes, seed)
    if method == "scalable" or bits > LEXICODE_ANCHOR_MAX_BITS:
        return scalable
    lex = _lexicode_anchors(bits, classes, seed)
    return scalable if scalable.min_distance > lex.min_distance else lex


def _check_args(bits: int, classes: int, seed: int, method: str) -> None:
    for name, value in (("bits", bits), ("classes", classes), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DahpError(f"--{name} must be an integer, got {value!r}")
    check_bits(bits)
    if not 1 <= classes <= MAX_CLASSES:
        raise DahpError(f"--classes must be between 1 and {MAX_CLASSES}, got {classes}")
    if seed < 0:
        raise DahpError(f"--seed must be a non-negative integer, got {seed}")
    if method not in METHODS:
        raise DahpError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if classes > 1 << int(bits):
        raise DahpError(f"cannot make {classes} distinct {bits}-bit anchors: at most 2^{bits} codes exist")
    if method == "lexicode" and bits > LEXICODE_ANCHOR_MAX_BITS:
        raise DahpError(
            f"--method lexicode scans all 2^bits words and supports --bits up to "
            f"{LEXICODE_ANCHOR_MAX_BITS}, got {bits}; use --method auto or scalable"
        )


def _lexicode_anchors(bits: int, k: int, seed: int) -> AnchorSet:
    """Algorithm 1: the largest H whose lexicode still holds k codes, k of them at random."""
    # Every code set obeys the Plotkin bound, so larger H cannot reach k codes.
    h = bits if k <= 2 else bits * k // (2 * (k - 1))
    while len(lexicode(bits, h, limit=k)) < k:
        h -= 1  # h = 1 (all words) always suffices since k <= 2^bits
    pool = lexicode(bits, h)
    chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=k, replace=False))
    return AnchorSet(codes=pool[chosen], method="lexicode", seed=seed, candidates=len(pool))


# --- scalable construction ------------------------------------------------------


def _scalable_anchors(bits: int, k: int, seed: int) -> AnchorSet:
    """Best polished start set, then a seeded isometry so seeds differ but quality does not."""
    rng = np.random.default_rng(seed)
    if k == 1:
        return AnchorSet(codes=rng.integers(0, 2, (1, bits), dtype=np.uint8), method="random", seed=seed)
    starts = _start_sets(bits, k, rng)
    best_key, best_name, best_codes = None, "", None
    for name, codes in starts:
        polished, changed = _polish(codes)
        key = _quality(polished)
        if best_key is None or key > best_key:
            best_key, best_codes = key, polished
            best_name = name + ("+search" if changed else "")
    assert best_codes is not None
    codes = best_codes[rng.permutation(k)][:, rng.permutation(bits)] ^ rng.integers(0, 2, bits, dtype=np.uint8)
    return AnchorSet(codes=codes, method=best_name, seed=seed)


def _start_sets(bits: int, k: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Distinct k-code start sets from several constructions, each already trimmed to k."""
    m = max(1, math.ceil(math.log2(k)))  # linear codes need 2^m >= k words
    n = 1 << (bits.bit_length() - 1)  # largest power of two <= bits
    linear = [("bch", _codewords(_bch_juxtaposed(bits, m, rng)))]
    if n < bits:
        linear.append(("bch-punctured", _puncture(_codewords(_bch_generator(2 * n, m)), bits)))
    linear.append(("random-linear", _codewords(_random_linear(bits, m, rng))))
    starts = [("hadamard", _hadamard_codes(bits, k, rng))] if k <= 2 * n else []
    for name, words in linear:
        words = np.unique(words, axis=0)  # a rank-deficient generator repeats words
        if len(words) >= k:
            starts.append((name, _prune(words, k)))
    # Random starts win for few classes (the search has room there), so try several.
    for _ in range(max(1, min(_MAX_RANDOM_STARTS, _RANDOM_START_WORK // (k * bits)))):
        starts.append(("random", _random_distinct(bits, k, rng)))
    return starts


def _hadamard_codes(bits: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of [H; -H] (Sylvester) for each power-of-two block of ``bits`` that has >= k/2 columns.

    2n rows of order-n [H; -H] are n/2 apart, and juxtaposed blocks add their distances;
    blocks too narrow for k rows get random bits for the search to improve.
    """
    blocks = []
    for width in _power_blocks(bits):
        if k <= 2 * width:
            h = hadamard(width) > 0
            blocks.append(np.vstack([h, ~h])[:k].astype(np.uint8))
        else:
            blocks.append(rng.integers(0, 2, (k, width), dtype=np.uint8))
    return _make_distinct(np.hstack(blocks), rng)


def _bch_juxtaposed(bits: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m x bits generator: extended BCH codes side by side, one per power-of-two block.

    Juxtaposition adds the blocks' minimum distances; blocks too short to hold an
    m-dimensional code (under 8 bits or fewer than m+1) get random columns.
    """
    blocks = []
    for width in _power_blocks(bits):
        if width >= 8 and m < width:
            blocks.append(_bch_generator(width, m))
        else:
            blocks.append(rng.integers(0, 2, (m, width), dtype=np.uint8))
    return np.hstack(blocks)


def _bch_generator(length: int, m: int) -> np.ndarray:
    """m x length generator of an m-dimensional subcode of the extended primitive BCH code
    of that (power-of-two) length with the largest designed distance that keeps dimension >= m.
    """
    a = length.bit_length() - 1
    n = length - 1
    exp, log = _gf_tables(a)
    cosets = _cyclotomic_cosets(n)
    zeros: set[int] = set()
    best: set[int] = set()
    for delta in range(2, n + 1):  # zeros alpha^1 .. alpha^(delta-1)
        zeros |= cosets[delta - 1]
        if n - len(zeros) < m:
            break
        best = set(zeros)
    g = np.array([1], dtype=np.int64)  # g(x) = prod (x - alpha^z), coefficients low degree first
    for z in sorted(best):
        times_beta = np.where(g != 0, exp[(log[g] + z) % n], 0)
        g = np.concatenate([[0], g]) ^ np.concatenate([times_beta, [0]])
    if not np.isin(g, (0, 1)).all():
        raise AssertionError("BCH generator polynomial is not binary")
    gen = np.zeros((m, length), dtype=np.uint8)
    for i in range(m):
        gen[i, i : i + len(g)] = g
    gen[:, n] = gen[:, :n].sum(axis=1) % 2  # overall parity bit: the extension
    return gen


def _gf_tables(a: int) -> tuple[np.ndarray, np.ndarray]:
    n = (1 << a) - 1
    exp = np.zeros(n, dtype=np.int64)
    log = np.zeros(n + 1, dtype=np.int64)
    x = 1
    for i in range(n):
        exp[i], log[x] = x, i
        x <<= 1
        if x >> a:
            x ^= _PRIMITIVE_POLY[a]
    return exp, log


def _cyclotomic_cosets(n: int) -> list[set[int]]:
    """cosets[s] = {s * 2^j mod n}: the exponents sharing alpha^s's minimal polynomial."""
    out = []
    for s in range(n):
        coset, x = set(), s
        while x not in coset:
            coset.add(x)
            x = 2 * x % n
        out.append(coset)
    return out


def _random_linear(bits: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """The best of a few random m x bits generators by (minimum weight, fewest words at it)."""
    best_key, best = None, None
    for _ in range(_RANDOM_LINEAR_TRIES):
        gen = rng.integers(0, 2, (m, bits), dtype=np.uint8)
        weights = _codewords(gen)[1:].sum(axis=1)
        low = int(weights.min())
        key = (low, -int((weights == low).sum()))
        if best_key is None or key > best_key:
            best_key, best = key, gen
    assert best is not None
    return best


def _random_distinct(bits: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return _make_distinct(rng.integers(0, 2, (k, bits), dtype=np.uint8), rng)


def _make_distinct(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Redraw repeated rows until all differ (only plausible when k is close to 2^bits)."""
    codes = codes.copy()
    while True:
        _, first = np.unique(codes, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(len(codes)), first)
        if dup.size == 0:
            return codes
        codes[dup] = rng.integers(0, 2, (dup.size, codes.shape[1]), dtype=np.uint8)


def _codewords(gen: np.ndarray) -> np.ndarray:
    """All 2^m words u @ gen over GF(2), word 0 first."""
    m = gen.shape[0]
    messages = _int_to_bits(np.arange(1 << m), m)
    return (messages.astype(np.int64) @ gen.astype(np.int64) % 2).astype(np.uint8)


def _puncture(words: np.ndarray, bits: int) -> np.ndarray:
    """Delete columns one at a time until ``bits`` remain, each time the column whose loss
    keeps (minimum distance, fewest pairs at it) best. ``words`` is a linear code, so
    distances are the weights of its nonzero words."""
    words = words[1:]  # nonzero words
    keep = np.ones(words.shape[1], dtype=bool)
    weights = words.sum(axis=1).astype(np.int64)
    for _ in range(words.shape[1] - bits):
        low = weights.min()
        # Deleting column j lowers by one the weight of every word with a 1 there.
        at_low = words[weights == low].sum(axis=0, dtype=np.int64)
        to_low = words[weights == low + 1].sum(axis=0, dtype=np.int64)
        score = np.where(at_low > 0, -(1 << 40) - at_low, -(at_low + to_low))
        score = np.where(keep, score, np.iinfo(np.int64).min)
        j = int(np.argmax(score))
        keep[j] = False
        weights -= words[:, j]
    zero = np.zeros((1, bits), dtype=np.uint8)
    return np.vstack([zero, words[:, keep]])


def _prune(words: np.ndarray, k: int) -> np.ndarray:
    """Drop distinct words until k remain, each time one in the most pairs at the minimum distance."""
    dist = _pairwise(words)
    big = words.shape[1] + 1
    np.fill_diagonal(dist, big)
    alive = np.ones(len(words), dtype=bool)
    low = int(dist.min())
    count = (dist == low).sum(axis=1)
    for _ in range(len(words) - k):
        if not count[alive].any():
            low = int(dist[np.ix_(alive, alive)].min())
            count = ((dist == low) & alive).sum(axis=1)
        r = int(np.argmax(np.where(alive, count, -1)))
        alive[r] = False
        count -= (dist[r] == low) & alive
        count[r] = 0
    return words[alive]


def _polish(codes: np.ndarray, steps: int = _POLISH_STEPS, work: int = _POLISH_WORK) -> tuple[np.ndarray, bool]:
    """Greedy single-bit flips on codes in closest pairs, each strictly improving
    (minimum distance, -pairs at the minimum, total distance). Stops at a local optimum,
    after ``steps`` flips or ``work`` scored distances, or once the closest pairs are too
    many to separate in the flips left. Returns the codes and whether any flip happened.

    Flipping bit j of code i moves d(i, l) by +1 where codes i and l agree on bit j and
    by -1 where they differ, so all c flips of code i are scored at once. Only codes
    within the minimum + 1 of code i can reach or leave the minimum; the change of the
    total distance comes from per-bit counts of ones, so a step costs O(k + near * c).
    """
    x = codes.copy()
    k, c = x.shape
    bound = c * k / (2 * (k - 1))
    dist = _pairwise(x).astype(np.int32)
    np.fill_diagonal(dist, c + 2)
    ones = x.sum(axis=0, dtype=np.int64)
    low = int(dist.min())
    row_count = (dist == low).sum(axis=1)
    changed = False
    for left in range(steps, 0, -1):
        if not row_count.any():  # every closest pair was separated: the minimum rose
            low = int(dist.min())
            row_count = (dist == low).sum(axis=1)
        if low + 1 > bound or work < 0:  # Plotkin: the minimum cannot rise any further
            break
        if row_count.sum() > 2 * left * row_count.max():
            break  # a flip of code i frees at most row_count[i] pairs: too many to separate
        move = None
        busy = np.flatnonzero(row_count)
        for i in busy[np.argsort(-row_count[busy], kind="stable")]:
            near = np.flatnonzero(dist[i] <= low + 1)
            work -= k + near.size * c
            new = dist[i, near][:, None] + np.where(x[near] == x[i], 1, -1)
            lost = row_count[i] - (new == low).sum(axis=0)  # pairs leaving the minimum
            differ = np.where(x[i] == 1, k - ones, ones)
            gain = (k - 1) - 2 * differ  # change of the total distance, |gain| < k
            score = np.where(new.min(axis=0) >= low, lost * 2 * k + gain, -1)
            j = int(np.argmax(score))
            if score[j] > 0:
                move = (int(i), j)
                break
            if work < 0:
                break
        if move is None:
            break
        i, j = move
        step = np.where(x[:, j] == x[i, j], 1, -1).astype(np.int32)
        step[i] = 0
        row = dist[i] + step
        row_count += (row == low).astype(np.int64) - (dist[i] == low)
        row_count[i] = int((row == low).sum())
        ones[j] += 1 - 2 * int(x[i, j])
        x[i, j] ^= 1
        dist[i] = row
        dist[:, i] = row
        changed = True
    return x, changed


def _quality(codes: np.ndarray) -> tuple[int, int, int]:
    """(minimum distance, -pairs at it, total distance): larger is better."""
    k = len(codes)
    d = _pairwise(codes)[np.triu_indices(k, 1)]
    low = int(d.min())
    return low, -int((d == low).sum()), int(d.sum())


def _power_blocks(bits: int) -> list[int]:
    """``bits`` as a sum of powers of two, largest first (48 -> [32, 16])."""
    return [1 << b for b in range(bits.bit_length() - 1, -1, -1) if bits >> b & 1]


def _pairwise(codes: np.ndarray) -> np.ndarray:
    """(k, k) Hamming distances via one float32 matmul of the ±1 codes (exact for c <= 2^24)."""
    s = codes.astype(np.float32) * 2 - 1
    return np.rint((codes.shape[1] - s @ s.T) / 2).astype(np.int64)


def _int_to_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Integers to (n, bits) uint8 rows, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)
