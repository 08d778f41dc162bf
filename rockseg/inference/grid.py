"""The geometry of a prediction: the global tile grid with its halos, the block grid, and the job-array parts.

A *tile* is one network input (edge ``tile``); its outer ``halo`` voxels on each side are context and are cut
off, so each tile contributes its centre of edge ``step = tile - 2 * halo``. Tiles sit on one grid for the whole
volume: tile ``k`` along an axis keeps voxels ``[k * step, (k + 1) * step)`` and reads
``[k * step - halo, k * step - halo + tile)``, except at the volume's faces: a tile whose read would cross a face
is clamped to it (it reads ``[0, tile)`` or ``[n - tile, n)``), so no tile computes on voxels that are not in the
volume; it keeps the same voxels, so its kept region reaches the face. Only along an axis shorter than a tile is
the volume mirrored (NumPy's ``reflect``) beyond its faces. Which tile keeps a voxel, and what that tile reads,
depend only on the voxel and the volume, never on the block, part or worker that runs it.

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
    region is the whole volume). A read that would cross a face of the volume is moved inside it (clamped);
    only along an axis shorter than the tile are reads beyond the faces mirrored.
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

    def read_starts(self, ks: Sequence[range]) -> list[np.ndarray]:
        """Per axis, where each tile of ``ks`` starts to read, in region coordinates (clamped to the volume)."""
        full = self.volume_shape or self.shape
        out = []
        for k, s, h, t, o, n in zip(ks, self.step, self.halo, self.tile, self.origin, full):
            start = np.arange(k.start, k.stop) * s - h
            if n >= t:  # inside the volume: [0, n - t] in volume coordinates
                start = np.clip(start + o, 0, n - t) - o
            out.append(start)
        return out

    def input_index(self, ks: Sequence[range]) -> list[np.ndarray]:
        """Per axis, the volume coordinates that the tiles ``ks`` read together (from the first read voxel to the
        last, mirrored at the faces only along an axis shorter than a tile), in order."""
        full = self.volume_shape or self.shape
        out = []
        for starts, t, o, n in zip(self.read_starts(ks), self.tile, self.origin, full):
            out.append(reflect_index(np.arange(int(starts.min()), int(starts.max()) + t) + o, n))
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
