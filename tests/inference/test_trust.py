"""Outputs you can trust (issue 17): masks through fusion, resume identity, probability stores, overlapping
parts, durable completion and creation failures; each test failed before its fix."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from rockseg.errors import OutputExistsError, OutputWriteError
from rockseg.inference import PredictConfig, predict
from rockseg.inference.stitching import stitch
from rockseg.inference.store import Prediction
from rockseg.vocabulary import OUTSIDE
from tests.helpers import binary_volume


def _mask(path, shape):
    m = zarr.create_array(store=str(path), shape=shape, chunks=shape, dtype="uint8")
    keep = np.zeros(shape, np.uint8)
    keep[2:-3, 1:-2, 4:] = 1
    m[...] = keep
    return keep


def test_fusion_by_probability_keeps_the_outside_of_a_mask(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 18, 20))
    keep = _mask(tmp_path / "mask.zarr", (16, 18, 20))
    model = boxsum(tmp_path / "m.pt")
    preds = []
    for name in "ab":
        cfg = PredictConfig(block=8, device="cpu", mask=str(tmp_path / "mask.zarr"),
                            probabilities=str(tmp_path / f"probs-{name}.zarr"))
        predict(tmp_path / "v.zarr", tmp_path / f"{name}.zarr", model=model, config=cfg)
        preds.append(tmp_path / f"{name}.zarr")
    s = stitch(preds, tmp_path / "f.zarr")
    assert s["method"] == "mean-probability"
    fused = zarr.open_array(str(tmp_path / "f.zarr"))[...]
    assert (fused[keep == 0] == OUTSIDE).all()
    np.testing.assert_array_equal(fused[keep == 1], zarr.open_array(str(tmp_path / "a.zarr"))[...][keep == 1])


def test_a_resume_with_another_input_volume_is_refused(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 16), seed=1)
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu",
                                                                                        part=(0, 2)))
    with pytest.raises(OutputExistsError, match=r"input .*fingerprint"):
        predict(tmp_path / "w.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", part=(1, 2)))
    # the same volume resumes, and --overwrite starts again with the other
    assert predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                   config=PredictConfig(block=8, device="cpu", part=(1, 2)))["complete"]
    assert predict(tmp_path / "w.zarr", tmp_path / "p.zarr", model=model, overwrite=True,
                   config=PredictConfig(block=8, device="cpu"))["complete"]


def test_an_old_probability_store_is_not_reused(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 16), seed=1)
    model = boxsum(tmp_path / "m.pt")
    probs = str(tmp_path / "probs.zarr")
    predict(tmp_path / "w.zarr", tmp_path / "old.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", probabilities=probs))
    with pytest.raises(OutputExistsError, match="probs.zarr"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", probabilities=probs))
    assert not (tmp_path / "p.zarr").exists()
    # --overwrite clears it even though the label output does not exist yet
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, overwrite=True,
            config=PredictConfig(block=8, device="cpu", probabilities=probs))
    assert str(tmp_path / "v.zarr") in zarr.open_array(probs).attrs["source"]


def test_overlapping_parts_never_run_a_unit_claimed_by_a_live_run(tmp_path, boxsum, monkeypatch):
    import socket

    from rockseg.inference import engine
    from rockseg.inference.grid import part_blocks

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu",
                                                                                        part=(1, 2)))
    pred = Prediction(tmp_path / "p.zarr")
    theirs = part_blocks(pred.units(), (0, 2))
    ran = []
    real = engine._Engine.run_block
    monkeypatch.setattr(engine._Engine, "run_block", lambda self, i: ran.append(i) or real(self, i))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live run of part 0/2 (that other process) has claimed its units
        claims = tmp_path / "p.zarr" / ".rockseg" / "claims"
        claims.mkdir(exist_ok=True)
        for u in theirs:
            (claims / ".".join(map(str, u))).write_text(f"{socket.gethostname()} {other.pid} 2026-12-07T12:00:00\n")
        s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
        assert ran == [] and not s["complete"]
    finally:
        other.kill()
        other.wait()
    # once that run is dead, its claims are taken over
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    assert s["complete"] and sorted(ran) == sorted(theirs)


def test_a_shard_is_flushed_before_its_record(tmp_path, boxsum, monkeypatch):
    from rockseg.inference import store

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    events = []
    fsync = os.fsync

    def spy(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write = store.CompletionLog.record
    monkeypatch.setattr(store.CompletionLog, "record",
                        lambda self, unit, **f: events.append(("record", unit)) or write(self, unit, **f))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    out = str((tmp_path / "p.zarr").resolve())
    records = [i for i, e in enumerate(events) if e[0] == "record"]
    assert len(records) == 8
    for i in records:
        unit = events[i][1]
        shard = os.path.join(out, "c", *map(str, unit))
        synced = [e[1] for e in events[:i] if e[0] == "fsync"]
        assert shard in synced and os.path.dirname(shard) in synced
    lines = (tmp_path / "p.zarr" / ".rockseg" / "records" / "all").read_text().splitlines()
    assert all("crc32c=" in line for line in lines)


def test_a_failed_rename_says_why(tmp_path, boxsum, monkeypatch):
    from rockseg.inference import store

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store.os, "rename", refuse)
    for probs in (None, str(tmp_path / "probs.zarr")):
        with pytest.raises(OutputWriteError, match="Permission denied"):
            predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                    config=PredictConfig(block=8, device="cpu", probabilities=probs))
        assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "probs.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def _flip_byte(path, at=-10):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_chunks_carry_a_crc32c_that_readers_check(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    probs = str(tmp_path / "probs.zarr")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=boxsum(tmp_path / "m.pt"),
            config=PredictConfig(block=8, shard_blocks=2, device="cpu", probabilities=probs))
    stitch([tmp_path / "p.zarr"], tmp_path / "copy.zarr")
    for path in (tmp_path / "p.zarr", tmp_path / "probs.zarr", tmp_path / "copy.zarr"):
        inner = zarr.open_array(str(path)).metadata.codecs[0].codecs
        assert type(inner[-1]).__name__ == "Crc32cCodec"
    _flip_byte(tmp_path / "p.zarr" / "c" / "0" / "0" / "0", at=20)
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(tmp_path / "p.zarr"))[...]


def test_verify_finds_lost_data_and_predict_redoes_exactly_it(tmp_path, boxsum, monkeypatch):
    from rockseg.errors import IncompleteError
    from rockseg.inference import engine
    from rockseg.inference.verifying import verify

    binary_volume(tmp_path / "v.zarr", (24, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=8, device="cpu", probabilities=str(tmp_path / "probs.zarr"))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    expected = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    assert verify(tmp_path / "p.zarr")["complete"]
    c = tmp_path / "p.zarr" / "c"
    (c / "0" / "0" / "1").unlink()  # deleted
    (c / "1" / "1" / "0").write_bytes((c / "1" / "1" / "0").read_bytes()[:-30])  # truncated
    _flip_byte(c / "2" / "0" / "1")  # same size, other bytes
    _flip_byte(tmp_path / "probs.zarr" / "c" / "0" / "2" / "1" / "1")  # probabilities too
    r = verify(tmp_path / "p.zarr")
    assert r["corrupt"] == {"0.0.1": "missing", "1.1.0": "truncated", "2.0.1": "corrupt", "2.1.1": "corrupt"}
    assert r["missing"] == [] and not r["complete"] and r["ok"] == 12 - 4
    # their records are now invalid: the units read as missing, to stitch (with --verify or not) and to verify
    with pytest.raises(IncompleteError, match=r"4 of 12 blocks missing \(0.0.1, 1.1.0, 2.0.1, 2.1.1\)"):
        stitch([tmp_path / "p.zarr"], tmp_path / "f.zarr")
    assert verify(tmp_path / "p.zarr")["missing"] == ["0.0.1", "1.1.0", "2.0.1", "2.1.1"]
    ran = []
    real = engine._Engine.run_block
    monkeypatch.setattr(engine._Engine, "run_block", lambda self, i: ran.append(i) or real(self, i))
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    assert s["complete"] and sorted(ran) == [(0, 0, 1), (1, 1, 0), (2, 0, 1), (2, 1, 1)]
    assert verify(tmp_path / "p.zarr")["complete"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected)
    stitch([tmp_path / "p.zarr"], tmp_path / "f.zarr", verify=True)
    _flip_byte(c / "0" / "1" / "1")  # stitch --verify finds what stitch alone trusts
    with pytest.raises(IncompleteError, match=r"11 of 12 blocks verified; 1 corrupt \(0.1.1: corrupt\)"):
        stitch([tmp_path / "p.zarr"], tmp_path / "g.zarr", verify=True)


def test_a_resume_redoes_a_recorded_shard_whose_file_is_gone_without_verify(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=8, device="cpu")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    expected = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    (tmp_path / "p.zarr" / "c" / "1" / "0" / "1").unlink()
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    assert s["blocks_done"] == 1 and s["complete"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected)


def test_a_corrupt_input_chunk_is_named(tmp_path, boxsum):
    from rockseg.errors import InputError

    data = np.random.default_rng(0).integers(0, 2, (16, 16, 16)).astype(np.uint8)
    arr = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=data.shape, chunks=(8, 8, 8), dtype="uint8")
    arr[...] = data
    arr.attrs["intensity"] = {"p_low": 0.0, "p_high": 1.0}
    model = boxsum(tmp_path / "m.pt")
    # a chunk outside the fingerprint's sample, so that predict finds it while reading blocks
    (tmp_path / "v.zarr" / "c" / "0" / "0" / "1").write_bytes(b"\x00garbage" * 3)
    with pytest.raises(InputError, match=r"chunk 0:8,0:8,8:16 \(file c/0/0/1\) cannot be read"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    # one in the sample is found before anything is written
    (tmp_path / "v.zarr" / "c" / "1" / "1" / "1").write_bytes(b"\x00garbage" * 3)
    with pytest.raises(InputError, match=r"chunk at 8:16,8:16,8:16 cannot be read"):
        predict(tmp_path / "v.zarr", tmp_path / "q.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    assert not (tmp_path / "q.zarr").exists()


def test_stitch_refuses_to_fuse_predictions_of_other_inputs(tmp_path, boxsum):
    from rockseg.errors import InputError

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 16), seed=1)
    model = boxsum(tmp_path / "m.pt")
    for name in "vw":
        predict(tmp_path / f"{name}.zarr", tmp_path / f"p{name}.zarr", model=model,
                config=PredictConfig(block=8, device="cpu"))
    with pytest.raises(InputError, match="was made from another input"):
        stitch([tmp_path / "pv.zarr", tmp_path / "pw.zarr"], tmp_path / "f.zarr")
    stitch([tmp_path / "pv.zarr", tmp_path / "pv.zarr"], tmp_path / "f.zarr")
    meta = zarr.open_array(str(tmp_path / "f.zarr")).attrs["rockseg"]
    assert meta["inputs"][0]["fingerprint"] == Prediction(tmp_path / "pv.zarr").settings["input"]["fingerprint"]
    with pytest.raises(OutputExistsError):  # a fused output is never reused without --overwrite
        stitch([tmp_path / "pv.zarr", tmp_path / "pv.zarr"], tmp_path / "f.zarr")


def test_a_store_of_the_previous_version_still_resumes_verifies_and_stitches(tmp_path, boxsum):
    import json

    from rockseg.inference.verifying import verify

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=8, device="cpu", part=(0, 2))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    # as the previous version wrote it: no input identity, bare record lines (no size, crc32c or id)
    meta_path = tmp_path / "p.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["rockseg"]["settings"]["input"]
    meta_path.write_text(json.dumps(meta))
    log = tmp_path / "p.zarr" / ".rockseg" / "records" / "part-0-of-2"
    log.write_text("".join(line.split(" ")[0] + "\n" for line in log.read_text().splitlines()))
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", part=(1, 2)))
    assert s["complete"] and s["blocks_done"] == 4
    assert verify(tmp_path / "p.zarr")["complete"]  # bare records: their units are decoded
    stitch([tmp_path / "p.zarr"], tmp_path / "f.zarr")
    ref = tmp_path / "ref.zarr"
    predict(tmp_path / "v.zarr", ref, model=model, config=PredictConfig(block=8, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "f.zarr"))[...], zarr.open_array(str(ref))[...])


def test_a_missing_input_chunk_of_a_converted_volume_is_named(tmp_path, boxsum):
    """convert stores every chunk (and says so), so a chunk file lost afterwards is damage, not the fill value."""
    from rockseg.errors import InputError
    from rockseg.io import convert

    data = np.random.default_rng(0).integers(0, 2, (16, 16, 16)).astype(np.uint8)
    data[:8, :8, 8:] = 0  # an empty chunk is stored too
    np.save(tmp_path / "v.npy", data)
    convert(tmp_path / "v.npy", tmp_path / "v.zarr", chunks=(8, 8, 8))
    assert (tmp_path / "v.zarr" / "c" / "0" / "0" / "1").is_file()
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=8, device="cpu")
    predict(tmp_path / "v.zarr", tmp_path / "whole.zarr", model=model, config=cfg)
    (tmp_path / "v.zarr" / "c" / "1" / "0" / "1").unlink()
    with pytest.raises(InputError, match=r"chunk 8:16,0:8,8:16 \(file c/1/0/1\) is missing"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    done = Prediction(tmp_path / "p.zarr").missing()
    assert done  # the blocks that read the lost chunk are not recorded as done
