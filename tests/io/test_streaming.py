"""Tests of rockseg.io.streaming: slabs read ahead in a thread, read failures, the progress bar."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.io import sources, streaming
from rockseg.io.conversion import convert
from tests.io.samples import CountingSource, expect_error, random_volume


def test_prefetch_gives_the_same_slabs_and_passes_errors(monkeypatch):
    vol = random_volume((23, 4, 5), "uint8")
    src = CountingSource(vol)
    slabs = list(streaming._stream(src, 5))
    assert [(z0, z1) for z0, z1, _ in slabs] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in slabs]), vol)

    class Broken(CountingSource):
        def _read(self, z0, z1):
            if z0 >= 10:
                raise InputError("bad plane")
            return super()._read(z0, z1)

    stream = streaming._stream(Broken(vol), 5)
    assert next(stream)[0] == 0 and next(stream)[0] == 5
    with pytest.raises(InputError, match="bad plane"):
        next(stream)
    stream = streaming._stream(CountingSource(vol), 5)
    next(stream)
    stream.close()  # stopping early joins the reader thread
    monkeypatch.setattr(streaming, "_PREFETCH_BYTES", 1)  # big slabs are read in turn
    assert len(list(streaming._stream(CountingSource(vol), 5))) == 5


def test_read_failure_names_the_source(tmp_path, monkeypatch):
    vol = random_volume((8, 5, 4), "uint8")
    vol.tofile(tmp_path / "v.raw")

    def broken(self, array, position):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sources._FileVoxels, "_fill", broken)
    expect_error(tmp_path, InputError, "cannot read .*v.raw \\(plane z=0\\): .*Input/output error", tmp_path / "v.raw",
                 shape="8,5,4", dtype="uint8")


def test_progress_bar_runs(tmp_path, capsys):
    np.save(tmp_path / "v.npy", random_volume((3, 4, 5), "uint8"))
    convert(tmp_path / "v.npy", tmp_path / "v.zarr", progress=True)
    convert(tmp_path / "v.npy", tmp_path / "v.tif", progress=True)
    assert "v.zarr" in capsys.readouterr().err
