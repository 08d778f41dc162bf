"""The arrays a block works in hold every block of any grid."""

from __future__ import annotations

import numpy as np

from rockseg.inference.grid import TileGrid, block_grid, block_region
from rockseg.inference.region import BlockBuffers


def test_block_buffers_hold_every_block_of_any_grid():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(5, 90, 3))
        tile = int(rng.integers(3, 20))
        halo = int(rng.integers(0, (tile - 1) // 2 + 1))
        block = tuple(min(int(rng.integers(1, 60)), n) for n in shape)
        grid = TileGrid(shape, (tile,) * 3, (halo,) * 3)
        buffers = BlockBuffers(grid, block)
        for index in block_grid(shape, block):
            region = block_region(index, shape, block)
            need = [len(i) for i in grid.input_index(grid.tiles_meeting(region))]
            assert all(n <= b for n, b in zip(need, buffers.box)), (shape, tile, halo, block, index)
