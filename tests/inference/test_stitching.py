"""stitch: completeness, fusion of several predictions (mean probability, majority vote), exports, previews."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from tests.helpers import binary_volume, expected_boxsum
from rockseg.errors import IncompleteError, InputError
from rockseg.inference import PredictConfig, predict
from rockseg.stitching import stitch


def test_orthogonal_2d_runs_fused_by_mean_probability(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (18, 20, 22))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    preds = []
    for axis in ("z", "y", "x"):
        out = tmp_path / f"p{axis}.zarr"
        predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(
            block=10, device="cpu", axis=axis, probabilities=str(tmp_path / f"probs{axis}.zarr")))
        preds.append(out)
    s = stitch(preds, tmp_path / "final.zarr")
    assert s["method"] == "mean-probability"
    # expected: argmax of the sum of the three runs' uint8 probabilities, recomputed here from the stores
    total = sum(zarr.open_array(str(tmp_path / f"probs{a}.zarr"))[...].astype(np.uint32) for a in "zyx")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "final.zarr"))[...], total.argmax(0))
    # and each run alone is the exact 2D box sum along its axis
    for axis, kernel in (("z", (1, 3, 3)), ("y", (3, 1, 3)), ("x", (3, 3, 1))):
        exp = ndimage.correlate(data.astype(np.int64), np.ones(kernel, np.int64), mode="mirror")
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"p{axis}.zarr"))[...], exp)


def test_majority_vote_ties_go_to_first(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    for name in ("a", "b", "c"):
        predict(tmp_path / "v.zarr", tmp_path / f"{name}.zarr", model=model,
                config=PredictConfig(block=8, device="cpu"))
    a = zarr.open_array(str(tmp_path / "a.zarr"), mode="r+")
    b = zarr.open_array(str(tmp_path / "b.zarr"), mode="r+")
    c = zarr.open_array(str(tmp_path / "c.zarr"), mode="r+")
    a[...] = 1
    b[...] = 2
    c[...] = 2
    c[0:8] = 3  # where a, b, c all differ: a tie, the first (a) wins; elsewhere b and c outvote a
    stitch([tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "c.zarr"], tmp_path / "f.zarr")
    out = zarr.open_array(str(tmp_path / "f.zarr"))[...]
    assert (out[0:8] == 1).all() and (out[8:] == 2).all()


def test_export_and_preview(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (40, 36, 30))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=12, device="cpu"))
    s = stitch([tmp_path / "p.zarr"], tmp_path / "final.tif", preview=tmp_path / "preview.zarr")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "final.tif"), expected_boxsum(data))
    group = zarr.open_group(str(tmp_path / "preview.zarr"), mode="r")
    assert s["preview_levels"] == 0  # already small: no level needed
    from rockseg.stitching import write_preview

    levels = write_preview(zarr.open_array(str(tmp_path / "p.zarr")), tmp_path / "pyr.zarr", smallest=10)
    group = zarr.open_group(str(tmp_path / "pyr.zarr"), mode="r")
    assert levels == 2
    np.testing.assert_array_equal(group["1"][...], expected_boxsum(data)[::2, ::2, ::2])
    np.testing.assert_array_equal(group["2"][...], expected_boxsum(data)[::4, ::4, ::4])
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["1", "2"]


def test_incomplete_and_mismatched_inputs(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 20))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "a.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", shard=(0, 4)))
    with pytest.raises(IncompleteError, match="6 of 8 blocks missing"):
        stitch([tmp_path / "a.zarr"], tmp_path / "f.zarr")
    predict(tmp_path / "w.zarr", tmp_path / "b.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    predict(tmp_path / "v.zarr", tmp_path / "c.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    with pytest.raises(InputError, match="has shape"):
        stitch([tmp_path / "c.zarr", tmp_path / "b.zarr"], tmp_path / "f.zarr")
    assert not (tmp_path / "f.zarr").exists()
