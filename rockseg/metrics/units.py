"""Units of work of a score: a group of blocks that one task scores, counting the seams between them where it runs.

A unit is a shard of a sharded store (when the scored region holds enough shards to keep the workers busy), else
one block. :func:`score_unit` reads and tallies the unit's blocks one after another (memory: about one block),
counts the Euler windows straddling them with its own :class:`~rockseg.metrics.seams.SeamCounter`, and returns the
unit's tally and outer faces. The client then counts only the seams between units, one result per unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rockseg.metrics.blockwise import Plan, Volume, axis_edges, score_block
from rockseg.metrics.seams import Faces, SeamCounter, block_order
from rockseg.metrics.tally import Tally, merge

__all__ = ["Work", "score_unit", "unit_shape"]

# A unit of whole shards is scored by one task only up to this many voxels (a few seconds of work), ...
_UNIT_MAX_VOXELS = 1 << 27
# ... and only when the scored region holds at least this many units: fewer would leave workers idle.
_MIN_UNITS = 16
# Tallies summed at once while they come in (a sum of per-slice tallies costs a pass over every slice).
MERGE_EVERY = 256


class Work:
    """What every unit task needs besides its region (a plain class: Dask unpacks dataclass arguments)."""

    __slots__ = ("pred", "truth", "plan", "origin", "block_shape")

    def __init__(self, pred: Volume, truth: Volume | None, plan: Plan, origin: tuple[int, ...],
                 block_shape: tuple[int, ...]) -> None:
        self.pred = pred
        self.truth = truth
        self.plan = plan
        self.origin = origin  # crop start, in array coordinates: blocks are aligned in array coordinates
        self.block_shape = block_shape


def unit_shape(block_shape: Sequence[int], shard: Sequence[int] | None, size: Sequence[int]) -> tuple[int, ...]:
    """The shape of a unit: the store's shard when it is made of whole blocks and not too large, else a block."""
    if shard is None or any(s % b for s, b in zip(shard, block_shape)) or tuple(shard) == tuple(block_shape):
        return tuple(block_shape)
    units = math.prod(-(-n // s) for n, s in zip(size, shard))
    if math.prod(shard) > _UNIT_MAX_VOXELS or units < _MIN_UNITS:
        return tuple(block_shape)
    return tuple(shard)


def score_unit(work: Work, lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[Tally, Faces]:
    """Tally and outer faces of the unit [lo, hi): its blocks one by one, and the seams between them."""
    edges = [axis_edges(a, b, o, s) for a, b, o, s in zip(lo, hi, work.origin, work.block_shape)]
    if all(len(e) == 1 for e in edges):
        return score_block(work.pred, work.truth, lo, hi, work.plan)
    plan = work.plan
    with_truth = work.truth is not None
    # The unit's blocks arrive in order and its faces are small: no need to compress what waits.
    counter = SeamCounter(edges, plan.shape, plan.lut, plan.axis, plan.slice_lut, with_truth, compress=False)
    d = len(lo)
    outer = Faces([[None, None] for _ in range(d)], [[None, None] for _ in range(d)] if with_truth else None)
    tallies: list[Tally] = []
    for index in block_order([len(e) for e in edges]):
        block_lo = tuple(edges[a][i][0] for a, i in enumerate(index))
        block_hi = tuple(edges[a][i][1] for a, i in enumerate(index))
        tally, faces = score_block(work.pred, work.truth, block_lo, block_hi, plan)
        _place(outer.pred, faces.pred, block_lo, block_hi, lo, hi)
        if with_truth:
            _place(outer.truth, faces.truth, block_lo, block_hi, lo, hi)
        counter.add(index, faces)
        tallies.append(tally)
        if len(tallies) >= MERGE_EVERY:
            tallies = [merge(*tallies)]
    return merge(*tallies, counter.tally()), outer


def _place(outer: list[list[np.ndarray | None]], faces: list[list[np.ndarray | None]], block_lo: Sequence[int],
           block_hi: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> None:
    """Copy the faces of a block that lie on the unit's faces into the unit's faces."""
    d = len(lo)
    for a in range(d):
        for side, on_face in ((0, block_lo[a] == lo[a]), (1, block_hi[a] == hi[a])):
            plane = faces[a][side]
            if not on_face or plane is None:
                continue
            if outer[a][side] is None:
                shape = tuple(hi[b] - lo[b] for b in range(d) if b != a)
                outer[a][side] = np.empty(shape, plane.dtype)
            region = tuple(slice(block_lo[b] - lo[b], block_hi[b] - lo[b]) for b in range(d) if b != a)
            outer[a][side][region] = plane
