"""Every row's random stream, seeded and drawn for the whole batch at once.

A sequence draws one uniform per step from numpy's PCG64 seeded with
SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index]): bit for bit the stream of
`sampling.sequence_rng` (tests/service/test_streams.py holds them equal). That Generator,
built per sequence at admission and drawn from by a Python call per row per step, cost the
engine core 0.005-0.01 ms of a one-token request's 0.16 ms
(bench/results/cost/streams-vs-0b2ec1c); here the rows that start in an iteration are seeded
together and every step draws for the whole batch in a few numpy operations. A 128-bit PCG
state is two uint64 arrays (high, low halves); numpy's uint64 arithmetic wraps, which is the
modular arithmetic PCG needs.

The states live per KV-cache slot (`SlotStreams`) and move with the cache rows, so a batch
whose rows change costs nothing here beyond the copies the cache makes anyway.
"""
from __future__ import annotations

import numpy as np

from .sampling import sequence_rng

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1
_MULT = (2549297995355413924 << 64) | 4865540595714422341  # PCG's default 128-bit multiplier
_MULT_H, _MULT_L = _U64(_MULT >> 64), _U64(_MULT & _MASK64)

# SeedSequence's hash constants (numpy/random/bit_generator.pyx)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4


def _mulhi64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The high 64 bits of each 64 x 64-bit product."""
    a0, a1, b0, b1 = a & _M32, a >> _U64(32), b & _M32, b >> _U64(32)
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _U64(32)) + (p01 & _M32) + (p10 & _M32)
    return a1 * b1 + (p01 >> _U64(32)) + (p10 >> _U64(32)) + (mid >> _U64(32))


def _mul128(ah, al, bh, bl):
    return _mulhi64(al, bl) + ah * bl + al * bh, al * bl


def _add128(ah, al, bh, bl):
    lo = al + bl
    return ah + bh + (lo < al).astype(_U64), lo


# ---- seeding ---------------------------------------------------------------------------------
def _hash_constants(start: int, mult: int, count: int) -> list[tuple[np.uint32, np.uint32]]:
    """SeedSequence's running hash constant, which does not depend on the data: call k of its
    hash xors with h_k and multiplies by h_(k+1) = h_k * mult."""
    h = [start]
    for _ in range(count):
        h.append((h[-1] * mult) & 0xFFFFFFFF)
    return [(np.uint32(x), np.uint32(m)) for x, m in zip(h, h[1:])]


_MIX_HASH = _hash_constants(_INIT_A, _MULT_A, _POOL + _POOL * (_POOL - 1))
_OUT_HASH = _hash_constants(_INIT_B, _MULT_B, 8)


def _hashmix(value: np.ndarray, constants: tuple[np.uint32, np.uint32]) -> np.ndarray:
    xor, mul = constants
    value = (value ^ xor) * mul
    return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return r ^ (r >> np.uint32(16))


VECTORISED_FROM = 12  # sequences seeded at once from which the batched hash beats numpy's objects


def seed_origins(keys: list[tuple[int, int]]) -> np.ndarray:
    """(seed, index) per sequence -> [m, 4] uint64: PCG64's state and increment (high, low
    halves) once SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index]) has seeded it."""
    if not all(0 <= s < 1 << 64 and 0 <= i < 1 << 32 for s, i in keys):
        raise ValueError("stream seeds are 0 <= seed < 2**64 and 0 <= index < 2**32")
    if len(keys) < VECTORISED_FROM:
        return np.array([_origin_one(s, i) for s, i in keys], dtype=_U64).reshape(len(keys), 4)
    return _seed_batch(keys)


def _origin_one(seed: int, index: int) -> tuple[int, int, int, int]:
    st = sequence_rng(seed, index).bit_generator.state["state"]
    return st["state"] >> 64, st["state"] & _MASK64, st["inc"] >> 64, st["inc"] & _MASK64


def _seed_batch(keys: list[tuple[int, int]]) -> np.ndarray:
    """seed_origins as numpy operations over the batch (SeedSequence and pcg64_set_seed)."""
    seeds = np.array([s for s, _ in keys], dtype=_U64)
    entropy = [(seeds & _M32).astype(np.uint32), (seeds >> _U64(32)).astype(np.uint32),
               np.array([i for _, i in keys], dtype=np.uint32)]
    # SeedSequence.mix_entropy: three words of entropy in a pool of four, then every word into every other
    h = iter(_MIX_HASH)
    pool = [_hashmix(entropy[i] if i < len(entropy) else np.zeros(len(keys), np.uint32), next(h))
            for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hashmix(pool[src], next(h)))
    # SeedSequence.generate_state(4, uint64): eight words cycled from the pool, as little-endian pairs
    words = [_hashmix(pool[i % _POOL], hc).astype(_U64) for i, hc in enumerate(_OUT_HASH)]
    val = [words[2 * j] | (words[2 * j + 1] << _U64(32)) for j in range(4)]
    # pcg64_set_seed(state = val[0]:val[1], seq = val[2]:val[3]) and pcg_setseq_128_srandom_r:
    # inc = seq << 1 | 1; state = 0; step; state += initstate; step
    inc_h = (val[2] << _U64(1)) | (val[3] >> _U64(63))
    inc_l = (val[3] << _U64(1)) | _U64(1)
    sh, sl = _add128(inc_h, inc_l, val[0], val[1])  # 0 * M + inc, then + initstate
    sh, sl = _step(sh, sl, inc_h, inc_l)
    return np.stack([sh, sl, inc_h, inc_l], axis=1)


def _step(sh, sl, ih, il):
    """One PCG step of every state: state * M + inc (mod 2^128)."""
    return _add128(*_mul128(sh, sl, _MULT_H, _MULT_L), ih, il)


# ---- drawing ---------------------------------------------------------------------------------
class SlotStreams:
    """Every KV-cache slot's stream state, moved with the slot's keys and values: the engine
    applies the same row copies to both, so rows 0..B-1 hold the active rows' streams and a
    paused row keeps its own. draw(B) gives each active row its next uniform in [0, 1), as its
    Generator.random() would."""

    def __init__(self, slots: int):
        self.state = np.zeros((4, slots), dtype=_U64)  # state high, low; increment high, low

    def move(self, src: int, dst: int) -> None:
        self.state[:, dst] = self.state[:, src]

    def start(self, slots: list[int], keys: list[tuple[int, int]]) -> None:
        """New sequences in these slots, at the start of the streams of (seed, index)."""
        self.state[:, slots] = seed_origins(keys).T

    def draw(self, B: int) -> np.ndarray:
        sh, sl, ih, il = self.state[:, :B]
        sh, sl = _step(sh, sl, ih, il)
        self.state[0, :B], self.state[1, :B] = sh, sl
        # XSL-RR: the halves xor-ed, rotated right by the state's top six bits
        x, r = sh ^ sl, sh >> _U64(58)
        out = (x >> r) | (x << ((_U64(64) - r) & _U64(63)))
        return (out >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
