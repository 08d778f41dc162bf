"""Tests of rockseg.io.zarr_writer: bands of wide slabs, shards written once, statistics, full disks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from rockseg.errors import OutputWriteError
from rockseg.io import chunk_encoder, zarr_writer
from rockseg.io.conversion import convert
from rockseg.io.zarr_writer import write_zarr
from tests.io.samples import (BandSource, CountingSource, enospc, entries, expect_error, random_volume, read_zarr, rng,
                              spy_on_writes)


def test_intensity_percentiles_uint8_exact(tmp_path):
    vol = rng.integers(0, 256, (20, 30, 40), dtype=np.uint8)
    np.save(tmp_path / "v.npy", vol)
    convert(tmp_path / "v.npy", tmp_path / "v.zarr", chunks=(3, 30, 40))
    stats = read_zarr(tmp_path / "v.zarr").attrs["intensity"]
    lo, hi = np.percentile(vol, [0.5, 99.5], method="inverted_cdf")
    assert (stats["p_low"], stats["p_high"]) == (lo, hi)
    assert stats["exact"] is True


def test_wide_slabs_are_written_in_bands_of_whole_chunk_rows(tmp_path, monkeypatch):
    vol = random_volume((10, 23, 6), "uint16")
    monkeypatch.setattr(zarr_writer, "_SLAB_BYTES", 4 * 8 * 6 * 2)  # room for 8 rows of a 4-plane slab
    src = BandSource(vol)
    write_zarr(src, tmp_path / "b.zarr", chunks=(4, 3, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "b.zarr")[:], vol)
    assert src.regions[:3] == [((0, 4), (0, 6), (0, 6)), ((0, 4), (6, 12), (0, 6)), ((0, 4), (12, 18), (0, 6))]
    assert len(src.regions) == 3 * 4  # 3 slabs of 4 bands (6 rows = 2 chunk rows; 23 rows)
    # a shard row is the unit with shards: every shard is still written once
    writes = spy_on_writes(monkeypatch)
    src = BandSource(vol)
    write_zarr(src, tmp_path / "s.zarr", chunks=(2, 3, 6), shards=(4, 6, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "s.zarr")[:], vol)
    assert all(y0 % 6 == 0 and (y1 - y0 == 6 or y1 == 23) for _, (y0, y1), _ in src.regions)  # whole shard rows
    data = [k for k in writes if k.startswith("c/")]
    assert len(data) == len(set(data)) == 3 * 4
    # a source that decodes whole planes is read in whole planes
    counting = CountingSource(vol)
    write_zarr(counting, tmp_path / "c.zarr", chunks=(4, 3, 6))
    assert counting.reads == [(0, 4), (4, 8), (8, 10)]
    # a raw file reads bands from the disk
    vol.tofile(tmp_path / "v.raw")
    convert(tmp_path / "v.raw", tmp_path / "r.zarr", shape=vol.shape, dtype="uint16", chunks=(4, 3, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "r.zarr")[:], vol)


def test_shards_round_trip_each_shard_written_once(tmp_path, monkeypatch):
    vol = random_volume((37, 50, 45), "uint16")
    np.save(tmp_path / "v.npy", vol)
    writes = spy_on_writes(monkeypatch)
    convert(tmp_path / "v.npy", tmp_path / "s.zarr", chunks=(8, 16, 16), shards=(16, 32, 48))
    out = read_zarr(tmp_path / "s.zarr")
    assert out.chunks == (8, 16, 16) and out.shards == (16, 32, 48)  # X shard clipped to 3 chunks covering 45
    np.testing.assert_array_equal(out[:], vol)
    data = [k for k in writes if k.startswith("c/")]
    assert len(data) == len(set(data)) == 3 * 2 * 1  # ceil(37/16) x ceil(50/32) x 1 shard files, each once
    files = [f for _, _, names in os.walk(tmp_path / "s.zarr" / "c") for f in names]
    assert len(files) == 6


@pytest.mark.parametrize("dtype", ["uint16", "int8", "float32"])
def test_statistics_from_the_chunk_threads_equal_one_pass(tmp_path, monkeypatch, dtype):
    from rockseg.io.intensity import IntensityAccumulator

    monkeypatch.setattr(zarr_writer, "_WRITE_THREADS", 4)
    vol = random_volume((21, 30, 26), dtype)
    vol[3, 4, 5] = np.iinfo(dtype).max if dtype != "float32" else 1e6  # an outlier in one chunk
    out = write_zarr(vol, tmp_path / "v.zarr", chunks=(4, 7, 8))
    one = IntensityAccumulator(vol.dtype, total=vol.size)
    for z in range(0, 21, 4):  # slab by slab, in order, as one thread would
        one.update(vol[z : z + 4])
    assert out.attrs["intensity"] == one.result()  # exact, whatever the order the threads ran in


def test_full_disk_while_writing_zarr(tmp_path, monkeypatch):
    vol = random_volume((20, 8, 9), "uint8")
    np.save(tmp_path / "v.npy", vol)
    # chunk files written by rockseg's own writer
    calls = []
    original_file = chunk_encoder._write_file

    def file_fills_up(path, *parts):
        calls.append(path)
        if len(calls) > 3:  # a few chunks fit, then the disk is full
            enospc()
        original_file(path, *parts)

    monkeypatch.setattr(chunk_encoder, "_write_file", file_fills_up)
    monkeypatch.setattr(zarr_writer, "_WRITE_THREADS", 3)
    msg = expect_error(tmp_path, OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9))
    assert "ENOSPC" in msg and "free space on the disk of" in msg and "partial output was removed" in msg
    assert len(calls) > 3
    # shard files, written by the one shard-writing thread
    calls.clear()
    msg = expect_error(tmp_path, OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9), shards=(2, 8, 9))
    assert "ENOSPC" in msg and len(calls) > 3
    # chunks written by zarr, for codec chains rockseg's writer leaves to it
    calls.clear()
    original = zarr.storage.LocalStore.set

    async def fills_up(self, key, value):
        calls.append(key)
        if key.startswith("c/") and len(calls) > 3:  # metadata and a few chunks fit, then the disk is full
            enospc()
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", fills_up)
    monkeypatch.setattr(chunk_encoder._ChunkFiles, "of", classmethod(lambda cls, array, root: None))
    msg = expect_error(tmp_path, OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9))
    assert "ENOSPC" in msg and len(calls) > 3


def test_no_chunk_is_written_after_a_failure(tmp_path, monkeypatch):
    """A failed run waits for its writer threads before removing the partial store, so none writes after."""
    import threading
    import time

    vol = random_volume((8, 40, 40), "uint16")
    np.save(tmp_path / "v.npy", vol)
    started, late = threading.Event(), []
    original = chunk_encoder._write_file

    def slow_then_full(path, *parts):
        if not started.is_set():
            started.set()
            enospc()
        time.sleep(0.01)  # chunks already running when the failure is seen
        original(path, *parts)
        late.append(path.exists())

    monkeypatch.setattr(chunk_encoder, "_write_file", slow_then_full)
    monkeypatch.setattr(zarr_writer, "_WRITE_THREADS", 4)
    expect_error(tmp_path, OutputWriteError, "No space left", tmp_path / "v.npy", chunks=(2, 5, 5))
    assert len(late) < 4 * 8 * 8  # the chunks not started were cancelled
    assert entries(tmp_path) == {"v.npy"}  # and the running ones finished before the store was removed
