"""The per-voxel linear classifier: learned thresholds, any tile edge, trained and run like every network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from rockseg.errors import InputError
from rockseg.models import build_model, centre_logits, fold_batch_norm, tile_multiple
from rockseg.models.linear import LinearClassifier
from rockseg.vocabulary import ARCH_NAMES


def test_logits_are_an_affine_map_of_each_voxel():
    torch.manual_seed(0)
    model = build_model("linear", spatial_dims=3, classes=3).eval()
    assert isinstance(model, LinearClassifier) and "linear" in ARCH_NAMES
    w = model.logits.weight.detach().reshape(3)
    b = model.logits.bias.detach()
    x = torch.randn(2, 1, 5, 3, 7)  # any edge: divisor 1
    with torch.no_grad():
        out = model(x)
    want = x * w.view(1, 3, 1, 1, 1) + b.view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    assert model.divisor == 1 and tile_multiple("linear", {"depth": 5}) == 1
    assert sum(p.numel() for p in model.parameters()) == 6


def test_hand_set_weights_are_grey_value_thresholds():
    # logits 0, 10 x - 3, 20 x - 10: class 0 below 0.3, class 1 up to 0.7, class 2 above
    model = build_model("linear", spatial_dims=2, classes=3).eval()
    with torch.no_grad():
        model.logits.weight.copy_(torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1))
        model.logits.bias.copy_(torch.tensor([0.0, -3.0, -10.0]))
    x = torch.tensor([0.0, 0.29, 0.31, 0.5, 0.69, 0.71, 1.0]).view(1, 1, 1, 7)
    with torch.no_grad():
        assert model(x).argmax(1).flatten().tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_centre_cuts_the_input_and_equals_the_cut_output():
    model = build_model("linear", spatial_dims=3, classes=4).eval()
    x = torch.randn(2, 1, 12, 10, 14)
    seen = []
    forward = model.forward

    def spy(inputs):  # the forward pass computes what it is given, so record its input's edge
        seen.append(tuple(inputs.shape[2:]))
        return forward(inputs)

    model.forward = spy
    with torch.no_grad():
        whole = model(x)
        centre = centre_logits(model, x, (3, 0, 5))
    assert seen[-1] == (6, 10, 4)  # the margin is never computed
    torch.testing.assert_close(centre, whole[:, :, 3:-3, :, 5:-5])
    assert fold_batch_norm(model) == 0


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="unknown normalisation 'bach'"):
        build_model("linear", norm="bach")
    with pytest.raises(InputError, match="classes must be a positive integer, not 0"):
        build_model("linear", classes=0)
    with pytest.raises(InputError, match="spatial_dims must be 2 or 3, not 4"):
        build_model("linear", spatial_dims=4)
    with pytest.raises(InputError, match="takes no argument 'encoder'"):
        build_model("linear", encoder="resnet18")


def test_learns_thresholds_that_separate_three_phases():
    """Three grey-value bands with noise: a few hundred Adam steps find thresholds close to the truth."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (4, 1, 16, 16))
    x = torch.from_numpy((labels * 0.4 + rng.normal(0, 0.05, labels.shape)).astype(np.float32))
    target = torch.from_numpy(labels[:, 0])
    model = build_model("linear", spatial_dims=2, classes=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    with torch.no_grad():
        assert (model(x).argmax(1) == target).float().mean() > 0.99


@pytest.mark.slow
def test_train_and_predict_through_the_command_line(tmp_path):
    """``rockseg train --arch linear``, then ``rockseg predict`` with a tile edge no UNet takes."""
    from typer.testing import CliRunner

    from rockseg.cli import app
    from rockseg.models import read_model_file

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (20, 20, 20)).astype(np.uint8)
    image = (labels * 120 + 60 + rng.normal(0, 10, labels.shape)).clip(0, 255).astype(np.uint8)
    for name, data in (("image.zarr", image), ("labels.zarr", labels)):
        zarr.create_array(str(tmp_path / name), data=data, chunks=(10, 10, 10))
    runner = CliRunner()
    for args in (
        ["tile", str(tmp_path / "image.zarr"), str(tmp_path / "labels.zarr"), "-o", str(tmp_path / "t.zarr"),
         "--size", "8", "--count", "16"],
        ["train", str(tmp_path / "t.zarr"), "-o", str(tmp_path / "m.pt"), "--arch", "linear", "--epochs", "2",
         "--steps-per-epoch", "10", "--batch-size", "4", "--lr", "0.1", "--device", "cpu"],
        ["predict", str(tmp_path / "image.zarr"), "-m", str(tmp_path / "m.pt"), "-o", str(tmp_path / "p.zarr"),
         "--tile", "9", "--halo", "2", "--block", "10", "--device", "cpu"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    assert read_model_file(tmp_path / "m.pt")["arch"] == "linear"
    got = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    assert (got == labels).mean() > 0.99
