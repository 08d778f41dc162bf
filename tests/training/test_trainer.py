"""Tests of rockseg.training.trainer: the model file, reproducibility, the checks before training, learning, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.models import load_model, read_model_file
from rockseg.training import TrainConfig, evaluate, iou_from_confusion, make_tiles, read_tiles, train
from rockseg.training import settings
from tests.training.helpers import TINY, two_phase, weights


@pytest.mark.parametrize("dims", [2, 3])
def test_model_file_holds_the_best_model(tilesets, tmp_path, dims):
    out = tmp_path / "model.pt"
    lines: list[str] = []
    summary = train(tilesets[dims], out, config=TrainConfig(**{**TINY, "epochs": 2}), dims=dims, log=lines.append)
    payload = read_model_file(out)
    attrs, arrays = read_tiles(tilesets[dims])
    assert payload["arch"] == "unet" and payload["spatial_dims"] == dims and payload["in_channels"] == 1
    # depth planned from the 16-voxel tiles: pooled twice down to a 4-voxel bottleneck
    assert payload["arch_args"] == dict(spatial_dims=dims, in_channels=1, classes=2, base_channels=4, depth=2,
                                        norm="batch", act="relu")
    assert payload["phases"] == {"0": "pore", "1": "grain"}
    assert payload["normalization"] == attrs["intensity"]
    assert payload["tile"] == (64 if dims == 3 else 256) == settings.tile_for(16, dims)
    assert payload["halo"] == settings.halo_for(payload["tile"])
    t = payload["training"]
    assert t["epochs_run"] == 2 and t["steps"] == 4 and t["stopped"] == "epochs"
    assert t["config"]["base_channels"] == 4 and t["tiles"] == str(tilesets[dims].resolve())
    assert summary["best_epoch"] == t["best_epoch"] and summary["model"] == str(out) and summary["epochs"] == 2

    # The weights written are those of the best epoch: the reloaded model scores exactly what the log says.
    model = load_model(out)
    confusion = evaluate(model, arrays["val/image"], arrays["val/labels"], stats=attrs["intensity"], classes=2,
                         device=torch.device("cpu"), batch_size=8)
    iou = iou_from_confusion(confusion)
    assert round(float(np.nanmean(iou)), 6) == t["best_val_mean_iou"]
    log = [json.loads(line) for line in (tmp_path / "model.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and len(lines) == 3 and lines[-1].startswith("specks: ")
    assert log[t["best_epoch"] - 1]["val_mean_iou"] == t["best_val_mean_iou"]
    # the kept epoch is the best by IoU and Euler error together
    assert t["best_val_score"] == max(r["val_score"] for r in log) == log[t["best_epoch"] - 1]["val_score"]
    assert {"loss", "val_iou", "val_score", "seconds", "partial"} <= log[0].keys()
    assert all(p["euler_error"] is None or p["euler_error"] >= 0 for p in log[0]["val_iou"])
    assert [p["name"] for p in log[0]["val_iou"]] == ["pore", "grain"]

    # Reloading twice gives the same network, in eval mode, with outputs of the right shape.
    x = torch.rand((1, 1) + (16,) * dims)
    with torch.no_grad():
        y1, y2 = model(x), load_model(out)(x)
    assert y1.shape == (1, 2) + (16,) * dims and torch.equal(y1, y2)


def test_same_seed_same_weights(tilesets, tmp_path):
    cfg = TrainConfig(**{**TINY, "steps_per_epoch": 3})
    train(tilesets[2], tmp_path / "a.pt", config=cfg)
    train(tilesets[2], tmp_path / "b.pt", config=cfg)
    train(tilesets[2], tmp_path / "c.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 3, "seed": 1}))
    a, b, c = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt"), weights(tmp_path / "c.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checks_before_training(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    cases = [
        (dict(config=TrainConfig(**TINY), dims=3), tilesets[2], InputError, "--dims 3 does not match"),
        (dict(config=TrainConfig(**{**TINY, "depth": 5})), tilesets[2], InputError, "--depth 5 needs a multiple of 32"),
        (dict(config=TrainConfig(**{**TINY, "loss": "dic"})), tilesets[2], InputError, "did you mean 'dice'"),
        (dict(config=TrainConfig(**{**TINY, "arch": "Unet"})), tilesets[2], InputError, "did you mean 'unet'"),
        (dict(config=TrainConfig(**{**TINY, "lr": -1.0})), tilesets[2], InputError, "--lr"),
        (dict(config=TrainConfig(**{**TINY, "max_minutes": 0})), tilesets[2], InputError, "--max-minutes"),
        (dict(config=TrainConfig(**{**TINY, "batch_size": 0})), tilesets[2], InputError, "--batch-size"),
        (dict(config=TrainConfig(**{**TINY, "device": "tpu"})), tilesets[2], InputError, "--device 'tpu'"),
        (dict(config=TrainConfig(**TINY)), tmp_path / "none.zarr", MissingInputError, "does not exist"),
        (dict(config=TrainConfig(**TINY)), tilesets[2].parent / "img.zarr", InputError, "not a rockseg tile set"),
    ]
    for kwargs, tiles, exc, match in cases:
        with pytest.raises(exc, match=match):
            train(tiles, out, **kwargs)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(tilesets[2], out, config=TrainConfig(**TINY))
    assert out.read_bytes() == b"old"
    train(tilesets[2], out, config=TrainConfig(**TINY), overwrite=True)
    assert read_model_file(out)["spatial_dims"] == 2


def test_learns_a_two_phase_problem(tmp_path):
    image, labels = two_phase((8, 48, 48), seed=4, noise=15)
    for name, data in (("i.zarr", image), ("l.zarr", labels)):
        zarr.create_array(str(tmp_path / name), data=data, chunks=(8, 48, 48))
    make_tiles(tmp_path / "i.zarr", tmp_path / "l.zarr", tmp_path / "t.zarr", dims=2, size=16, count=64)
    s = train(tmp_path / "t.zarr", tmp_path / "m.pt",
              config=TrainConfig(base_channels=4, batch_size=8, epochs=5, steps_per_epoch=8, lr=1e-2, num_threads=1))
    assert s["best_val_mean_iou"] > 0.8, s


def test_model_file_records_the_run(tilesets, tmp_path):
    out = tmp_path / "m.pt"
    config = TrainConfig(**{**TINY, "loss": "ce+logiou", "class_weights": "balanced", "augment": "strong",
                            "optimizer": "sgd", "schedule": "cosine", "act": "elu", "norm": "instance"})
    s = train(tilesets[2], out, config=config)
    t = read_model_file(out)["training"]
    assert t["loss_terms"] == ["ce", "logiou"] and len(t["class_weights"]) == 2
    assert t["augment"]["rotate"] > 0 and t["world_size"] == 1 and t["resumed_from"] is None
    assert t["config"]["optimizer"] == "sgd" and t["config"]["schedule"] == "cosine" and t["divisor"] == 4  # planned depth 2
    assert read_model_file(out)["arch_args"]["act"] == "elu" and "encoder" not in read_model_file(out)["arch_args"]
    assert Path(s["curve"]) == tmp_path / "m.curve.png"
    assert Path(s["curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = [json.loads(line) for line in Path(s["log"]).read_text().splitlines()]
    assert {"lr", "train_seconds", "world_size"} <= log[0].keys()
    # the speck size predict applies, chosen on the validation tiles with the kept weights
    post = read_model_file(out)["postprocess"]
    assert post["specks"] == s["specks"] in [row["specks"] for row in post["tried"]]
    best = max(post["tried"], key=lambda row: row["score"])["score"]
    assert next(row for row in post["tried"] if row["specks"] == post["specks"])["score"] == best


def test_cli_train_with_the_new_options(tilesets, tmp_path):
    from typer.testing import CliRunner

    from rockseg.cli import app

    runner = CliRunner()
    args = ["train", str(tilesets[2]), "-o", str(tmp_path / "m.pt"), "--base-channels", "4", "--epochs", "2",
            "--steps-per-epoch", "1", "--batch-size", "2", "--threads", "1", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--loss", "focal+dice", "--focal-gamma", "1.5", "--class-weights", "1,3",
                                 "--optimizer", "adamw", "--weight-decay", "1e-4", "--schedule", "exp",
                                 "--min-lr", "1e-4", "--warmup-epochs", "1", "--augment", "strong", "--act", "elu",
                                 "--norm", "instance", "--accumulate", "2", "--precision", "float32"])
    assert result.exit_code == 0, result.output
    c = read_model_file(tmp_path / "m.pt")["training"]["config"]
    assert (c["loss"], c["focal_gamma"], c["class_weights"], c["optimizer"], c["schedule"], c["augment"],
            c["accumulate"]) == ("focal+dice", 1.5, "1,3", "adamw", "exp", "strong", 2)
    result = runner.invoke(app, [*args, "--overwrite"])  # the defaults: fresh patches, poly schedule
    assert result.exit_code == 0, result.output
    t = read_model_file(tmp_path / "m.pt")["training"]
    assert (t["config"]["sampling"], t["config"]["schedule"], t["sampling"]) == ("random", "poly", "random")
    result = runner.invoke(app, [*args, "--sampling", "fixed", "--schedule", "none", "--overwrite"])
    assert result.exit_code == 0, result.output
    t = read_model_file(tmp_path / "m.pt")["training"]
    assert (t["config"]["sampling"], t["config"]["schedule"], t["sampling"]) == ("fixed", "none", "fixed")
    result = runner.invoke(app, [*args, "--epochs", "3", "--resume"])  # other settings: refused, one line
    assert result.exit_code == 2 and "resume with the same settings" in result.output
    result = runner.invoke(app, [*args, "--loss", "ce+dise", "--overwrite"])
    assert result.exit_code == 2 and "did you mean 'dice'" in result.output
    assert "Recipes" in runner.invoke(app, ["train", "--help"]).output
