"""The tile grid, the block grid and the job-array parts, against NumPy and hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.inference.grid import TileGrid, parse_part, reflect_index


def test_reflect_index_matches_numpy_pad():
    for n in (1, 2, 3, 7):
        base = np.arange(n)
        padded = np.pad(base, 9, mode="reflect") if n > 1 else np.zeros(n + 18, int)
        assert reflect_index(np.arange(-9, n + 9), n).tolist() == padded.tolist()


def test_tile_grid_covers_each_voxel_once():
    grid = TileGrid((20, 20, 20), (16, 16, 16), (2, 2, 2))
    assert grid.step == (12, 12, 12)
    ks = grid.tiles_meeting((slice(0, 20),) * 3)
    assert [list(k) for k in ks] == [[0, 1]] * 3
    idx = grid.input_index(ks)
    assert idx[0][0] == 2 and len(idx[0]) == 12 + 16  # starts at -2, mirrored to 2


def test_parse_part():
    assert parse_part("2/4") == (2, 4)
    assert parse_part(None) is None
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(InputError):
            parse_part(bad)
