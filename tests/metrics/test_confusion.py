"""The block histogram: labels spread over 0..255 (counted densely) and all 256 labels with a mask (wide codes)."""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.metrics import score_volumes
from tests.metrics.references import (
    check_against_references,
    check_per_slice,
    cylinder,
    masked_reference,
    random_labels,
    skimage_euler,
)


@pytest.mark.parametrize("high", [15, 16, 17, 255])
def test_labels_spread_over_0_to_255(high):
    # Phases 0..2 and one high label ("unlabelled" is often 255): the block counts index labels densely above 16.
    rng = np.random.default_rng(high)
    shape = (7, 9, 8)
    truth = random_labels(rng, shape, [3, 2, 2, 1])
    truth[truth == 3] = high
    pred = np.where(rng.random(shape) < 0.3, random_labels(rng, shape, [1, 1, 1, 1]), truth).astype(np.uint8)
    pred[pred == 3] = high
    inside = cylinder(shape)
    for block_shape in [(3, 4, 5), (7, 9, 8)]:
        doc = score_volumes(pred, truth, per_slice="y", block_shape=block_shape, ignore=[high])
        assert [p["label"] for p in doc["phases"]] == [0, 1, 2, high]
        check_against_references(doc, pred, truth, 3)
        check_per_slice(doc, pred, truth, np.ones(shape, bool), 1)
        doc = score_volumes(pred, truth, mask=inside, per_slice="z", block_shape=block_shape)
        masked_reference(doc, pred, truth, inside, 3)
        check_per_slice(doc, pred, truth, inside, 0)


def test_every_label_with_a_mask():
    # 256 labels: the confusion codes and the outside-the-mask bin need more than 16 bits.
    rng = np.random.default_rng(256)
    shape = (8, 9, 10)
    truth = rng.integers(0, 256, shape, dtype=np.uint8)
    pred = np.where(rng.random(shape) < 0.5, truth, rng.integers(0, 256, shape, dtype=np.uint8)).astype(np.uint8)
    truth.flat[:256] = np.arange(256)
    inside = cylinder(shape)
    doc = score_volumes(pred, truth, mask=inside, block_shape=(4, 5, 6), per_slice="x")
    labels = [p["label"] for p in doc["phases"]]
    full = np.bincount(truth[inside].astype(np.int64) * 256 + pred[inside], minlength=256 * 256).reshape(256, 256)
    assert doc["confusion"] == full[np.ix_(labels, labels)].tolist()
    assert doc["per_slice"]["voxels"] == [int(np.count_nonzero(inside[:, :, s])) for s in range(shape[2])]
    for phase in doc["phases"][::37]:
        label = phase["label"]
        assert phase["euler_true"] == skimage_euler((truth == label) & inside, 3)
