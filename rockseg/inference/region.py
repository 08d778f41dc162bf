"""One region of the volume from the global tile grid: :func:`predict_region`, the reused arrays it works in
(:class:`BlockBuffers`) and the batching of tiles across the blocks in flight (:class:`TilePool`); no torch.

A block runs every tile whose kept centre meets it, so a voxel's label depends only on that one tile: the result
is the same for any block size, part split or worker count, and equal to running the grid over the whole volume
in memory. A block is fastest when its edge is a multiple of ``step`` (no tile runs twice). Each block reads its
region plus the halo from the input, normalises it with global statistics (never per tile or per block, which
would make seams) and hands its tiles to a runner (in a prediction, a :class:`~rockseg.inference.runner.TileRunner`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rockseg.inference.grid import TileGrid, Triple
from rockseg.io.intensity import normalize
from rockseg.vocabulary import OUTSIDE

# receives each tile's results as soon as its batch has run: (tile number, labels, probabilities or None)
Sink = Callable[[int, np.ndarray, "np.ndarray | None"], None]


class BlockBuffers:
    """The arrays one block in flight works in, made once and reused block after block.

    Arrays that live as long as a block (its normalised input, its labels) are the ones that fragment the heap
    when they are allocated afresh for every block while the network allocates and frees its activations around
    them; reused, they keep the process's memory flat however large the volume.
    """

    def __init__(self, grid: TileGrid, block: Triple, classes: int = 0, with_mask: bool = False,
                 dtype: np.dtype[Any] | None = None) -> None:
        # the most tiles a block can meet along an axis: block / step when the block is a multiple of the step
        # (blocks then start on tile boundaries), one more than its ceiling otherwise; n tiles read n * step + 2 halo
        tiles = [b // s if b % s == 0 else -(-b // s) + 1 for b, s in zip(block, grid.step)]
        self.box: Triple = tuple(n * s + 2 * h for n, s, h in zip(tiles, grid.step, grid.halo))  # type: ignore
        self._data = np.empty(math.prod(self.box), np.float32)
        self._raw = np.empty(math.prod(self.box), dtype) if dtype is not None else None
        self._labels = np.empty(math.prod(block), np.uint8)
        self._probs = np.empty(classes * math.prod(block), np.float32) if classes else None
        self._keep = np.empty(math.prod(block), bool) if with_mask else None

    @staticmethod
    def _view(flat: np.ndarray | None, shape: Sequence[int]) -> np.ndarray | None:
        """A C-contiguous array of ``shape`` at the start of ``flat`` (None if it has no buffer or is too small)."""
        n = math.prod(shape)
        return None if flat is None or n > flat.size else flat[:n].reshape(tuple(shape))

    def data(self, shape: Sequence[int]) -> np.ndarray | None:
        return self._view(self._data, shape)

    def raw(self, shape: Sequence[int]) -> np.ndarray | None:
        return self._view(self._raw, shape)

    def labels(self, shape: Sequence[int]) -> np.ndarray | None:
        return self._view(self._labels, shape)

    def probs(self, shape: Sequence[int]) -> np.ndarray | None:
        return self._view(self._probs, shape)

    def keep(self, shape: Sequence[int]) -> np.ndarray | None:
        return self._view(self._keep, shape)


class TilePool:
    """Batches the tiles of all blocks in flight together, so no block ends on a small, slow batch.

    A block cut into 27 tiles with batches of 2 would end on a batch of one, which costs a CPU about 30 % more
    per tile; here its last tile waits for the next block's first. Each block still gets exactly its own tiles'
    results (through its sink, right after their batch) and writes its own chunk: only the batching is shared. A
    partial batch runs as soon as no other block is being read (nothing more can come soon). The batch is
    stacked into one reused array and handed to ``runner`` (in the engine, a :class:`TileRunner` called on the
    model's thread).
    """

    def __init__(self, runner: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]], batch_size: int) -> None:
        self.runner, self.batch_size = runner, batch_size
        self.cv = threading.Condition()
        self.queue: list[tuple[np.ndarray, int, Sink, list[int]]] = []
        self.preparing = 0
        self.running = False
        self.error: BaseException | None = None
        self._local = threading.local()
        self._stack: np.ndarray | None = None

    @contextlib.contextmanager
    def block(self) -> Iterator[None]:
        """Around the work of one block: while its tiles are being read, partial batches wait for them."""
        with self.cv:
            self.preparing += 1
        self._local.submitted = False
        try:
            yield
        finally:
            with self.cv:
                if not self._local.submitted:
                    self.preparing -= 1
                self.cv.notify_all()

    def _batch(self, tiles: list[np.ndarray]) -> np.ndarray:
        shape = (self.batch_size, 1, *tiles[0].shape)
        if self._stack is None or self._stack.shape != shape:
            self._stack = np.empty(shape, np.float32)
        out = self._stack[: len(tiles)]
        np.stack(tiles, out=out[:, 0])
        return out

    def __call__(self, tiles: list[np.ndarray], sink: Sink) -> None:
        remaining = [len(tiles)]
        with self.cv:
            self.queue.extend((t, i, sink, remaining) for i, t in enumerate(tiles))
            if not getattr(self._local, "submitted", True):
                self._local.submitted = True
                self.preparing -= 1
            self.cv.notify_all()
        while True:
            with self.cv:
                while True:
                    if self.error is not None:
                        raise self.error
                    if remaining[0] == 0:
                        return
                    if not self.running and (len(self.queue) >= self.batch_size or (self.queue and self.preparing == 0)):
                        batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
                        self.running = True
                        break
                    self.cv.wait()
            try:
                labels, probs = self.runner(self._batch([t for t, *_ in batch]))
                for k, (_, i, tile_sink, _) in enumerate(batch):
                    tile_sink(i, labels[k], None if probs is None else probs[k])
            except BaseException as exc:
                with self.cv:
                    self.error, self.running = exc, False
                    self.cv.notify_all()
                raise
            with self.cv:
                for *_, left in batch:
                    left[0] -= 1
                self.running = False
                self.cv.notify_all()


def predict_region(
    region: tuple[slice, ...], *, grid: TileGrid, read: Callable[[tuple[slice, ...]], np.ndarray],
    stats: dict[str, Any], run_tiles: Callable[[list[np.ndarray], Sink], None], keep: np.ndarray | None = None,
    buffers: BlockBuffers | None = None, cropped: Sequence[int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) of one region from the global tile grid.

    Parameters
    ----------
    region : three slices of the grid's (Z, Y, X) region.
    read : reads a box (three slices, volume coordinates) of the raw volume.
    run_tiles : runs a list of normalised tiles (Tz, Ty, Tx) and hands each tile's (labels, probabilities or
        None) to a sink (a :class:`TilePool` shared by the blocks in flight, or any callable that does so).
    keep : optional (z, y, x) bool mask of the region; tiles whose kept centre has no voxel to keep are not run,
        and voxels not kept are labelled :data:`OUTSIDE` (probabilities 0).
    buffers : arrays to work in (:class:`BlockBuffers` of a block at least this large); the results are views
        of them, valid until they are reused. Default: new arrays.
    cropped : (z, y, x) voxels of each face that the tile results handed to the sink lack (a
        :class:`TileRunner`'s ``margin``: at most the halo).

    Returns
    -------
    labels : (z, y, x) uint8 array of the region; probabilities : (C, z, y, x) float32 or None.
    """
    step, halo, tile = grid.step, grid.halo, grid.tile
    rshape = tuple(r.stop - r.start for r in region)
    labels = buffers.labels(rshape) if buffers is not None else None
    if labels is None:
        labels = np.empty(rshape, np.uint8)
    labels.fill(OUTSIDE)
    out: dict[str, np.ndarray] = {}
    ks = grid.tiles_meeting(region)

    def kept(k: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The kept centre of tile k clipped to the region: (in region coordinates, in tile coordinates)."""
        lo = [max(kk * s, r.start) for kk, s, r in zip(k, step, region)]
        hi = [min((kk + 1) * s, r.stop) for kk, s, r in zip(k, step, region)]
        dst = tuple(slice(a - r.start, b - r.start) for a, b, r in zip(lo, hi, region))
        src = tuple(slice(a - (kk * s - h), b - (kk * s - h)) for a, b, kk, s, h in zip(lo, hi, k, step, halo))
        return dst, src

    origins = [k for k in itertools.product(*ks) if keep is None or keep[kept(k)[0]].any()]
    if not origins:
        return labels, None
    index = grid.input_index(ks)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    shape = tuple(b.stop - b.start for b in box)
    raw_out = buffers.raw(shape) if buffers is not None else None
    raw = read(box) if raw_out is None else read(box, out=raw_out)
    if not all(len(i) == n and i[0] == b.start for i, b, n in zip(index, box, shape)):
        raw = raw[np.ix_(*(i - b.start for i, b in zip(index, box)))]  # mirrored beyond a face of the volume
    data = normalize(raw, stats, out=buffers.data(raw.shape) if buffers is not None else None)
    del raw
    tiles = [
        data[tuple(slice((kk - kr.start) * s, (kk - kr.start) * s + t) for kk, kr, s, t in zip(k, ks, step, tile))]
        for k in origins
    ]

    def sink(i: int, tile_labels: np.ndarray, tile_probs: np.ndarray | None) -> None:
        dst, src = kept(origins[i])
        src = tuple(slice(a.start - c, a.stop - c) for a, c in zip(src, cropped))
        labels[dst] = tile_labels[src]
        if tile_probs is not None:
            if "probs" not in out:
                shape = (tile_probs.shape[0], *rshape)
                reused = buffers.probs(shape) if buffers is not None else None
                out["probs"] = np.empty(shape, np.float32) if reused is None else reused
                out["probs"].fill(0)
            out["probs"][(slice(None), *dst)] = tile_probs[(slice(None), *src)]

    run_tiles(tiles, sink)
    probs = out.get("probs")
    if keep is not None:
        labels[~keep] = OUTSIDE
        if probs is not None:
            probs[:, ~keep] = 0
    return labels, probs

