"""Tests of rockseg.training.validation: the confusion matrix of a network whose answer is known, and its IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rockseg.training import evaluate, iou_from_confusion


class Threshold(nn.Module):
    """Class 1 where the normalised grey value is above 0.5, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], 1)


def test_evaluate_counts_by_hand():
    images = np.array([[[10, 60], [70, 20]], [[90, 90], [5, 55]]], np.uint8)  # two 2x2 tiles
    labels = np.array([[[0, 1], [0, 0]], [[1, 1], [1, 1]]], np.uint8)
    cpu = torch.device("cpu")
    # p_low 0, p_high 100: predictions [[0, 1], [1, 0]] and [[1, 1], [0, 1]].
    # (truth, prediction): (0, 0) twice, (0, 1) once, (1, 0) once, (1, 1) four times.
    confusion = evaluate(Threshold(), images, labels, stats={"p_low": 0.0, "p_high": 100.0}, classes=2, device=cpu,
                         batch_size=1)
    np.testing.assert_array_equal(confusion, [[2, 1], [1, 4]])
    assert confusion.dtype == np.int64
    np.testing.assert_allclose(iou_from_confusion(confusion), [2 / 4, 4 / 6])
    # Per-source statistics: the second tile's image has p_high 200, so all its voxels fall below 0.5.
    stats = [{"p_low": 0.0, "p_high": 100.0}, {"p_low": 0.0, "p_high": 200.0}]
    confusion = evaluate(Threshold(), images, labels, stats=stats, source=np.array([0, 1]), classes=2, device=cpu)
    np.testing.assert_array_equal(confusion, [[2, 1], [4, 1]])
    assert iou_from_confusion(confusion)[1] == pytest.approx(1 / 6)
