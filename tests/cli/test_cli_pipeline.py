"""The whole pipeline as real subprocesses, and ``predict`` with no options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from skimage.measure import euler_number

from tests.helpers import run_rockseg as rockseg


@pytest.mark.slow
def test_pipeline_end_to_end_as_subprocesses(tmp_path):
    from rockseg.synthetic import synthetic_rock

    image, labels = synthetic_rock((40, 48, 48), seed=3)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    assert rockseg("convert", tmp_path / "img.npy", tmp_path / "img.zarr").returncode == 0
    assert rockseg("convert", tmp_path / "lab.npy", tmp_path / "lab.zarr").returncode == 0
    proc = rockseg("tile", tmp_path / "img.zarr", tmp_path / "lab.zarr", "-o", tmp_path / "tiles.zarr",
                   "--dims", "3", "--size", "16", "--count", "32")
    assert proc.returncode == 0, proc.stderr
    proc = rockseg("train", tmp_path / "tiles.zarr", "-o", tmp_path / "model.pt", "--dims", "3", "--arch", "unet",
                   "--base-channels", "4", "--depth", "2", "--epochs", "2", "--max-minutes", "0.3", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    preds = {}
    # the network's labels do not depend on the block edge (nor on which tiles share a batch: TilePool pads partial
    # batches); speck removal does (pieces touching a block's shared face are kept), hence --specks 0, whatever
    # speck size the model chose
    for block in (16, 24):
        out = tmp_path / f"pred{block}.zarr"
        # part 0 with the new spelling, part 1 with the old one that job-array scripts already use
        for option, shard in (("--part", "0/2"), ("--shard", "1/2")):
            proc = rockseg("predict", tmp_path / "img.zarr", "-m", tmp_path / "model.pt", "-o", out, "--device", "cpu",
                           "--tile", "16", "--halo", "4", "--block", str(block), "--batch-size", "4", "--specks", "0",
                           option, shard)
            assert proc.returncode == 0, proc.stderr
            if shard == "0/2":
                # half the blocks are missing: stitch must refuse and list them
                bad = rockseg("stitch", out, "-o", tmp_path / "final.zarr")
                assert bad.returncode == 1 and "blocks missing" in bad.stderr
                assert not (tmp_path / "final.zarr").exists()
        preds[block] = zarr.open_array(str(out))[...]
    np.testing.assert_array_equal(preds[16], preds[24])
    assert rockseg("stitch", tmp_path / "pred16.zarr", "-o", tmp_path / "final.zarr").returncode == 0
    proc = rockseg("score", tmp_path / "final.zarr", tmp_path / "lab.zarr", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"phases", "mean_iou", "accuracy", "confusion", "connectivity", "voxels"}
    assert doc["voxels"] == 40 * 48 * 48
    final = zarr.open_array(str(tmp_path / "final.zarr"))[...]
    for p in doc["phases"]:
        assert p["euler_pred"] == euler_number(final == p["label"], connectivity=3)
        assert p["euler_true"] == euler_number(labels == p["label"], connectivity=3)
    # the table output works too
    proc = rockseg("score", tmp_path / "final.zarr")
    assert proc.returncode == 0 and "euler" in proc.stdout.lower()


@pytest.mark.slow
def test_predict_with_no_options_uses_shipped_model(tmp_path):
    from rockseg.synthetic import synthetic_rock

    image, labels = synthetic_rock((48, 64, 64), seed=11)
    np.save(tmp_path / "big.npy", image)
    assert rockseg("convert", tmp_path / "big.npy", tmp_path / "big.zarr").returncode == 0
    proc = rockseg("predict", tmp_path / "big.zarr")
    assert proc.returncode == 0, proc.stderr
    out = zarr.open_array(str(tmp_path / "big-labels.zarr"))
    assert out.attrs["phases"] == {"0": "pore", "1": "solid"}
    pred, pore = out[...] == 0, labels == 0
    assert (pred & pore).sum() / (pred | pore).sum() > 0.8
