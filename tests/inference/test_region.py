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


def test_tile_pool_runs_every_batch_at_full_size_so_a_tile_never_depends_on_its_batch():
    """A partial batch is padded to the batch size: a CPU convolution rounds a batch of one differently from a
    batch of four (up to 3e-6 in the default model's logits), and which tiles share a batch depends on timing."""
    import torch

    from rockseg.inference.region import TilePool

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))
    sizes = []

    def runner(batch, margin):
        sizes.append(len(batch))
        with torch.no_grad():
            logits = net(torch.from_numpy(batch)).numpy()
        return logits[:, 1] - logits[:, 0], None  # the margin between the two classes, as floats

    tiles = [np.random.default_rng(i).random((8, 8, 8), dtype=np.float32) for i in range(5)]
    got: dict[int, np.ndarray] = {}
    pool = TilePool(runner, batch_size=4)
    with pool.block():
        pool(tiles, lambda i, labels, probs: got.__setitem__(i, labels.copy()), [(0, 0, 0)] * len(tiles))
    assert sizes == [4, 4]  # 4 tiles, then the fifth padded to a batch of 4
    for i, tile in enumerate(tiles):
        alone = runner(np.stack([tile, *tiles[:3]])[:, None], None)[0][0]  # the same tile in another full batch
        np.testing.assert_array_equal(got[i], alone)
