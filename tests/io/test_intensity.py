"""Tests of rockseg.io.intensity: statistics slab by slab and from threads in any order equal one NumPy pass."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.samples import random_volume, rng


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "bool", "float32", "int32"])
def test_slab_statistics_equal_numpy(monkeypatch, dtype):
    from rockseg.io import intensity as normalization
    from rockseg.io.intensity import IntensityAccumulator

    monkeypatch.setattr(normalization, "_PIECE", 1000)  # many pieces per slab
    monkeypatch.setattr(normalization, "_HIST_PIECE", 999)
    vol = random_volume((7, 30, 40), "uint8") > 128 if dtype == "bool" else random_volume((7, 30, 40), dtype)
    acc = IntensityAccumulator(vol.dtype, total=vol.size)
    for z in range(0, 7, 3):
        acc.update(vol[z : z + 3])
    got = acc.result()
    values = vol.astype(np.float64)
    assert (got["min"], got["max"]) == (values.min(), values.max())
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(values.std(), rel=1e-9)
    lo, hi = np.percentile(values, [0.5, 99.5], method="inverted_cdf")
    if dtype in ("float32", "int32"):
        assert not got["exact"]
        assert got["p_low"] == pytest.approx(lo, rel=0.05, abs=1) and got["p_high"] == pytest.approx(hi, rel=0.05)
    else:
        assert got["exact"] and (got["p_low"], got["p_high"]) == (lo, hi)


def test_accumulator_updates_from_threads_in_any_order():
    from concurrent.futures import ThreadPoolExecutor

    from rockseg.io.intensity import IntensityAccumulator

    vol = random_volume((40, 33, 35), "int16")
    acc = IntensityAccumulator(vol.dtype)
    assert acc.exact
    pieces = [vol[z, y : y + 5] for z in range(40) for y in range(0, 33, 5)]
    order = rng.permutation(len(pieces))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: acc.update(pieces[i]), order))
    assert acc.count == vol.size
    np.testing.assert_array_equal(acc._hist, np.bincount(vol.reshape(-1).astype(np.int64) + 32768, minlength=65536))
    assert not IntensityAccumulator(np.dtype("float32")).exact


# ----------------------------------------------------------------------------- chunk pieces, threads, samples
def _chunked(values, chunks):
    import zarr

    arr = zarr.create_array(store={}, shape=values.shape, chunks=chunks, dtype=values.dtype)
    arr[...] = values
    return arr


def _recording_reads(monkeypatch):
    from rockseg.io import intensity

    regions = []
    read = intensity.read_piece

    def recording(volume, region):
        regions.append(region)
        return read(volume, region)

    monkeypatch.setattr(intensity, "read_piece", recording)
    return regions


@pytest.mark.parametrize("dtype", ["uint16", "int8", "float32", "int32"])
def test_chunk_pieces_on_threads_equal_one_numpy_pass_in_bounded_pieces(monkeypatch, dtype):
    from rockseg.io import intensity

    vol = random_volume((3, 70, 300), dtype)  # wide planes, small chunks
    arr = _chunked(vol, (2, 16, 16))
    monkeypatch.setattr(intensity, "PIECE_VOXELS", 3 * 2 * 16 * 16)
    regions = _recording_reads(monkeypatch)
    got = intensity.intensity_stats(arr, workers=3)
    # every piece is whole chunks, at most three of them: memory never holds a plane
    sizes = [[r.stop - r.start for r in region] for region in regions]
    assert len(regions) == 2 * 5 * 7 and max(int(np.prod(s)) for s in sizes) <= 3 * 2 * 16 * 16
    assert all(r.start % c == 0 for region in regions for r, c in zip(region, (2, 16, 16)))
    values = vol.astype(np.float64)
    assert (got["min"], got["max"]) == (values.min(), values.max())
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
    lo, hi = np.percentile(values, [0.5, 99.5], method="inverted_cdf")
    if got["exact"]:
        assert (got["p_low"], got["p_high"]) == (lo, hi)
    # the same numbers whatever the threads and the order pieces finish in
    assert intensity.intensity_stats(arr, workers=1) == got


def test_a_large_volume_is_represented_by_the_same_sample_of_chunks_every_time(monkeypatch):
    from rockseg.io import intensity

    vol = random_volume((8, 64, 64), "uint16")
    arr = _chunked(vol, (4, 16, 16))
    monkeypatch.setattr(intensity, "PIECE_VOXELS", 4 * 16 * 16)
    monkeypatch.setattr(intensity, "SAMPLE_VOXELS", 10 * 4 * 16 * 16)
    regions = _recording_reads(monkeypatch)
    first = intensity.intensity_stats(arr, sample_above=vol.size - 1, workers=3)
    picked = sorted(map(str, regions))
    regions.clear()
    assert intensity.intensity_stats(arr, sample_above=vol.size - 1, workers=1) == first
    assert sorted(map(str, regions)) == picked and len(picked) == 10
    assert first["sampled"] == {"pieces": 10, "of": 32}
    rows = {r.start for region in regions for r in region[:1]} | {r.start for region in regions for r in region[1:2]}
    assert len(rows) > 2  # spread over the volume, not the first few chunks
    sample = np.concatenate([vol[region].reshape(-1) for region in regions]).astype(np.float64)
    assert (first["p_low"], first["p_high"]) == tuple(np.percentile(sample, [0.5, 99.5], method="inverted_cdf"))
    assert "sampled" not in intensity.intensity_stats(arr)


def test_statistics_are_stored_in_the_volume_or_beside(tmp_path, monkeypatch):
    import zarr

    from rockseg.io import intensity

    arr = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=(4, 8, 8), chunks=(2, 4, 4), dtype="uint8")
    arr[...] = 7
    stats = intensity.intensity_stats(arr)
    assert intensity.load_stats(arr) is None
    assert intensity.save_stats(arr, tmp_path / "v.zarr", stats) == str(tmp_path / "v.zarr" / "zarr.json")
    assert intensity.load_stats(zarr.open_array(str(tmp_path / "v.zarr"))) == stats
    # a read-only volume: the file beside the prediction, which names the volume it belongs to
    other = zarr.create_array(store=str(tmp_path / "w.zarr"), shape=(4, 8, 8), chunks=(2, 4, 4), dtype="uint8")
    monkeypatch.setattr(intensity, "_write_atomic", _refusing(intensity._write_atomic, "zarr.json"))
    beside = tmp_path / "intensity.json"
    assert intensity.save_stats(other, tmp_path / "w.zarr", stats, beside=beside) == str(beside)
    assert intensity.load_stats(other, beside) == stats
    bigger = zarr.create_array(store={}, shape=(4, 8, 9), chunks=(2, 4, 4), dtype="uint8")
    assert intensity.load_stats(bigger, beside) is None


def _refusing(write, name):
    def refusing(path, text):
        if path.name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return write(path, text)

    return refusing
