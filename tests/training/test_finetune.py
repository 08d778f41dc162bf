"""Fine-tuning (``train --init``): weights copied, a new output layer for other phases, encoder frozen for N
epochs, the start recorded, and the init models that do not fit refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.errors import InputError
from rockseg.models import build_model, file_sha256, read_model_file, resolve_model, save_model_file
from rockseg.training import TrainConfig, train
from rockseg.training.finetune import encoder_modules, load_init, resolve_init
from tests.training.helpers import TINY, tile_set, two_phase, weights

TINY_INIT = {k: v for k, v in TINY.items() if k != "base_channels"}


@pytest.fixture(scope="module")
def base_model(tilesets, tmp_path_factory) -> Path:
    """A tiny 3D UNet trained for one short epoch on the 2-phase tile set: the model to start from."""
    out = tmp_path_factory.mktemp("init") / "base.pt"
    train(tilesets[3], out, config=TrainConfig(**TINY, device="cpu"))
    return out


@pytest.fixture(scope="module")
def three_phase(tmp_path_factory) -> Path:
    """A 3D tile set of three phases (the grains split by grey value)."""
    image, labels = two_phase((32, 32, 32), seed=1)
    labels = np.where((labels == 1) & (image > 140), 2, labels).astype(np.uint8)
    return tile_set(tmp_path_factory.mktemp("three"), image, labels, (16, 16, 16), "t3.zarr", dims=3, size=16,
                    count=8, phases={0: "pore", 1: "grain", 2: "bright"})


def test_init_copies_every_weight_and_keeps_the_network(base_model, tilesets):
    config, init = resolve_init(TrainConfig(init=str(base_model)), tilesets[3], dims=3, classes=2)
    payload = read_model_file(base_model)
    assert (config.arch, config.base_channels, config.depth) == ("unet", 4, 2)  # depth planned for 16-voxel tiles
    assert payload["arch_args"]["depth"] == 2
    net = build_model("unet", **{**payload["arch_args"], "classes": 2})
    loaded = load_init(net, init, classes=2)
    assert loaded == {"loaded": len(payload["state_dict"]), "new": []}
    for key, value in net.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key]), key


def test_another_number_of_phases_gets_a_new_output_layer(base_model, three_phase, tmp_path):
    out = tmp_path / "three.pt"
    summary = train(three_phase, out, config=TrainConfig(**TINY_INIT, init=str(base_model), device="cpu",
                                                          freeze_encoder_epochs=1))
    start, tuned = weights(base_model), weights(out)
    assert tuned["logits.weight"].shape[0] == 3 and start["logits.weight"].shape[0] == 2
    assert summary["init"]["new"] == ["logits.bias", "logits.weight"]
    assert summary["init"]["loaded"] == len(start) - 2
    # the encoder was frozen for the one epoch run: its weights and normalisation statistics are the init's
    enc = [k for k in start if k.startswith(("enc1.", "downs.", "bottleneck."))]
    assert enc and all(torch.equal(tuned[k], start[k]) for k in enc)
    dec = [k for k in start if k.startswith("ups.") and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], start[k]) for k in dec)
    assert read_model_file(out)["phases"] == {"0": "pore", "1": "grain", "2": "bright"}


def test_encoder_trains_again_after_the_frozen_epochs(base_model, tilesets, tmp_path):
    out = tmp_path / "m.pt"
    train(tilesets[3], out, config=TrainConfig(**{**TINY_INIT, "epochs": 2}, init=str(base_model), device="cpu",
                                               freeze_encoder_epochs=1, lr=1e-2))
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)  # the weights after the last epoch
    start = weights(base_model)
    assert not torch.equal(ckpt["model"]["enc1.0.weight"], start["enc1.0.weight"])


@pytest.fixture(scope="module")
def tiles48(tmp_path_factory) -> Path:
    """A 3D tile set of 48^3 patches: the smallest the shipped default (depth 4) may be fine-tuned on."""
    image, labels = two_phase((48, 48, 96), seed=2)
    return tile_set(tmp_path_factory.mktemp("t48"), image, labels, (48, 48, 48), "t48.zarr", dims=3, size=48,
                    count=2, phases={0: "pore", 1: "grain"})


def test_model_file_records_the_shipped_default_it_started_from(tiles48, tmp_path):
    out = tmp_path / "tuned.pt"
    result = CliRunner().invoke(app, ["train", str(tiles48), "-o", str(out), "--init", "default",
                                      "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                                      "--threads", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    training = read_model_file(out)["training"]
    default = resolve_model("default")
    assert training["init"]["given"] == "default"
    assert training["init"]["sha256"] == file_sha256(default)
    assert training["config"]["init"] == "default"
    assert read_model_file(out)["arch_args"] == read_model_file(default)["arch_args"]


def test_plain_encoder_modules():
    net = build_model("unet", spatial_dims=2, classes=2, base_channels=4, depth=2)
    assert [type(m).__name__ for m in encoder_modules(net)] == ["ConvBlock", "ModuleList", "Down"]
    backbone = build_model("unet", spatial_dims=2, classes=2, base_channels=4, depth=2, encoder="resnet18")
    assert encoder_modules(backbone) == [backbone.encoder]


@pytest.mark.parametrize("case", ["dims", "channels", "arch", "depth", "weights"])
def test_init_that_does_not_fit_is_refused(base_model, tilesets, tmp_path, case):
    init = base_model
    args = []
    if case == "dims":
        tiles = tilesets[2]
    else:
        tiles = tilesets[3]
    if case == "channels":
        init = tmp_path / "rgb.pt"
        net = build_model("unet", spatial_dims=3, in_channels=3, classes=2, base_channels=4, depth=3)
        save_model_file(init, net, arch="unet", arch_args=dict(spatial_dims=3, in_channels=3, classes=2,
                        base_channels=4, depth=3), spatial_dims=3, in_channels=3, phases={0: "a", 1: "b"},
                        normalization={"p_low": 0, "p_high": 1}, tile=64, halo=8)
    if case == "arch":
        args = ["--arch", "resunet"]
    if case == "depth":
        args = ["--depth", "1"]  # the base model's depth was planned as 2
    if case == "weights":
        args = ["--encoder-weights", str(base_model)]
    out = tmp_path / "bad.pt"
    result = CliRunner().invoke(app, ["train", str(tiles), "-o", str(out), "--init", str(init), "--epochs", "1",
                                      "--device", "cpu", *args])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--init" in message and str(init.name) in message
    assert not out.exists()


def test_tiles_too_small_for_the_init_network_are_refused(tilesets, tiles48, tmp_path):
    """16^3 patches leave the default model (depth 4) one voxel per axis at its bottleneck: refused in one line
    naming the tile size that works, before anything is written; 48^3 patches are accepted (the test above)."""
    out = tmp_path / "tuned.pt"
    result = CliRunner().invoke(app, ["train", str(tilesets[3]), "-o", str(out), "--init", "default", "--epochs",
                                      "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "tiles of 16 voxels" in message and "--init default" in message and "--size 48" in message
    assert not out.exists() and not (tmp_path / "tuned.ckpt").exists()


def test_unknown_init_name_is_refused(tilesets, tmp_path):
    with pytest.raises(InputError, match="neither a file nor a shipped model"):
        train(tilesets[3], tmp_path / "m.pt", config=TrainConfig(init="no-such-model", device="cpu"))
