"""Blocks: the grid follows the chunks (and shards), a block reads only its own voxels, label checks name the region."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.metrics import blockwise, score_volumes
from tests.metrics.references import RecordingVolume, check_against_references, random_labels


def test_blocks_follow_the_chunk_grid_and_read_only_their_own_voxels(monkeypatch):
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)  # keep blocks one chunk each
    rng = np.random.default_rng(11)
    data = random_labels(rng, (10, 11, 7), [1, 2, 1])
    chunks = (4, 5, 3)
    pred = RecordingVolume(data, chunks)
    doc = score_volumes(pred, num_workers=2)
    check_against_references(doc, data, None, 3)
    grid = [range(0, n, c) for n, c in zip(data.shape, chunks)]
    # No halo: every chunk is read once, by the block that owns it (the seams come from the blocks' faces).
    expected = {
        tuple((s, min(s + c, n)) for s, c, n in zip(start, chunks, data.shape)) for start in itertools.product(*grid)
    }
    reads = [tuple((s.start, s.stop) for s in region) for region in pred.reads]
    assert len(reads) == len(expected) == 3 * 3 * 3
    assert set(reads) == expected


def test_default_block_grows_whole_chunks():
    block = blockwise.grow_block((64, 64, 64), (1000, 1000, 1000))
    assert np.prod(block) >= blockwise._TARGET_BLOCK_VOXELS
    assert all(b % 64 == 0 for b in block)
    assert blockwise.grow_block((1, 512, 512), (1000, 1000, 1000)) == (16, 512, 512)
    assert blockwise.grow_block((8, 8, 8), (8, 8, 8)) == (8, 8, 8)  # a whole small volume: one block


def test_crop_reads_nothing_outside_it(monkeypatch):
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)
    data = random_labels(np.random.default_rng(2), (9, 9, 9), [1, 1])
    pred = RecordingVolume(data, (4, 4, 4))
    crop = (slice(2, 7), slice(3, 9), slice(0, 5))
    check_against_references(score_volumes(pred, crop=crop), data[crop], None, 3)
    for region in pred.reads:
        assert all(c.start <= r.start and r.stop <= c.stop for r, c in zip(region, crop))


@pytest.mark.parametrize(("value", "dtype"), [(-1, np.int16), (256, np.uint16), (70000, np.int64)])
def test_labels_out_of_range(value, dtype):
    truth = np.zeros((6, 6, 6), dtype)
    truth[4, 5, 1] = value
    with pytest.raises(InputError, match=f"labels.zarr has label {value} .*labels must be integers 0-255"):
        score_volumes(np.zeros((6, 6, 6), np.uint8), truth, truth_name="labels.zarr", block_shape=(3, 3, 3))


def test_strict_phases_refuse_an_unnamed_label():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[4, 5, 1] = 3
    pred = np.zeros_like(truth)
    with pytest.raises(InputError) as info:
        score_volumes(pred, truth, phases={0: "pore", 1: "grain"}, strict_phases=True, truth_name="labels.zarr",
                      block_shape=(3, 3, 3))
    message = str(info.value)
    assert message.startswith("labels.zarr has label 3 (in region 3:6,3:6,0:3) but the phase names give only labels 0, 1")
    assert "--phases ...,3=NAME" in message
    # Not strict (names from a store, say): the label is reported under a made-up name.
    doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"})
    assert [p["name"] for p in doc["phases"]] == ["pore", "grain", "phase3"]
    # A label outside the mask counts for nothing, strict names included.
    inside = np.ones(truth.shape, bool)
    inside[4, 5, 1] = False
    doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"}, strict_phases=True, mask=inside)
    assert [p["label"] for p in doc["phases"]] == [0, 1]
