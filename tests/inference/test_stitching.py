"""stitch: completeness, fusion of several predictions (mean probability, majority vote), exports, previews;
and the commands that read predictions (stitch, score) run where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from tests.helpers import binary_volume, expected_boxsum
from rockseg.errors import IncompleteError, InputError
from rockseg.inference import PredictConfig, predict
from rockseg.inference.stitching import stitch


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
        exp = ndimage.correlate(data.astype(np.int64), np.ones(kernel, np.int64), mode="constant")
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



def test_fusion_removes_the_specks_it_makes_as_predict_does(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    for name, specks in (("a", 2), ("b", 2), ("c", 3), ("d", 0)):
        predict(tmp_path / "v.zarr", tmp_path / f"{name}.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", specks=specks))
    for name in "abcd":
        arr = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r+")
        arr[...] = 0
        if name in "ab":  # what two of three vote for: three pieces of phase 1 in block (0, 0, 0)
            arr[3, 3, 3] = 1  # a speck of one voxel inside the block: removed
            arr[1, 1, 1:4] = 1  # three voxels: larger than the smallest speck size (2), kept
            arr[7, 5, 5] = 1  # one voxel on a face shared with block (1, 0, 0): kept, as predict keeps it
    s = stitch([tmp_path / n for n in ("a.zarr", "b.zarr", "c.zarr")], tmp_path / "f.zarr")
    assert s["method"] == "majority-vote"
    final = zarr.open_array(str(tmp_path / "f.zarr"))
    assert final.attrs["rockseg"]["specks"] == 2  # the smallest of the three runs'
    got = final[...]
    assert got[3, 3, 3] == 0 and (got[1, 1, 1:4] == 1).all() and got[7, 5, 5] == 1
    assert int(got.sum()) == 4
    # a prediction that kept its specks (--specks 0) among them: fusion keeps them too
    stitch([tmp_path / n for n in ("a.zarr", "b.zarr", "d.zarr")], tmp_path / "g.zarr")
    assert zarr.open_array(str(tmp_path / "g.zarr"))[3, 3, 3] == 1

def test_export_and_preview(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (40, 36, 30))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=12, device="cpu"))
    s = stitch([tmp_path / "p.zarr"], tmp_path / "final.tif", preview=tmp_path / "preview.zarr")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "final.tif"), expected_boxsum(data))
    group = zarr.open_group(str(tmp_path / "preview.zarr"), mode="r")
    assert s["preview_levels"] == 1  # already small: level 0 (full resolution) only
    np.testing.assert_array_equal(group["0"][...], expected_boxsum(data))
    from rockseg.inference.stitching import write_preview

    levels = write_preview(zarr.open_array(str(tmp_path / "p.zarr")), tmp_path / "pyr.zarr", smallest=10)
    group = zarr.open_group(str(tmp_path / "pyr.zarr"), mode="r")
    assert levels == 3
    np.testing.assert_array_equal(group["1"][...], expected_boxsum(data)[::2, ::2, ::2])
    np.testing.assert_array_equal(group["2"][...], expected_boxsum(data)[::4, ::4, ::4])
    assert [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]] == ["0", "1", "2"]


def test_incomplete_and_mismatched_inputs(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 20))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "a.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", part=(0, 4)))
    with pytest.raises(IncompleteError, match="6 of 8 blocks missing"):
        stitch([tmp_path / "a.zarr"], tmp_path / "f.zarr")
    predict(tmp_path / "w.zarr", tmp_path / "b.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    predict(tmp_path / "v.zarr", tmp_path / "c.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    with pytest.raises(InputError, match="has shape"):
        stitch([tmp_path / "c.zarr", tmp_path / "b.zarr"], tmp_path / "f.zarr")
    assert not (tmp_path / "f.zarr").exists()


# Runs the rockseg command line in a fresh interpreter in which ``import torch`` raises ImportError.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; sys.argv[0] = 'rockseg'; from rockseg.cli import main; main()"


def rockseg_without_torch(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], capture_output=True, text=True)


def _stitched(tmp_path, boxsum):
    """A complete prediction of a box-sum volume stitched without torch; the expected labels."""
    data = binary_volume(tmp_path / "v.zarr", (16, 20, 12))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    proc = rockseg_without_torch("stitch", tmp_path / "p.zarr", "-o", tmp_path / "final.zarr")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'final.zarr'} (copy of 1 prediction(s))" in proc.stdout
    return expected_boxsum(data)


def test_stitch_runs_without_torch(tmp_path, boxsum):
    expected = _stitched(tmp_path, boxsum)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "final.zarr"))[...], expected)


def test_score_runs_without_torch(tmp_path, boxsum):
    # score belongs to rockseg.metrics (another package); its command line is tested here, on a stitched
    # prediction whose truth is the exact box sum, so that every phase present scores IoU 1
    expected = _stitched(tmp_path, boxsum)
    truth = zarr.create_array(store=str(tmp_path / "truth.zarr"), shape=expected.shape, chunks=(8, 8, 8),
                              dtype="uint8")
    truth[...] = expected
    proc = rockseg_without_torch("score", tmp_path / "final.zarr", tmp_path / "truth.zarr", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["voxels"] == expected.size and doc["accuracy"] == 1.0 and doc["mean_iou"] == 1.0
    present = {p["label"]: p for p in doc["phases"] if p["fraction_true"] > 0}
    assert set(present) == set(np.unique(expected).tolist())
    assert all(p["iou"] == 1.0 for p in present.values())


# ------------------------------------------------------------------------------------------- shards, clusters
def _shard_files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in (path / "c").rglob("*") if p.is_file()}


def test_one_prediction_is_copied_shard_file_by_file_without_decoding(tmp_path, boxsum, monkeypatch):
    import zarr.codecs

    data = binary_volume(tmp_path / "v.zarr", (20, 16, 12))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=4, shard_blocks=2, device="cpu"))

    def refuse(*args, **kwargs):
        raise AssertionError("stitch decoded or fused a chunk of a single prediction")

    monkeypatch.setattr(zarr.codecs.BloscCodec, "_decode_single", refuse)
    monkeypatch.setattr("rockseg.inference.stitching._fuse", refuse)
    s = stitch([tmp_path / "p.zarr"], tmp_path / "final.zarr", workers=3)
    monkeypatch.undo()
    assert s["method"] == "copy"
    assert _shard_files(tmp_path / "final.zarr") == _shard_files(tmp_path / "p.zarr") != {}
    final = zarr.open_array(str(tmp_path / "final.zarr"))
    assert final.shards == (8, 8, 8) and final.attrs["rockseg"]["method"] == "copy"
    assert "settings" not in final.attrs["rockseg"] and not (tmp_path / "final.zarr" / ".rockseg").exists()
    np.testing.assert_array_equal(final[...], expected_boxsum(data))


def test_fusion_writes_whole_shards_of_the_output(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 16, 12))
    model = boxsum(tmp_path / "m.pt")
    for name in ("a", "b"):
        predict(tmp_path / "v.zarr", tmp_path / f"{name}.zarr", model=model,
                config=PredictConfig(block=4, shard_blocks=2, device="cpu"))
    zarr.open_array(str(tmp_path / "b.zarr"), mode="r+")[0:5] = 77  # a tie there: the first prediction wins
    s = stitch([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "f.zarr")
    assert s["method"] == "majority-vote"
    final = zarr.open_array(str(tmp_path / "f.zarr"))
    assert final.shards == (8, 8, 8) and len(_shard_files(tmp_path / "f.zarr")) == 3 * 2 * 2
    np.testing.assert_array_equal(final[...], expected_boxsum(data))


@pytest.mark.slow
def test_stitch_on_a_dask_cluster_of_two_processes_equals_the_local_run(tmp_path, boxsum):
    distributed = pytest.importorskip("distributed")
    binary_volume(tmp_path / "v.zarr", (20, 16, 12))
    model = boxsum(tmp_path / "m.pt")
    for name in ("a", "b", "c"):
        predict(tmp_path / "v.zarr", tmp_path / f"{name}.zarr", model=model,
                config=PredictConfig(block=4, shard_blocks=2, device="cpu"))
    zarr.open_array(str(tmp_path / "b.zarr"), mode="r+")[0:9] = 5
    zarr.open_array(str(tmp_path / "c.zarr"), mode="r+")[3:12, 4:] = 5
    fused = [tmp_path / f"{n}.zarr" for n in "abc"]
    stitch(fused, tmp_path / "local.zarr")
    stitch(fused[:1], tmp_path / "local1.zarr")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        s = stitch(fused, tmp_path / "dist.zarr", scheduler=cluster.scheduler_address)
        stitch(fused[:1], tmp_path / "dist1.zarr", scheduler=cluster.scheduler_address)
    assert s["method"] == "majority-vote"
    for local, dist in (("local", "dist"), ("local1", "dist1")):
        expected = zarr.open_array(str(tmp_path / f"{local}.zarr"))[...]
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{dist}.zarr"))[...], expected)
    assert (zarr.open_array(str(tmp_path / "dist.zarr"))[...] == 5).any()


def test_unreachable_scheduler_exits_2_within_a_bounded_wait(tmp_path, boxsum, monkeypatch):
    import socket
    import time

    from typer.testing import CliRunner

    from rockseg.cli import app

    pytest.importorskip("distributed")
    binary_volume(tmp_path / "v.zarr", (8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(device="cpu"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr("rockseg.cluster.CONNECT_TIMEOUT", 2.0)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["stitch", str(tmp_path / "p.zarr"), "-o", str(tmp_path / "f.zarr"),
                                      "--scheduler", address])
    assert result.exit_code == 2 and time.perf_counter() - start < 30
    assert f"--scheduler {address}: no Dask scheduler answered within 2 s" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "f.zarr").exists()
    with pytest.raises(InputError, match="no Dask scheduler answered"):  # predict refuses before writing
        predict(tmp_path / "v.zarr", tmp_path / "q.zarr", model=model,
                config=PredictConfig(device="cpu", scheduler=address))
    assert not (tmp_path / "q.zarr").exists()
