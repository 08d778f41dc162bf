"""Seams: Euler windows straddling blocks, counted from the blocks' faces, equal scikit-image for any blocking.

Blocks read no halo, so these tests score volumes cut into many small blocks of odd sizes, grouped into units of
several blocks (the shards of a store), with masks, crops and per-slice scores, and compare every number with
NumPy and scikit-image; they also check that every voxel is read exactly once and that the faces waiting for
their neighbours stay about one cross-section.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rockseg.metrics import blockwise, score_volumes, units
from rockseg.metrics.seams import SeamCounter, block_order
from rockseg.metrics.euler import compact_lut
from tests.metrics.references import (
    RecordingVolume,
    check_against_references,
    check_per_slice,
    masked_reference,
    random_labels,
)


class ShardedVolume(RecordingVolume):
    """A recording volume with a shard grid, like a sharded Zarr v3 array."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...], shards: tuple[int, ...]) -> None:
        super().__init__(data, chunks)
        self.shards = shards


def pair(shape, seed, weights=(3, 2, 1)):
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, shape, list(weights))
    pred = truth.copy()
    flip = rng.random(shape) < 0.3
    pred[flip] = random_labels(rng, shape, list(weights))[flip]
    return pred, truth


@pytest.mark.parametrize(
    ("shape", "block_shape"),
    [
        ((13, 11, 9), (2, 3, 2)),  # 7 x 4 x 5 blocks, none dividing the shape
        ((9, 10, 7), (1, 2, 1)),  # one-voxel-thick blocks: seams next to seams
        ((3, 17, 5), (3, 2, 4)),
        ((19, 23), (2, 5)),  # 2D
        ((1, 13, 11), (1, 3, 2)),
    ],
)
@pytest.mark.parametrize("connectivity", [1, 3])
def test_many_blocks_match_skimage(shape, block_shape, connectivity):
    pred, truth = pair(shape, seed=sum(shape) + connectivity)
    doc = score_volumes(pred, truth, connectivity=connectivity, block_shape=block_shape, num_workers=2)
    check_against_references(doc, pred, truth, connectivity)
    assert doc == score_volumes(pred, truth, connectivity=connectivity, block_shape=shape)


@pytest.mark.parametrize("connectivity", [1, 3])
@pytest.mark.parametrize("axis", ["z", "x"])
def test_units_of_shards_with_mask_and_per_slice(monkeypatch, connectivity, axis):
    # Shards of 2 x 2 x 3 blocks of one chunk each: the seams inside a unit are counted by its task, the seams
    # between units by the caller.
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)
    monkeypatch.setattr(units, "_MIN_UNITS", 1)
    shape = (15, 13, 17)
    pred_data, truth = pair(shape, seed=connectivity)
    inside = np.random.default_rng(3).random(shape) < 0.9
    inside[:, :2, :] = False  # a whole slab outside the mask
    pred = ShardedVolume(pred_data, (3, 2, 3), (6, 4, 9))
    doc = score_volumes(pred, truth, connectivity=connectivity, mask=inside, per_slice=axis, num_workers=2)
    assert units.unit_shape((3, 2, 3), (6, 4, 9), shape) == (6, 4, 9)
    masked_reference(doc, pred_data, truth, inside, connectivity)
    check_per_slice(doc, pred_data, truth, inside, "zyx".index(axis))
    # Every voxel read once, by blocks of whole chunks that never straddle a shard.
    assert sum(math.prod(s.stop - s.start for s in region) for region in pred.reads) == pred_data.size
    for region in pred.reads:
        assert all(s.start % c == 0 for s, c in zip(region, (3, 2, 3)))
        assert all(s.start // h == (s.stop - 1) // h for s, h in zip(region, (6, 4, 9)))


def test_units_with_a_crop_and_no_truth(monkeypatch):
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 8)
    monkeypatch.setattr(units, "_MIN_UNITS", 1)
    data, _ = pair((20, 18, 16), seed=5, weights=(1, 1))
    pred = ShardedVolume(data, (2, 2, 2), (4, 6, 8))
    crop = (slice(3, 19), slice(1, 17), slice(5, 16))
    for connectivity in (1, 3):
        doc = score_volumes(pred, connectivity=connectivity, crop=crop)
        check_against_references(doc, data[crop], None, connectivity)
    for region in pred.reads:
        assert all(c.start <= r.start and r.stop <= c.stop for r, c in zip(region, crop))


def test_units_of_a_2d_image(monkeypatch):
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)
    monkeypatch.setattr(units, "_MIN_UNITS", 1)
    pred_data, truth = pair((29, 31), seed=8)
    pred = ShardedVolume(pred_data, (3, 4), (9, 8))
    for connectivity in (1, 3):
        check_against_references(score_volumes(pred, truth, connectivity=connectivity), pred_data, truth,
                                 connectivity)


def test_faces_held_are_about_one_cross_section():
    # Blocks arrive in block_order: a plane waits only for the neighbour across it, so the planes held are one
    # cross-section of blocks (the two inner axes), one row and one block.
    counts = (5, 4, 6)
    edges = [[(2 * i, 2 * i + 2) for i in range(n)] for n in counts]
    size = tuple(2 * n for n in counts)
    data = random_labels(np.random.default_rng(0), size, [1, 1])
    plan = blockwise.Plan(size, compact_lut(3, 3), None, None, None, None)
    counter = SeamCounter(edges, size, plan.lut, None, None, with_truth=False)
    held = 0
    for index in block_order(counts):
        lo = tuple(e[i][0] for e, i in zip(edges, index))
        hi = tuple(e[i][1] for e, i in zip(edges, index))
        _, faces = blockwise.score_block(blockwise.Volume(data, "v", (0, 0, 0), True), None, lo, hi, plan)
        counter.add(index, faces)
        held = max(held, sum(len(s) == 1 for _, s in counter.waiting))
    assert not counter.waiting and counter._held_bytes == 0  # every part dropped once its piece is counted
    inner = sorted(counts)[:2]  # the two axes other than the outermost: one cross-section of blocks
    assert held == inner[0] * inner[1] + inner[0] + 1
    assert counter.euler[0] and counter.peak_bytes > 0


def test_block_order_puts_the_longest_axis_outermost():
    order = list(block_order((2, 3, 5)))
    assert len(order) == len(set(order)) == 30
    assert [i[2] for i in order[:6]] == [0] * 6  # x, with 5 blocks, changes slowest
    assert set(itertools.product(range(2), range(3), range(5))) == set(order)
