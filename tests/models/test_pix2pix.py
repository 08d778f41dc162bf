"""pix2pix: the PatchGAN discriminator, a run against it, and the plain unet model file it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.models import load_model, read_model_file
from rockseg.models.pix2pix import PatchDiscriminator
from rockseg.training import TrainConfig, train
from rockseg.training.adversarial import _Adversary, discriminator_layers
from tests.training.helpers import TINY, tile_set, two_phase


@pytest.mark.parametrize("dims,size,patches", [(2, 32, 4), (3, 16, 2)])
def test_discriminator_gives_one_logit_per_patch(dims, size, patches):
    net = PatchDiscriminator(dims, 1, 3, base_channels=4, layers=discriminator_layers(size))
    out = net(torch.randn(2, 1, *(size,) * dims), torch.rand(2, 3, *(size,) * dims))
    assert out.shape == (2, 1, *(patches,) * dims)


def test_discriminator_layers_fit_small_tiles():
    assert [discriminator_layers(s) for s in (8, 12, 16, 24, 64)] == [2, 2, 3, 3, 3]


def test_the_discriminator_learns_to_tell_labels_from_a_blur():
    torch.manual_seed(0)
    adversary = _Adversary(dims=2, classes=2, size=16, device=torch.device("cpu"), bf16=False, lr=2e-3, weight=1.0,
                           ignore=None)
    x = torch.randn(4, 1, 16, 16)
    target = (x[:, 0] > 0).long()
    blurred = torch.zeros(4, 2, 16, 16)  # a generator that says 50/50 everywhere
    first = None
    for _ in range(30):
        adversary.discriminator_step(x, blurred, target)
        first = first if first is not None else float(adversary.last_loss)
    assert float(adversary.last_loss) < 0.5 * first
    sharp = 20.0 * (torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() - 0.5)
    with torch.no_grad():  # the generator pays more for the blur than for the labels themselves
        assert float(adversary.generator_term(x, blurred)) > float(adversary.generator_term(x, sharp))


@pytest.fixture(scope="module")
def tiles2d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("p2p")
    tile_set(d, *two_phase((8, 64, 64), seed=2), (4, 32, 32), dims=2, size=16, count=16)
    return d


def test_pix2pix_writes_a_plain_unet_that_predict_runs(tiles2d, tmp_path):
    out = tmp_path / "p2p.pt"
    result = CliRunner().invoke(app, ["train", str(tiles2d / "t.zarr"), "-o", str(out), "--arch", "pix2pix",
                                      "--base-channels", "4", "--epochs", "2", "--steps-per-epoch", "2",
                                      "--batch-size", "2", "--threads", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    payload = read_model_file(out)
    assert payload["arch"] == "unet" and payload["training"]["config"]["arch"] == "pix2pix"
    assert payload["training"]["discriminator"]["layers"] == 3
    assert not any(k.startswith("net.") for k in payload["state_dict"])  # the generator only
    load_model(out)
    ckpt = torch.load(tmp_path / "p2p.ckpt", weights_only=True)
    assert set(ckpt["adversary"]) == {"net", "optimizer"}
    result = CliRunner().invoke(app, ["predict", str(tiles2d / "img.zarr"), "-o", str(tmp_path / "pred.zarr"),
                                      "-m", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pred = zarr.open_array(str(tmp_path / "pred.zarr"), mode="r")[...]
    assert pred.shape == (8, 64, 64) and set(np.unique(pred)) <= {0, 1}


def test_pix2pix_resumes_with_its_discriminator(tiles2d, tmp_path):
    config = dict(TINY, arch="pix2pix", device="cpu", epochs=2, schedule="none")
    straight = train(tiles2d / "t.zarr", tmp_path / "a.pt", config=TrainConfig(**config))
    train(tiles2d / "t.zarr", tmp_path / "b.pt", config=TrainConfig(**{**config, "epochs": 1}))
    resumed = train(tiles2d / "t.zarr", tmp_path / "b.pt", config=TrainConfig(**config), resume=True)
    a, b = read_model_file(tmp_path / "a.pt")["state_dict"], read_model_file(tmp_path / "b.pt")["state_dict"]
    assert resumed["resumed_from"] == 1 and straight["epochs"] == 2
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (torch.load(tmp_path / f"{n}.ckpt", weights_only=True) for n in "ab")  # the last states, both players
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert all(torch.equal(ca["adversary"]["net"][k], cb["adversary"]["net"][k]) for k in ca["adversary"]["net"])
