"""The prediction store: parts, resuming, completion records, changed settings and the lock of a run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from rockseg.errors import IncompleteError, OutputExistsError
from rockseg.inference import PredictConfig, Prediction, check_complete, predict
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
    _drop_record(out, "0.0.0")
    s = predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu"))
    assert s["blocks_done"] == 1 and s["blocks_skipped"] == 7
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected_boxsum(data))


def _drop_record(out, name):
    """Forget that unit ``name`` is done, as if the run had been killed before recording it."""
    for log in (out / ".rockseg" / "records").iterdir():
        lines = log.read_text().splitlines(keepends=True)
        log.write_text("".join(line for line in lines if line.split()[0] != name))


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
    records = tmp_path / "p.zarr" / ".rockseg" / "records" / "all"
    deadline = time.time() + 120
    target = int(np.random.default_rng(3).integers(20, 300))  # a random moment, between 20 and 300 of the 512 blocks
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().count("\n") >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(Prediction(tmp_path / "p.zarr").done())  # one block per shard at this size
    assert 0 < before < 512
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{512 - before} blocks done, {before} already done" in resumed.stdout
    predict(tmp_path / "v.zarr", tmp_path / "ref.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...],
                                  zarr.open_array(str(tmp_path / "ref.zarr"))[...])


# ------------------------------------------------------------------------------------------- layout 2: shards
def test_default_layout_is_sharded_and_parts_own_whole_shards(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (12, 12, 12))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.zarr"
    probs = str(tmp_path / "q.zarr")
    cfg = PredictConfig(block=4, shard_blocks=2, device="cpu", part=(0, 2), probabilities=probs)
    first = predict(tmp_path / "v.zarr", out, model=model, config=cfg)
    assert (first["shards_total"], first["shards_done"], first["blocks_total"]) == (8, 4, 27)
    arr = zarr.open_array(str(out))  # a plain Zarr array for any reader
    assert arr.chunks == (4, 4, 4) and arr.shards == (8, 8, 8)
    assert zarr.open_array(probs).shards == (28, 8, 8, 8)
    # one file per shard, written by its part alone; one completion log per part
    shard_files = {p.relative_to(out / "c").as_posix() for p in (out / "c").rglob("*") if p.is_file()}
    assert shard_files == {f"{z}/{y}/{x}" for z, y, x in Prediction(out).units()[0::2]}
    assert os.listdir(out / ".rockseg" / "records") == ["part-0-of-2"]
    last = predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(
        block=4, shard_blocks=2, device="cpu", part=(1, 2), probabilities=probs))
    assert last["complete"] and last["shards_done"] == 4
    assert len(list((out / "c").rglob("*/*/*"))) == 8
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected_boxsum(data))
    np.testing.assert_array_equal(zarr.open_array(probs)[...].argmax(axis=0), expected_boxsum(data))
    with pytest.raises(OutputExistsError, match="shards of 2x2x2 blocks, not 3x3x3"):
        predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(
            block=4, shard_blocks=3, device="cpu", probabilities=probs))


def test_default_shard_edge_bounds_the_file_count():
    from rockseg.inference.store import MAX_SHARDS, default_shard

    for n, b in ((10_000, 144), (10_000, 128), (4500, 96), (2048, 144), (100, 8)):
        k = default_shard((n, n, n), (b, b, b))
        shards = (-(-n // (b * k[0]))) ** 3
        assert shards <= MAX_SHARDS and (k[0] == 1 or (-(-n // (b * (k[0] - 1)))) ** 3 > MAX_SHARDS)
    assert default_shard((1, 5000, 5000), (1, 8, 8))[0] == 1  # a 2D image: shards only in the plane


def test_completion_listing_reads_few_files_fast(tmp_path):
    import time

    from rockseg.inference.store import create_prediction

    shape, block = (10_000,) * 3, (144,) * 3
    attrs = {"rockseg": {"settings": {}, "block": list(block), "shape3": list(shape)}}
    pred = create_prediction(tmp_path / "p.zarr", shape=shape, block=block, classes=2, attrs=attrs,
                             probabilities=None, overwrite=False)
    units = pred.units()
    assert len(units) == 24**3
    for i in range(1000):  # a complete run of a 1,000-task job array, each part killed and resumed once
        with pred.recorder((i, 1000)) as log:
            for u in units[i::1000]:
                log.record(u, crc32c="0badf00d")  # fields a later version may add are ignored
    with open(tmp_path / "p.zarr" / ".rockseg" / "records" / "part-0-of-1000", "a") as f:
        f.write("3.4.")  # a record cut short by a crash
    start = time.perf_counter()
    missing = Prediction(tmp_path / "p.zarr").missing()
    seconds = time.perf_counter() - start
    assert missing == []
    assert seconds < 5  # ~0.05 s on a quiet machine; generous for a loaded one
    _drop_record(tmp_path / "p.zarr", "23.23.23")
    with pytest.raises(IncompleteError, match=r"1 of 13824 shards of 3x3x3 blocks missing \(23.23.23\)"):
        check_complete(tmp_path / "p.zarr")


def test_a_killed_run_redoes_only_its_unfinished_shards(tmp_path, boxsum, monkeypatch):
    from rockseg.inference import engine

    data = binary_volume(tmp_path / "v.zarr", (24, 24, 24))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=4, shard_blocks=2, device="cpu", workers=2)
    run_block, calls = engine.run_block, []

    def dying(job, index):
        calls.append(index)
        if len(calls) == 30:  # a kill in the middle of the 4th shard
            raise KeyboardInterrupt
        return run_block(job, index)

    monkeypatch.setattr("rockseg.inference.scheduling.run_block", dying)
    with pytest.raises(KeyboardInterrupt):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    monkeypatch.setattr("rockseg.inference.scheduling.run_block", run_block)
    done = Prediction(tmp_path / "p.zarr").done()
    assert 2 <= len(done) <= 3  # only shards all of whose blocks were written are recorded
    again = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    assert again["complete"] and again["blocks_skipped"] == 8 * len(done) and again["shards_done"] == 27 - len(done)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected_boxsum(data))


def _as_layout_1(pred_path, old_path):
    """Rewrite a prediction as rockseg wrote it before shards: chunk = block, one marker file per block."""
    new = zarr.open_array(str(pred_path))
    attrs = dict(new.attrs)
    attrs["rockseg"] = {k: v for k, v in attrs["rockseg"].items() if k not in ("shard", "layout")}
    old = zarr.create_array(store=str(old_path), shape=new.shape, chunks=new.chunks, dtype="uint8", fill_value=0,
                            attributes=attrs)
    old[...] = new[...]
    (old_path / ".rockseg" / "done").mkdir(parents=True)
    for b in Prediction(pred_path).blocks():
        (old_path / ".rockseg" / "done" / ".".join(map(str, b))).touch()


def test_old_per_block_predictions_still_read_resume_and_stitch(tmp_path, boxsum):
    from rockseg.inference import stitch

    data = binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "new.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    old = tmp_path / "old.zarr"
    _as_layout_1(tmp_path / "new.zarr", old)
    pred = check_complete(old)
    assert pred.legacy and len(pred.units()) == 27
    stitch([old], tmp_path / "final.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "final.zarr"))[...], expected_boxsum(data))
    # a killed old run resumes in its own layout
    (old / ".rockseg" / "done" / "1.2.0").unlink()
    zarr.open_array(str(old), mode="r+")[8:16, 16:20, 0:8] = 99
    with pytest.raises(IncompleteError, match=r"1 of 27 blocks missing \(1.2.0\)"):
        check_complete(old)
    s = predict(tmp_path / "v.zarr", old, model=model, config=PredictConfig(block=8, device="cpu"))
    assert s["complete"] and s["blocks_done"] == 1 and (old / ".rockseg" / "done" / "1.2.0").exists()
    assert not (old / ".rockseg" / "records").exists()
    np.testing.assert_array_equal(zarr.open_array(str(old))[...], expected_boxsum(data))


def test_settings_older_stores_did_not_record_still_resume():
    from rockseg.inference.identity import comparable

    old = {"tile": [16, 16, 16]}  # a store written before rockseg recorded its input and its speck size
    new = {"tile": [16, 16, 16], "input": {"fingerprint": "abc"}, "specks": 0}
    assert comparable(old, new) == old  # it resumes: its run removed no specks either
    assert comparable(old, {**new, "specks": 8}) == {**old, "specks": 8}  # another result: refused
    assert comparable({**old, "specks": 0}, {**new, "specks": 0}) == {**old, "specks": 0}
