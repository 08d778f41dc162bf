"""Tests of rockseg.training.settings: the checks of TrainConfig, tile_for, halo_for and the paths beside a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from rockseg import models
from rockseg.errors import InputError, MissingInputError
from rockseg.training import TrainConfig, train
from rockseg.training import settings
from tests.training.helpers import TINY


def test_halo_and_log_path():
    assert [settings.halo_for(s) for s in (8, 16, 48, 64, 256)] == [2, 2, 8, 10, 42]
    assert settings.log_path_for("runs/model.pt") == Path("runs/model.log.jsonl")
    assert settings.log_path_for("model") == Path("model.log.jsonl")


def test_tile_for_rounds_up_to_the_divisor():
    assert settings.tile_for(16, 3) == 64 and settings.tile_for(16, 2) == 256
    assert settings.tile_for(20, 3, multiple=16) == 64 and settings.tile_for(300, 2, multiple=32) == 320
    assert settings.tile_for(96, 3, multiple=32) == 96
    assert models.tile_multiple("unet", dict(spatial_dims=2, classes=2, base_channels=4, depth=4)) == 16


def test_more_checks_before_training(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    cases = [
        (dict(loss="ce+dcie"), InputError, "did you mean 'dice'"),
        (dict(optimizer="adma"), InputError, "--optimizer 'adma' is unknown \\(did you mean 'adam'"),
        (dict(schedule="cos"), InputError, "--schedule"),
        (dict(augment="strnog"), InputError, "did you mean 'strong'"),
        (dict(precision="fp16"), InputError, "--precision"),
        (dict(norm="group"), InputError, "--norm"),
        (dict(act="gelu"), InputError, "--act"),
        (dict(fraction=0.0), InputError, "--fraction 0.0 must be above 0"),
        (dict(fraction=1.5), InputError, "--fraction"),
        (dict(fraction=0.5, steps_per_epoch=3), InputError, "give only one of them"),
        (dict(accumulate=0), InputError, "--accumulate"),
        (dict(weight_decay=-1.0), InputError, "--weight-decay"),
        (dict(schedule="exp", min_lr=0.0), InputError, "--min-lr"),
        (dict(schedule="exp", min_lr=1.0), InputError, "at most --lr"),
        (dict(min_lr=0.1, lr=0.01), InputError, "--min-lr 0.1 must be at most --lr 0.01 for --schedule poly"),
        (dict(sampling="randon"), InputError, "--sampling 'randon' is unknown \\(did you mean 'random'"),
        (dict(iou_alpha=0.0), InputError, "--iou-alpha"),
        (dict(focal_gamma=-1.0), InputError, "--focal-gamma"),
        (dict(seed=-1), InputError, "--seed"),
        (dict(class_weights="1,2,3"), InputError, "gives 3 weights but tile set .* has 2 classes"),
        (dict(class_weights="heavy"), InputError, "--class-weights 'heavy'"),
        (dict(encoder="resnet1000"), InputError, "--encoder"),
        (dict(freeze_encoder=True), InputError, "--freeze-encoder needs a backbone encoder: add --encoder"),
        (dict(encoder_weights="w.pth"), InputError, "--encoder-weights needs a backbone encoder"),
        (dict(arch="resunet", encoder="resnet18"), InputError, "--arch resunet takes no --encoder"),
        (dict(encoder="resnet18", encoder_weights=str(tmp_path / "nope.pth")), MissingInputError,
         "nope.pth does not exist"),
        (dict(depth=5), InputError, "--arch unet with --depth 5 needs a multiple of 32"),
    ]
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            train(tilesets[2], out, config=TrainConfig(**{**TINY, **change}))
    assert list(tmp_path.iterdir()) == []


def test_epochs_default_to_the_time_budget():
    from rockseg.training.settings import DEFAULT_EPOCHS, UNLIMITED_EPOCHS

    assert TrainConfig().epochs == DEFAULT_EPOCHS == 50
    assert TrainConfig(max_minutes=15).epochs == UNLIMITED_EPOCHS  # the time decides, and poly ends at min_lr
    assert TrainConfig(max_minutes=15, epochs=7).epochs == 7
