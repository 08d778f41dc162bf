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
