"""Fault injection (issue 17): kill -9 at random moments then resume, a full disk mid-run, overlapping runs of
different part specs at once. After every fault, nothing is recorded that does not verify, and the finished
labels equal those of an undisturbed run."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from rockseg.errors import OutputWriteError
from rockseg.inference import PredictConfig, predict
from rockseg.inference.store import Prediction
from rockseg.inference.verifying import verify
from rockseg.models import build_model, save_model_file
from tests.helpers import grey_volume

ARGS = ["--device", "cpu", "--block", "16", "--tile", "16", "--halo", "2", "--workers", "2"]


def _linear_model(path):
    """A per-voxel linear classifier (three grey-value bands): tiny and fast, loadable in a subprocess."""
    args = {"spatial_dims": 3, "classes": 3}
    net = build_model("linear", **args).eval()
    with torch.no_grad():
        net.logits.weight.copy_(torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1, 1))
        net.logits.bias.copy_(torch.tensor([0.0, -3.0, -10.0]))
    save_model_file(path, net, arch="linear", arch_args=args, spatial_dims=3, in_channels=1,
                    phases={i: f"p{i}" for i in range(3)}, normalization={"p_low": 0.0, "p_high": 255.0},
                    tile=16, halo=2)
    return path


def _command(tmp_path, out, *extra):
    return [sys.executable, "-m", "rockseg", "predict", str(tmp_path / "v.zarr"), "-m", str(tmp_path / "m.pt"),
            "-o", str(out), *ARGS, *extra]


def _reference(tmp_path):
    grey_volume(tmp_path / "v.zarr", (64, 64, 64))
    _linear_model(tmp_path / "m.pt")
    cfg = PredictConfig(device="cpu", block=16, tile=16, halo=2)
    predict(tmp_path / "v.zarr", tmp_path / "ref.zarr", model=tmp_path / "m.pt", config=cfg)
    return zarr.open_array(str(tmp_path / "ref.zarr"))[...], cfg


def _records_verify(path):
    """Every recorded unit's data matches its record (units may be missing, none may be corrupt)."""
    if not (path / "zarr.json").exists():
        return 0
    r = verify(path)
    assert r["corrupt"] == {}, r["corrupt"]
    return r["ok"]


@pytest.mark.slow
def test_kill_9_at_20_random_moments_then_resume_gives_identical_labels(tmp_path):
    expected, _ = _reference(tmp_path)
    out = tmp_path / "p.zarr"
    rng = random.Random(17)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # how long a whole run takes on this machine under its present load (start-up is most of it, and a loaded or
    # slow machine takes several times longer), so that the kills land at any moment of one
    start = time.monotonic()
    whole = subprocess.run(_command(tmp_path, tmp_path / "timed.zarr"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    seconds = time.monotonic() - start
    done_counts = []
    for _ in range(20):
        proc = subprocess.Popen(_command(tmp_path, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, seconds))  # start-up (imports, checks) and the blocks: any moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_counts.append(_records_verify(out))
    final = subprocess.run(_command(tmp_path, out), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert verify(out)["complete"]
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)
    assert max(done_counts) > 0  # some kills came mid-run, after units were recorded


def test_a_full_disk_mid_run_fails_cleanly_and_resumes_to_identical_labels(tmp_path, monkeypatch):
    from zarr.storage import _local

    expected, cfg = _reference(tmp_path)
    out = tmp_path / "p.zarr"
    put = _local._put
    writes = []

    def filling(path, value, *args, **kwargs):
        if str(out) in str(path) and "/c/" in str(path):
            writes.append(path)
            if len(writes) > 20:
                raise OSError(errno.ENOSPC, "No space left on device")
        return put(path, value, *args, **kwargs)

    monkeypatch.setattr(_local, "_put", filling)
    with pytest.raises(OutputWriteError, match="No space left on device") as info:
        predict(tmp_path / "v.zarr", out, model=tmp_path / "m.pt", config=cfg)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    ok = _records_verify(out)
    assert 0 < ok < 64 and len(Prediction(out).done()) == ok  # nothing recorded that is not written
    monkeypatch.setattr(_local, "_put", put)  # space freed
    s = predict(tmp_path / "v.zarr", out, model=tmp_path / "m.pt", config=cfg)
    assert s["complete"] and s["blocks_done"] == 64 - ok
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)


@pytest.mark.slow
def test_overlapping_runs_of_different_part_specs_compute_each_unit_once(tmp_path):
    expected, _ = _reference(tmp_path)
    out = tmp_path / "p.zarr"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # create the store first, so that the three runs start on equal terms
    subprocess.run(_command(tmp_path, out, "--part", "3/4"), env=env, check=True, capture_output=True)
    procs = [subprocess.Popen(_command(tmp_path, out, *part), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for part in ([], ["--part", "0/2"], ["--part", "0/4"], ["--part", "1/2"])]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    final = subprocess.run(_command(tmp_path, out), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    from rockseg.inference.store import read_records

    logs = [read_records(f) for f in (out / ".rockseg" / "records").iterdir()]
    units = [u for log in logs for u in log]
    assert len(units) == len(set(units)) == 64  # every unit recorded by exactly one run: computed once
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)
