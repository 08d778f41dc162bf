"""Tests of rockseg.training.optimizers: each schedule and the warm-up set the logged learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rockseg.training import TrainConfig, train
from tests.training.helpers import TINY


@pytest.mark.parametrize("settings, lrs", [
    # exp: 1e-2 decays to min_lr 1e-4 at the last of 3 epochs
    (dict(schedule="exp", lr=1e-2, min_lr=1e-4, optimizer="sgd", weight_decay=1e-4), [1e-2, 1e-3, 1e-4]),
    # cosine, restart every 2 epochs: lr, the middle of the half cosine, lr again
    (dict(schedule="cosine", lr=1e-2, min_lr=0.0, cosine_epochs=2, optimizer="adamw"), [1e-2, 5e-3, 1e-2]),
    # warm-up over 2 epochs of 4 steps: 4/8 of lr by the end of epoch 1, all of it after
    (dict(warmup_epochs=2, lr=1e-2, steps_per_epoch=4), [5e-3, 1e-2, 1e-2]),
    (dict(schedule="plateau", patience=0, lr=1e-2), None),
])
def test_schedules_set_the_logged_learning_rate(tilesets, tmp_path, settings, lrs):
    s = train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 3, **settings}))
    log = [json.loads(line) for line in Path(s["log"]).read_text().splitlines()]
    got = [r["lr"] for r in log]
    if lrs is not None:
        assert got == pytest.approx(lrs, rel=1e-9, abs=1e-12)
    else:  # plateau: the rate halves exactly after each epoch that did not beat the best so far
        best, want = -1.0, 1e-2
        for r, lr in zip(log, got):
            assert lr == pytest.approx(want)
            want = want if r["val_mean_iou"] > best else want / 2
            best = max(best, r["val_mean_iou"])
    assert s["config"]["schedule"] == settings.get("schedule", "none")
