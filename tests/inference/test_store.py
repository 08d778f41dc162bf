"""The prediction store: parts, resuming, completion records, changed settings and the lock of a run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from rockseg.errors import IncompleteError, OutputExistsError
from rockseg.inference import PredictConfig, check_complete, predict
from tests.helpers import binary_volume, expected_boxsum, grey_volume
from tests.inference.small_unet import small_unet_model


def test_parts_resume_and_probabilities(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.zarr"
    cfg = PredictConfig(block=12, device="cpu", part=(0, 3), probabilities=str(tmp_path / "probs.zarr"))
    first = predict(tmp_path / "v.zarr", out, model=model, config=cfg)
    assert first["blocks_total"] == 8 and first["blocks_done"] == 3 and not first["complete"]
    with pytest.raises(IncompleteError, match="5 of 8 blocks missing"):
        check_complete(out)
    # the same part again does nothing; the other parts finish the volume
    again = predict(tmp_path / "v.zarr", out, model=model, config=cfg)
    assert again["blocks_done"] == 0 and again["blocks_skipped"] == 3
    for i in (1, 2):
        last = predict(tmp_path / "v.zarr", out, model=model,
                       config=PredictConfig(block=12, device="cpu", part=(i, 3), probabilities=cfg.probabilities))
    assert last["complete"]
    check_complete(out)
    expected = expected_boxsum(data)
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)
    probs = zarr.open_array(str(tmp_path / "probs.zarr"))
    assert probs.shape == (28, 20, 20, 20) and probs.dtype == np.uint8
    np.testing.assert_array_equal(probs[...].argmax(axis=0), expected)


def test_changed_settings_refused_unless_overwrite(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=12, device="cpu"))
    with pytest.raises(OutputExistsError, match="other settings"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, halo=3, device="cpu"))
    with pytest.raises(OutputExistsError, match="--block"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, overwrite=True,
                config=PredictConfig(block=16, halo=3, device="cpu"))
    assert s["complete"] and s["blocks_done"] == 8


def test_killed_block_is_redone(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.zarr"
    predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu"))
    # simulate a crash between writing a chunk and its marker: garbage data, no marker
    arr = zarr.open_array(str(out), mode="r+")
    arr[0:12, 0:12, 0:12] = 99
    (out / ".rockseg" / "done" / "0.0.0").unlink()
    s = predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu"))
    assert s["blocks_done"] == 1 and s["blocks_skipped"] == 7
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected_boxsum(data))


def test_second_run_on_same_blocks_refuses_while_first_is_alive(tmp_path, boxsum):
    import socket

    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=12, device="cpu", part=(0, 2))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    lock = tmp_path / "p.zarr" / ".rockseg" / "lock-1-of-2"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live run of part 1/2
    with pytest.raises(OutputExistsError, match="being written by another"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, device="cpu", part=(1, 2)))
    lock.write_text(f"{socket.gethostname()} 999999999")  # a run that died: its lock is taken over
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, device="cpu", part=(1, 2)))
    assert s["complete"] and not lock.exists()


@pytest.mark.slow
def test_kill_9_then_same_command_finishes_only_missing_blocks(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    grey_volume(tmp_path / "v.zarr", (64, 64, 64), seed=3, chunks=(32, 32, 32))
    model = small_unet_model(tmp_path / "m.pt")
    cmd = [sys.executable, "-m", "rockseg", "predict", str(tmp_path / "v.zarr"), "-m", str(model), "-o",
           str(tmp_path / "p.zarr"), "--device", "cpu", "--block", "8", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = tmp_path / "p.zarr" / ".rockseg" / "done"
    deadline = time.time() + 120
    target = int(np.random.default_rng(3).integers(20, 300))  # a random moment, between 20 and 300 of the 512 blocks
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and len(os.listdir(done_dir)) >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(os.listdir(done_dir))
    assert 0 < before < 512
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{512 - before} blocks done, {before} already done" in resumed.stdout
    predict(tmp_path / "v.zarr", tmp_path / "ref.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...],
                                  zarr.open_array(str(tmp_path / "ref.zarr"))[...])
