"""rockseg.metrics.stores: scoring stores named by path, as ``rockseg score`` does."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from rockseg.errors import InputError, OutputExistsError
from rockseg.metrics import score_stores, score_volumes


def _store(path, data, phases=None):
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype)
    arr[...] = data
    if phases:
        arr.attrs["phases"] = phases
    return arr


def test_score_stores_equals_score_volumes_and_reads_phase_names(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, (12, 12, 12), dtype=np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.1, 1 - truth, truth).astype(np.uint8)
    p = _store(tmp_path / "p.zarr", pred, {"0": "pore", "1": "grain"})
    t = _store(tmp_path / "t.zarr", truth)
    doc = score_stores(tmp_path / "p.zarr", tmp_path / "t.zarr", crop="2:10,:,:")
    want = score_volumes(p, t, phases={0: "pore", 1: "grain"}, crop=(slice(2, 10), slice(0, 12), slice(0, 12)),
                         pred_name=str(tmp_path / "p.zarr"), truth_name=str(tmp_path / "t.zarr"), mask_name="None")
    assert doc == want and [ph["name"] for ph in doc["phases"]] == ["pore", "grain"]
    # a region past the volume's end is refused: scoring 2:12 in place of 2:20 would report a region not asked for
    with pytest.raises(InputError, match=r"range '2:20' reaches past axis z of .*p\.zarr, which has 12 voxels"):
        score_stores(tmp_path / "p.zarr", tmp_path / "t.zarr", crop="2:20,:,:")


def test_a_bad_report_option_fails_before_scoring(tmp_path, monkeypatch):
    _store(tmp_path / "p.zarr", np.zeros((8, 8, 8), np.uint8))
    (tmp_path / "report").mkdir()
    called = []
    monkeypatch.setattr("rockseg.metrics.stores.score_volumes", lambda *a, **k: called.append(1))
    with pytest.raises(OutputExistsError):
        score_stores(tmp_path / "p.zarr", report=tmp_path / "report")  # exists: refused without overwrite
    with pytest.raises(InputError):
        score_stores(tmp_path / "p.zarr", report=tmp_path / "new", report_slice="w=3")
    assert called == []


def test_a_masked_prediction_is_scored_without_its_outside(tmp_path, boxsum):
    from rockseg.inference import PredictConfig, predict
    from tests.helpers import binary_volume

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    keep = np.zeros((16, 16, 16), np.uint8)
    keep[3:, :12] = 1
    m = zarr.create_array(store=str(tmp_path / "mask.zarr"), shape=keep.shape, chunks=keep.shape, dtype="uint8")
    m[...] = keep
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=boxsum(tmp_path / "m.pt"),
            config=PredictConfig(block=8, device="cpu", mask=str(tmp_path / "mask.zarr")))
    alone = score_stores(tmp_path / "p.zarr")
    masked = score_stores(tmp_path / "p.zarr", mask=tmp_path / "mask.zarr")
    assert alone["voxels"] == int(keep.sum()) == masked["voxels"]
    assert [p["label"] for p in alone["phases"]] == [p["label"] for p in masked["phases"]]
    assert 255 not in [p["label"] for p in alone["phases"]]
