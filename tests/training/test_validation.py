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


def test_euler_error_and_selection_score_by_hand():
    from rockseg.training.validation import EULER_WEIGHT, _tile_euler, euler_error, selection_score

    truth = np.zeros((1, 7, 7, 7), np.uint8)
    truth[0, 1:6, 1:6, 1:6] = 1
    truth[0, 3, 3, 3] = 0  # phase 1: a hollow cube (Euler 2); phase 0: a closed shell (2) and the cavity (1)
    pred = truth.copy()
    pred[0, 3, 3, 3] = 1  # the cavity filled: phase 1 Euler 1, phase 0 Euler 2
    sums = _tile_euler(pred, truth, 2)
    np.testing.assert_array_equal(sums, [[1, 1], [3, 2]])
    np.testing.assert_allclose(euler_error(sums), [1 / 3, 0.5])
    assert np.isnan(euler_error(np.array([[0], [0]])))[0]
    iou = np.array([0.9, 0.8])
    assert selection_score(iou, np.array([0.5, 0.5])) == pytest.approx(0.85 - EULER_WEIGHT * 0.5)
    assert selection_score(iou, np.array([3.0, np.nan])) == pytest.approx(0.85 - EULER_WEIGHT * 1.0)  # capped at 1


def test_choose_speck_size_removes_specks_only_when_they_are_wrong():
    from scipy.ndimage import gaussian_filter

    from rockseg.training.data import _Part
    from rockseg.training.validation import choose_speck_size

    rng = np.random.default_rng(0)
    truth = np.stack([(gaussian_filter(rng.normal(size=(24, 24, 24)), 2.5) > 0) for _ in range(4)]).astype(np.uint8)
    noisy = truth.copy()
    idx = rng.integers(3, 21, size=(4 * 40, 3))
    tile = np.repeat(np.arange(4), 40)
    noisy[tile, idx[:, 0], idx[:, 1], idx[:, 2]] ^= 1  # isolated wrong voxels: the network's specks
    lo, inv = np.zeros(4, np.float32), np.ones(4, np.float32)
    cpu = torch.device("cpu")
    # the network answers the noisy labels (its input): specks hurt, and removing them mends the Euler number
    chosen = choose_speck_size(Threshold(), _Part(noisy, truth, lo, inv), classes=2, device=cpu)
    assert chosen["specks"] > 0
    tried = {row["specks"]: row for row in chosen["tried"]}
    assert [row["specks"] for row in chosen["tried"]] == [0, 2, 4, 8, 16, 32]
    assert tried[chosen["specks"]]["score"] > tried[0]["score"]
    assert max(tried[chosen["specks"]]["euler_error"]) < min(tried[0]["euler_error"])
    # the network answers the truth itself, small pieces included: nothing is better than removing nothing
    truth[:, 5, 5, 5] = 1 - truth[:, 5, 5, 5]
    chosen = choose_speck_size(Threshold(), _Part(truth, truth, lo, inv), classes=2, device=cpu)
    assert chosen["specks"] == 0


def test_choose_speck_size_is_not_fooled_by_errors_that_cancel_in_the_euler_number():
    from rockseg.training.data import _Part
    from rockseg.training.validation import choose_speck_size

    z, y, x = np.mgrid[-12:12, -12:12, -12:12] + 0.5
    torus = (np.sqrt(x**2 + y**2) - 7) ** 2 + z**2 <= 9  # one component, one tunnel
    truth = np.where(torus, 1, 0).astype(np.uint8)[None]
    truth[0, 1:3, 1:3, 1:3] = 1  # a true small isolated pore (phase 1): one component of 8 voxels
    cut = truth.copy()
    cut[0, :, :12, 12:] = 0  # the network lost part of the ring: no tunnel (Euler up by one)
    lo, inv = np.zeros(1, np.float32), np.ones(1, np.float32)
    chosen = choose_speck_size(Threshold(), _Part(cut, truth, lo, inv), classes=2, device=torch.device("cpu"))
    tried = {row["specks"]: row for row in chosen["tried"]}
    assert tried[8]["euler_error"][1] < tried[0]["euler_error"][1]  # deleting the true pore "mends" the Euler number
    assert chosen["specks"] < 8  # but it is a true pore: the piece counts say so
