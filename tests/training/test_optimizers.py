"""Tests of rockseg.training.optimizers: each schedule and the warm-up set the logged learning rate; poly follows
the time budget, across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch

from rockseg.training import TrainConfig, loop, train, trainer
from tests.training.helpers import TINY, weights


@pytest.mark.parametrize("settings, lrs", [
    # exp: 1e-2 decays to min_lr 1e-4 at the last of 3 epochs
    (dict(schedule="exp", lr=1e-2, min_lr=1e-4, optimizer="sgd", weight_decay=1e-4), [1e-2, 1e-3, 1e-4]),
    # cosine, restart every 2 epochs: lr, the middle of the half cosine, lr again
    (dict(schedule="cosine", lr=1e-2, min_lr=0.0, cosine_epochs=2, optimizer="adamw"), [1e-2, 5e-3, 1e-2]),
    # warm-up over 2 epochs of 4 steps: 4/8 of lr by the end of epoch 1, all of it after
    (dict(warmup_epochs=2, lr=1e-2, steps_per_epoch=4, schedule="none"), [5e-3, 1e-2, 1e-2]),
    # poly over 3 epochs of 2 steps, step by step: the last step of epoch e is at progress 2e/6
    (dict(schedule="poly", lr=1e-2, min_lr=1e-4), [1e-2 * (2 / 3) ** 0.9, 1e-2 * (1 / 3) ** 0.9, 1e-4]),
    # ... with a warm-up over 2 epochs: 2/4 of the poly rate by the end of epoch 1
    (dict(schedule="poly", lr=1e-2, min_lr=1e-4, warmup_epochs=2), [5e-3 * (2 / 3) ** 0.9, 1e-2 * (1 / 3) ** 0.9,
                                                                    1e-4]),
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
    assert s["config"]["schedule"] == settings.get("schedule", "poly")


class Clock:
    """A clock for ``time.monotonic`` that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def fake_clock(monkeypatch, now: float, per_step: float) -> Clock:
    """Training's clock, advanced by ``per_step`` seconds by the forward and backward passes of each step."""
    clock = Clock(now)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(trainer, "time", clock)
    accumulate = loop._Run._accumulate

    def timed(self, batches, running):
        accumulate(self, batches, running)
        clock.now += per_step

    monkeypatch.setattr(loop._Run, "_accumulate", timed)
    return clock


POLY_TIMED = dict(TINY, schedule="poly", lr=1e-2, min_lr=1e-4, max_minutes=1.0, steps_per_epoch=5)


def test_poly_decays_over_max_minutes_and_a_resumed_run_continues_on_the_same_curve(tilesets, tmp_path, monkeypatch):
    # Each step takes 6 s of a 60 s budget: the last step of epoch 1 is at progress 30/60, of epoch 2 at 60/60,
    # where the run stops for time, at --min-lr.
    fake_clock(monkeypatch, 100.0, 6.0)
    straight = train(tilesets[2], tmp_path / "s.pt", config=TrainConfig(**{**POLY_TIMED, "epochs": 100}))
    assert straight["stopped"] == "time" and straight["epochs_run"] == 2 and straight["steps"] == 10
    want = [1e-2 * 0.5**0.9, 1e-4]
    assert [r["lr"] for r in logged(tmp_path / "s.log.jsonl")] == pytest.approx(want, rel=1e-12)
    # One epoch, then resumed an hour later by the clock: progress goes on from the checkpoint's 30 s, not from 0
    # (which would give epoch 2 the rate of epoch 1). The resumed run gets --max-minutes afresh, so --epochs ends it.
    train(tilesets[2], tmp_path / "r.pt", config=TrainConfig(**{**POLY_TIMED, "epochs": 1}))
    assert torch.load(tmp_path / "r.ckpt", weights_only=True)["elapsed"] == 30.0
    fake_clock(monkeypatch, 3700.0, 6.0)
    resumed = train(tilesets[2], tmp_path / "r.pt", config=TrainConfig(**{**POLY_TIMED, "epochs": 2}), resume=True)
    assert resumed["epochs_run"] == 2 and resumed["steps"] == 10 and resumed["resumed_from"] == 1
    assert [r["lr"] for r in logged(tmp_path / "r.log.jsonl")] == pytest.approx(want, rel=1e-12)
    a, b = weights(tmp_path / "s.pt"), weights(tmp_path / "r.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
