"""Tests of rockseg.training.loop: the time limit, gradient accumulation and the epoch length."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from rockseg.models import read_model_file
from rockseg.training import TrainConfig, read_tiles, train
from tests.training.helpers import TINY, weights


def test_max_minutes_stops_and_keeps_the_best(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    start = time.monotonic()
    summary = train(tilesets[3], out, config=TrainConfig(**{**TINY, "epochs": 10_000, "steps_per_epoch": 10_000,
                                                           "max_minutes": 0.01}))
    assert time.monotonic() - start < 30
    assert summary["stopped"] == "time" and summary["epochs_run"] >= 1
    assert summary["steps"] < 10_000
    log = (tmp_path / "m.log.jsonl").read_text().splitlines()
    assert len(log) == summary["epochs_run"]
    assert json.loads(log[-1])["partial"] is True  # cut short within the epoch, not only between epochs
    assert read_model_file(out)["training"]["best_val_mean_iou"] == summary["best_val_mean_iou"]


def test_accumulated_steps_equal_one_bigger_batch(tilesets, tmp_path):
    # Without batch statistics or augmentation, 2 passes of 2 tiles summed = 1 pass of the same 4 tiles.
    # The stored tiles (fresh random patches would differ between the two batchings).
    common = dict(base_channels=4, norm="none", augment="none", epochs=1, steps_per_epoch=2, num_threads=1,
                  precision="float32", sampling="fixed")  # bf16 rounds differently per batch
    train(tilesets[2], tmp_path / "a.pt", config=TrainConfig(**common, batch_size=4))
    s = train(tilesets[2], tmp_path / "b.pt", config=TrainConfig(**common, batch_size=2, accumulate=2))
    assert s["steps"] == 2 and s["effective_batch"] == 4
    a, b = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_fraction_sets_the_epoch_length(tilesets, tmp_path):
    n_train = len(read_tiles(tilesets[2])[1]["train/image"])
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": None,
                                                                    "fraction": 0.25, "batch_size": 4}))
    assert s["steps"] == int(np.ceil(0.25 * np.ceil(n_train / 4)))
    s = train(tilesets[2], tmp_path / "n.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": None, "batch_size": 8,
                                                                    "accumulate": 2}))
    assert s["steps"] == int(np.ceil(np.ceil(n_train / 8) / 2))
