"""``rockseg convert`` as a user runs it."""

from __future__ import annotations

import numpy as np

from tests.helpers import run_rockseg as rockseg


def test_raw_size_mismatch_exit_2(tmp_path):
    np.zeros((4, 5, 6), np.uint16).tofile(tmp_path / "x.raw")
    proc = rockseg("convert", tmp_path / "x.raw", tmp_path / "out.zarr", "--shape", "4,5,7", "--dtype", "uint16")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "x.raw" in proc.stderr
    assert not (tmp_path / "out.zarr").exists()
