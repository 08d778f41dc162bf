"""Sparse labels: unlabelled voxels (255 by default) are never a patch centre, a loss term, a validation count or a
scored voxel; an --unlabelled value that is a phase, or a region with no labelled voxel, is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.training import TrainConfig, make_tiles, read_tiles, train
from rockseg.training.data import _Part
from rockseg.training.losses import loss_function
from rockseg.training.validation import _validation_counts
from tests.training.helpers import TINY, two_phase, write

EVERY = 4  # labelled slices: z = 0, 4, 8...


def sparse(labels: np.ndarray, every: int = EVERY) -> np.ndarray:
    """``labels`` with only every ``every``-th z slice labelled, the rest 255."""
    out = np.full_like(labels, 255)
    out[::every] = labels[::every]
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("sparse")
    image, labels = two_phase((32, 32, 32), seed=3)
    return write(d / "img.zarr", image), write(d / "lab.zarr", sparse(labels)), image, labels


def test_2d_tiles_are_cut_from_labelled_slices_only(pair, tmp_path):
    img, lab, _, _ = pair
    s = make_tiles(img, lab, tmp_path / "t.zarr", dims=2, size=16, count=24)
    attrs, arrays = read_tiles(tmp_path / "t.zarr")
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    for part in ("train", "val"):
        assert (group[f"{part}/origins"][:, 0] % EVERY == 0).all()
        assert (arrays[f"{part}/labels"] != 255).all()
    assert attrs["unlabelled"] == 255 and attrs["classes"] == 2
    assert attrs["unlabelled_voxels"]["train"] == 0 and attrs["unlabelled_voxels"]["regions"] > 0
    assert s["unlabelled"] == 255


def test_3d_tiles_hold_labelled_voxels_and_record_the_unlabelled(pair, tmp_path):
    img, lab, _, _ = pair
    make_tiles(img, lab, tmp_path / "t.zarr", dims=3, size=8, count=32, balance=False)
    attrs, arrays = read_tiles(tmp_path / "t.zarr")
    for part in ("train", "val"):
        labels = arrays[f"{part}/labels"]
        assert all((tile != 255).any() for tile in labels)
        hist = np.bincount(labels.ravel(), minlength=256)
        assert attrs["class_counts"][part] == hist[:2].tolist()
        assert attrs["unlabelled_voxels"][part] == hist[255] > 0


def test_dense_labels_sample_as_before(pair, tmp_path):
    img, _, image, labels = pair
    dense = write(tmp_path / "dense.zarr", labels)
    a = make_tiles(img, dense, tmp_path / "a.zarr", dims=3, size=8, count=8)
    make_tiles(img, dense, tmp_path / "b.zarr", dims=3, size=8, count=8, unlabelled=None)
    oa = zarr.open_group(str(tmp_path / "a.zarr"))["train/origins"][...]
    ob = zarr.open_group(str(tmp_path / "b.zarr"))["train/origins"][...]
    np.testing.assert_array_equal(oa, ob)
    assert a["unlabelled_voxels"] == 0


@pytest.mark.parametrize("term", ["ce", "dice", "focal", "logiou", "cldice"])
def test_every_loss_term_ignores_unlabelled_voxels(term):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8, 8))
    target[:, ::2] = 255
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss = loss_function(term, ignore=255, class_weights=[1.0, 2.0, 0.5] if term in ("ce", "focal") else None)
    value = loss(logits, target)
    value.backward()
    unlabelled = (target == 255).unsqueeze(1).expand_as(logits)
    assert torch.isfinite(value)
    assert (logits.grad[unlabelled] == 0).all() and (logits.grad[~unlabelled] != 0).any()
    other = logits.detach().clone()
    other[unlabelled] = torch.randn(int(unlabelled.sum()))
    assert torch.allclose(loss(other, target), value.detach())


def test_cross_entropy_is_the_mean_over_labelled_voxels():
    torch.manual_seed(1)
    target = torch.randint(0, 2, (3, 16, 16))
    target[:, :5] = 255
    logits = torch.randn(3, 2, 16, 16)
    keep = target != 255
    reference = F.cross_entropy(logits.movedim(1, -1)[keep], target[keep])
    assert torch.allclose(loss_function("ce", ignore=255)(logits, target), reference)


def test_validation_counts_skip_unlabelled_voxels():
    class Threshold(torch.nn.Module):
        def forward(self, x):
            return torch.cat([-x, x], 1)

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 2, size=(4, 8, 8)).astype(np.uint8)
    labels[:, :3] = 255
    part = _Part(image, labels, np.zeros(4, np.float32), np.ones(4, np.float32))
    confusion, euler = _validation_counts(Threshold(), part, classes=2, device=torch.device("cpu"), batch_size=3,
                                          bf16=False, ignore=255)
    pred = (image > 0).astype(np.int64)
    keep = labels != 255
    expected = np.bincount(labels[keep].astype(np.int64) * 2 + pred[keep], minlength=4).reshape(2, 2)
    np.testing.assert_array_equal(confusion, expected)
    assert not euler.any()  # every tile is partly unlabelled: none counts for the Euler error


def test_training_on_sparse_labels(pair, tmp_path):
    img, lab, _, _ = pair
    make_tiles(img, lab, tmp_path / "t.zarr", dims=3, size=8, count=16)
    summary = train(tmp_path / "t.zarr", tmp_path / "m.pt", config=TrainConfig(**TINY, device="cpu", loss="ce+dice"))
    assert summary["unlabelled"] == 255
    assert summary["best_val_mean_iou"] >= 0


def _tile(args: list[str]):
    return CliRunner().invoke(app, ["tile", *args])


def test_an_unlabelled_value_that_is_a_phase_is_refused(pair, tmp_path):
    img, lab, _, labels = pair
    three = write(tmp_path / "three.zarr", np.where(labels == 1, 2, labels).astype(np.uint8))
    result = _tile([str(img), str(three), "-o", str(tmp_path / "a.zarr"), "--size", "8", "--unlabelled", "1"])
    assert result.exit_code == 2 and "--unlabelled 1" in result.output and "phase label" in result.output
    assert not (tmp_path / "a.zarr").exists()
    result = _tile([str(img), str(lab), "-o", str(tmp_path / "b.zarr"), "--size", "8", "--phases",
                    "0=pore,1=grain,255=other"])
    assert result.exit_code == 2 and "--unlabelled 255" in " ".join(result.output.split())


def test_no_labelled_voxel_in_the_validation_slab_is_refused(pair, tmp_path):
    img, _, _, labels = pair
    top = labels.copy()
    top[24:] = 255  # the validation slab (last fifth along z) is unlabelled
    lab = write(tmp_path / "top.zarr", top)
    result = _tile([str(img), str(lab), "-o", str(tmp_path / "t.zarr"), "--size", "8"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "no labelled voxel" in message and str(lab) in message
    assert not (tmp_path / "t.zarr").exists()


def test_score_skips_unlabelled_truth(pair, tmp_path):
    _, lab, _, labels = pair
    rng = np.random.default_rng(4)
    pred = np.where(rng.random(labels.shape) < 0.1, 1 - labels, labels).astype(np.uint8)
    p = write(tmp_path / "pred.zarr", pred)
    result = CliRunner().invoke(app, ["score", str(p), str(lab), "--unlabelled", "255", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    truth = sparse(labels)
    keep = truth != 255
    expected = np.bincount(truth[keep].astype(np.int64) * 2 + pred[keep], minlength=4).reshape(2, 2)
    assert doc["confusion"] == expected.tolist()
    assert doc["voxels"] == int(keep.sum())
