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
    # unclamped, tile 0 would read [-2, 14) and tile 1 [10, 26): both are moved inside the volume
    assert [st.tolist() for st in grid.read_starts(ks)] == [[0, 4]] * 3
    idx = grid.input_index(ks)
    assert idx[0].tolist() == list(range(20))


def test_axis_shorter_than_a_tile_is_mirrored():
    grid = TileGrid((10, 20, 20), (16, 16, 16), (2, 2, 2))
    ks = grid.tiles_meeting((slice(0, 10), slice(0, 20), slice(0, 20)))
    assert [list(k) for k in ks] == [[0], [0, 1], [0, 1]]
    assert grid.read_starts(ks)[0].tolist() == [-2]
    idx = grid.input_index(ks)
    assert idx[0].tolist() == [2, 1, *range(10), 8, 7, 6, 5]  # starts at -2, mirrored to 2
    assert idx[1].tolist() == list(range(20))


def test_crop_reads_real_context_and_clamps_only_at_the_volume_faces():
    # a region [3, 23) of a volume of 30 along z: tile 0 reads [1, 17) of the volume (real voxels before the
    # crop), tile 1 would read [13, 29) and stays; region [15, 30) reads up to the face, its last tile clamped
    grid = TileGrid((20, 20, 20), (16, 16, 16), (2, 2, 2), origin=(3, 0, 0), volume_shape=(30, 20, 20))
    ks = grid.tiles_meeting((slice(0, 20),) * 3)
    assert grid.read_starts(ks)[0].tolist() == [-2, 10]
    assert grid.input_index(ks)[0].tolist() == list(range(1, 29))
    tail = TileGrid((15, 20, 20), (16, 16, 16), (2, 2, 2), origin=(15, 0, 0), volume_shape=(30, 20, 20))
    assert tail.read_starts(tail.tiles_meeting((slice(0, 15),) * 3))[0].tolist() == [-2, -1]


def test_clamped_tiles_stay_inside_and_keep_each_voxel_once():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, tile = int(rng.integers(1, 80)), int(rng.integers(1, 24))
        halo = int(rng.integers(0, (tile - 1) // 2 + 1))
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo + 1, n + 1))
        grid = TileGrid((hi - lo, 1, 1), (tile, 1, 1), (halo, 0, 0), origin=(lo, 0, 0), volume_shape=(n, 1, 1))
        step = grid.step[0]
        ks = grid.tiles_meeting((slice(0, hi - lo), slice(0, 1), slice(0, 1)))[0]
        starts = grid.read_starts([ks, range(1), range(1)])[0] + lo  # volume coordinates
        kept = np.zeros(hi - lo, int)
        for k, start in zip(ks, starts):
            keep_lo, keep_hi = k * step + lo, min((k + 1) * step, hi - lo) + lo
            kept[keep_lo - lo : keep_hi - lo] += 1
            assert start <= keep_lo and keep_hi <= start + tile, (n, tile, halo, lo, hi, k)
            if n >= tile:
                assert 0 <= start and start + tile <= n, (n, tile, halo, lo, hi, k)
                # away from the faces a tile reads its whole halo on both sides, as before
                if k * step - halo + lo >= 0 and k * step - halo + lo + tile <= n:
                    assert start == k * step - halo + lo
        assert (kept == 1).all()
        assert (np.diff(starts) >= 0).all()


def test_parse_part():
    assert parse_part("2/4") == (2, 4)
    assert parse_part(None) is None
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(InputError):
            parse_part(bad)
