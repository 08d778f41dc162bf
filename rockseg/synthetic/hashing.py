"""Counter-based random numbers: every random number is a pure function of (seed, stream, integer keys).

Nothing here is drawn from a sequential generator, so a voxel's random numbers depend only on its position, and any
block of the synthetic rock can be made on its own. Only integer operations and exactly rounded arithmetic (+, -,
*, /, sqrt) touch the values, so the result does not depend on how NumPy vectorises an array of a given length
either. :func:`value_noise` builds a smooth random field on the same hashes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION", "CLAY_PATCH", "CLAY_TEXTURE", "GRAINS", "NOISE", "PYRITE", "RINGS", "hash_keys", "normal",
    "uniform", "value_noise",
]

# Hash streams: one per independent random quantity, so that changing one option leaves the others' draws alone.
GRAINS, PYRITE, CLAY_PATCH, CLAY_TEXTURE, NOISE, RINGS, CALIBRATION = range(1, 8)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11, _S16, _LOW16 = np.uint64(11), np.uint64(16), np.uint64(0xFFFF)


def _u64(keys: Any) -> np.ndarray:
    # Always an array of at least one dimension: NumPy warns on integer overflow of scalars, not of arrays, and the
    # wrap-around is what the hash wants.
    return np.atleast_1d(np.asarray(keys, dtype=np.int64)).view(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, a bijection of uint64 with full avalanche."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def hash_keys(seed: int, stream: int, *keys: Any) -> np.ndarray:
    """uint64 hash of (seed, stream, *keys); the keys are integer arrays that broadcast together."""
    h = _mix(_mix(np.array([seed], dtype=np.uint64)) ^ _u64(stream))
    for key in keys:
        h = _mix(h ^ _mix(_u64(key) + _GOLDEN))
    return h


def uniform(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from the top 53 bits of a hash."""
    return (h >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def normal(h: np.ndarray) -> np.ndarray:
    """Approximately standard normal floats: the Irwin-Hall sum of the four 16-bit parts of a hash.

    Only integer operations and one exact conversion, so the value never depends on how NumPy vectorises a
    transcendental function over an array of a given length (which would break block-size independence).
    """
    total = (h & _LOW16) + ((h >> _S16) & _LOW16) + ((h >> np.uint64(32)) & _LOW16) + (h >> np.uint64(48))
    # Each part is (b + 0.5) / 65536, uniform on (0, 1); the sum of four has mean 2 and variance 1/3.
    return ((total.astype(np.float64) + 2.0) * (1.0 / 65536) - 2.0) * math.sqrt(3.0)


def value_noise(seed: int, stream: int, spacing: float, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """A smooth random field in [0, 1): hashed values on a lattice of the given spacing (voxels), interpolated
    with smoothstep weights. Separable, so it costs a few passes over the region."""
    index, weight, first = [], [], []
    for a, b in zip(lo, hi, strict=True):
        pos = np.arange(a, b, dtype=np.float64) / spacing
        cell = np.floor(pos)
        f = pos - cell
        cell = cell.astype(np.int64)
        first.append(int(cell[0]))
        index.append(cell - cell[0])
        weight.append(f * f * (3.0 - 2.0 * f))
    lattice = [np.arange(f0, f0 + int(i[-1]) + 2) for f0, i in zip(first, index, strict=True)]
    lz, ly, lx = lattice
    field = uniform(hash_keys(seed, stream, lz[:, None, None], ly[None, :, None], lx[None, None, :]))
    for axis in range(3):
        i, w = index[axis], weight[axis]
        shape = [1, 1, 1]
        shape[axis] = w.size
        w = w.reshape(shape)
        low = np.take(field, i, axis=axis)
        high = np.take(field, i + 1, axis=axis)
        field = low * (1.0 - w) + high * w
    return field
