"""The geometry of a prediction: the global tile grid with its halos, the block grid, and the job-array parts.

A *tile* is one network input (edge ``tile``); its outer ``halo`` voxels on each side are context and are cut
off, so each tile contributes its centre of edge ``step = tile - 2 * halo``. Tiles sit on one grid for the whole
volume: tile ``k`` along an axis keeps voxels ``[k * step, (k + 1) * step)`` and reads
``[k * step - halo, k * step - halo + tile)``, with the volume mirrored (NumPy's ``reflect``) beyond its faces.

A *block* (edge ``block``) is the unit of scheduling and writing and is also the output chunk; blocks are
numbered (z, y, x) in C order. A *part* ``(i, n)`` of a job array runs blocks ``i, i + n, i + 2n...`` of that
order (``predict --part I/N``, formerly ``--shard``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from rockseg.errors import InputError

Triple = tuple[int, int, int]
_T = TypeVar("_T")


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map coordinates (any integers) onto ``[0, n)`` by mirroring at the faces, as ``np.pad(mode="reflect")``.

    >>> reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a (Z, Y, X) region of a volume.

    Tile ``k`` along an axis keeps ``[k * step, (k + 1) * step)`` and reads ``[k * step - halo, ... + tile)``,
    in region coordinates; the region starts at ``origin`` in a volume of shape ``volume_shape`` (default: the
    region is the whole volume), and reads beyond the volume's faces are mirrored.
    """

    shape: Triple
    tile: Triple
    halo: Triple
    origin: Triple = (0, 0, 0)
    volume_shape: Triple | None = None

    @property
    def step(self) -> Triple:
        return tuple(t - 2 * h for t, h in zip(self.tile, self.halo))  # type: ignore[return-value]

    def tiles_meeting(self, region: Sequence[slice]) -> list[range]:
        """Per axis, the tile indices whose kept centre meets ``region`` (slices of the region)."""
        return [range(r.start // s, -(-r.stop // s)) for r, s in zip(region, self.step)]

    def input_index(self, ks: Sequence[range]) -> list[np.ndarray]:
        """Per axis, the volume coordinates (mirrored at the faces) that the tiles ``ks`` read, in order."""
        full = self.volume_shape or self.shape
        out = []
        for k, s, h, t, o, n in zip(ks, self.step, self.halo, self.tile, self.origin, full):
            lo = k.start * s - h
            hi = (k.stop - 1) * s - h + t
            out.append(reflect_index(np.arange(lo, hi) + o, n))
        return out


def block_grid(shape: Sequence[int], block: Sequence[int]) -> list[Triple]:
    """All block indices (z, y, x) of a volume, in C order."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block)]
    return list(itertools.product(*(range(c) for c in counts)))  # type: ignore[arg-type]


def block_region(index: Sequence[int], shape: Sequence[int], block: Sequence[int]) -> tuple[slice, ...]:
    """The slices of the volume that block ``index`` covers."""
    return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))


def parse_part(text: str | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; ``None`` for the whole job in one run.

    >>> parse_part("2/4")
    (2, 4)
    """
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--part {text!r} is not I/N (e.g. 0/4 for the first of four parts)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--part {text!r}: need 0 <= I < N (parts are numbered from 0, e.g. 0/4 ... 3/4)")
    return i, n


def part_blocks(blocks: list[_T], part: tuple[int, int] | None) -> list[_T]:
    """The blocks that part ``(i, n)`` runs: every n-th from the i-th (all of them without a part)."""
    return blocks[part[0] :: part[1]] if part else blocks
