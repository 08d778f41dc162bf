"""The command line: contract invocations, exit codes, one-line errors, and the whole pipeline as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from skimage.measure import euler_number
from typer.testing import CliRunner

from rockseg import __version__
from rockseg.cli import app

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def rockseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "rockseg", *map(str, args)], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    for cmd in ("convert", "tile", "train", "predict", "stitch", "score", "demo"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)


def test_missing_file_is_one_line_exit_2(tmp_path):
    proc = rockseg("convert", tmp_path / "nope.tif", tmp_path / "out.zarr")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.tif" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_raw_size_mismatch_exit_2(tmp_path):
    np.zeros((4, 5, 6), np.uint16).tofile(tmp_path / "x.raw")
    proc = rockseg("convert", tmp_path / "x.raw", tmp_path / "out.zarr", "--shape", "4,5,7", "--dtype", "uint16")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "x.raw" in proc.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_score_shape_mismatch_exit_2(tmp_path):
    for name, shape in (("a.zarr", (4, 5, 6)), ("b.zarr", (4, 5, 7))):
        zarr.create_array(store=str(tmp_path / name), shape=shape, chunks=shape, dtype="uint8")
    result = runner.invoke(app, ["score", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert result.exit_code == 2
    assert "(4, 5, 6)" in result.output and "(4, 5, 7)" in result.output


def test_bad_choice_rejected_before_work(tmp_path):
    result = runner.invoke(app, ["score", str(tmp_path / "a.zarr"), "--connectivity", "2"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_score_berea_against_itself_equals_skimage(tmp_path):
    tif = DATA / "berea-400" / "berea_pore.tif"
    if not tif.exists():
        pytest.skip(f"real data not found at {tif}")
    assert rockseg("convert", tif, tmp_path / "berea.zarr").returncode == 0
    vol = zarr.open_array(str(tmp_path / "berea.zarr"))[...]
    for conn in (3, 1):
        proc = rockseg("score", tmp_path / "berea.zarr", tmp_path / "berea.zarr", "--json", "--connectivity", str(conn))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert [p["iou"] for p in doc["phases"]] == [1.0, 1.0]
        for p in doc["phases"]:
            expected = euler_number(vol == p["label"], connectivity=conn)
            assert p["euler_pred"] == p["euler_true"] == expected


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
    for block in (16, 24):
        out = tmp_path / f"pred{block}.zarr"
        for shard in ("0/2", "1/2"):
            proc = rockseg("predict", tmp_path / "img.zarr", "-m", tmp_path / "model.pt", "-o", out, "--device", "cpu",
                           "--tile", "16", "--halo", "4", "--block", str(block), "--batch-size", "4", "--shard", shard)
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


@pytest.mark.parametrize("command", ["train", "predict"])
def test_allocator_tuned_only_in_the_rockseg_process(tmp_path, monkeypatch, command):
    """The commands that run a network tune glibc's allocator in the rockseg process, never in a caller's."""
    from rockseg import cli, devices

    calls = []
    monkeypatch.setattr(devices, "tune_malloc", lambda: calls.append(command) or True)
    args = [command, str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "out")]
    if command == "predict":
        args += ["-m", str(tmp_path / "missing.pt")]
    assert runner.invoke(app, args).exit_code == 2  # the command ran as far as its input
    assert calls == []  # a library caller's process (CliRunner here) is left alone
    monkeypatch.setattr(cli, "_own_process", True)
    assert runner.invoke(app, args).exit_code == 2
    assert calls == [command]
