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
# runs a block's tiles, each with the (z, y, x) margin its results may lack, and hands each tile's results to a sink
RunTiles = Callable[[list[np.ndarray], Sink, list[Triple]], None]


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
    partial batch runs as soon as no other block is being read (nothing more can come soon), padded to the full
    batch size so that its tiles get the same bits as in a full one. A batch holds
    tiles of one margin (tiles at the volume's faces keep voxels in their halo, so their results lack less of it);
    it is stacked into one reused array and handed to ``runner(batch, margin)`` (in the engine, a
    :class:`TileRunner` called on the model's thread).
    """

    def __init__(self, runner: Callable[[np.ndarray, Triple], tuple[np.ndarray, np.ndarray | None]],
                 batch_size: int) -> None:
        self.runner, self.batch_size = runner, batch_size
        self.cv = threading.Condition()
        self.queue: list[tuple[np.ndarray, int, Sink, list[int], Triple]] = []
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
        """The tiles stacked into a batch of always ``batch_size`` (a partial one padded with whatever the stack
        held before, whose results are dropped): PyTorch's CPU convolutions give a batch of one other float
        rounding (measured: up to 3e-6 in the default model's logits) than a batch of four, and a tile's result
        must not depend on which tiles shared its batch, which the timing of the blocks decides. For a fixed batch
        size the result of a tile is the same bits at any place in the batch, next to any other tiles."""
        shape = (self.batch_size, 1, *tiles[0].shape)
        if self._stack is None or self._stack.shape != shape:
            self._stack = np.zeros(shape, np.float32)
        np.stack(tiles, out=self._stack[: len(tiles), 0])
        return self._stack

    def _take(self) -> list[tuple[np.ndarray, int, Sink, list[int], Triple]] | None:
        """The next batch to run (a full one of one margin, or any partial one once no block is being read)."""
        counts: dict[Triple, int] = {}
        for item in self.queue:
            counts[item[4]] = counts.get(item[4], 0) + 1
        full = [m for m, c in counts.items() if c >= self.batch_size]
        if not full and not (self.queue and self.preparing == 0):
            return None
        margin = full[0] if full else self.queue[0][4]
        batch = [item for item in self.queue if item[4] == margin][: self.batch_size]
        taken = {id(item) for item in batch}
        self.queue = [item for item in self.queue if id(item) not in taken]
        return batch

    def __call__(self, tiles: list[np.ndarray], sink: Sink, margins: list[Triple]) -> None:
        remaining = [len(tiles)]
        with self.cv:
            self.queue.extend((t, i, sink, remaining, m) for i, (t, m) in enumerate(zip(tiles, margins)))
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
                    if not self.running and (batch := self._take()) is not None:
                        self.running = True
                        break
                    self.cv.wait()
            try:
                labels, probs = self.runner(self._batch([t for t, *_ in batch]), batch[0][4])
                for k, (_, i, tile_sink, _, _) in enumerate(batch):
                    tile_sink(i, labels[k], None if probs is None else probs[k])
            except BaseException as exc:
                with self.cv:
                    self.error, self.running = exc, False
                    self.cv.notify_all()
                raise
            with self.cv:
                for item in batch:
                    item[3][0] -= 1
                self.running = False
                self.cv.notify_all()


def predict_region(
    region: tuple[slice, ...], *, grid: TileGrid, read: Callable[[tuple[slice, ...]], np.ndarray],
    stats: dict[str, Any], run_tiles: RunTiles, keep: np.ndarray | None = None,
    buffers: BlockBuffers | None = None, cropped: Sequence[int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) of one region from the global tile grid.

    Parameters
    ----------
    region : three slices of the grid's (Z, Y, X) region.
    read : reads a box (three slices, volume coordinates) of the raw volume.
    run_tiles : runs a list of normalised tiles (Tz, Ty, Tx), each with the (z, y, x) margin of each face its
        results may lack, and hands each tile's (labels, probabilities or None) to a sink (a :class:`TilePool`
        shared by the blocks in flight, or any callable that does so).
    keep : optional (z, y, x) bool mask of the region; tiles whose kept centre has no voxel to keep are not run,
        and voxels not kept are labelled :data:`OUTSIDE` (probabilities 0).
    buffers : arrays to work in (:class:`BlockBuffers` of a block at least this large); the results are views
        of them, valid until they are reused. Default: new arrays.
    cropped : (z, y, x) voxels of each face that the tile results may lack (a :class:`TileRunner`'s ``margin``:
        at most the halo); a tile clamped at a face of the volume keeps voxels of its halo and is run whole
        (margin 0): which tiles those are depends on the tile alone, never on the block, batch or worker.

    Returns
    -------
    labels : (z, y, x) uint8 array of the region; probabilities : (C, z, y, x) float32 or None.
    """
    step = grid.step
    rshape = tuple(r.stop - r.start for r in region)
    labels = buffers.labels(rshape) if buffers is not None else None
    if labels is None:
        labels = np.empty(rshape, np.uint8)
    labels.fill(OUTSIDE)
    out: dict[str, np.ndarray] = {}
    ks = grid.tiles_meeting(region)
    starts = [st.tolist() for st in grid.read_starts(ks)]  # where each tile reads from, per axis

    def kept(k: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The kept centre of tile k clipped to the region: (in region coordinates, in tile coordinates)."""
        lo = [max(kk * s, r.start) for kk, s, r in zip(k, step, region)]
        hi = [min((kk + 1) * s, r.stop) for kk, s, r in zip(k, step, region)]
        dst = tuple(slice(a - r.start, b - r.start) for a, b, r in zip(lo, hi, region))
        at = [st[kk - kr.start] for st, kk, kr in zip(starts, k, ks)]
        src = tuple(slice(a - a0, b - a0) for a, b, a0 in zip(lo, hi, at))
        return dst, src

    origins = [k for k in itertools.product(*ks) if keep is None or keep[kept(k)[0]].any()]
    if not origins:
        return labels, None
    tiles = _tile_inputs(grid, ks, starts, origins, read=read, stats=stats, buffers=buffers)

    def margin(k: Sequence[int]) -> Triple:
        """The margin tile k's results may lack: ``cropped``, or none for a tile clamped at a face of the volume
        (its kept centre reaches into its halo). Two kinds only, so that face tiles still fill batches."""
        clamped = any(st[kk - kr.start] != kk * s - h for kk, st, kr, s, h in zip(k, starts, ks, step, grid.halo))
        return (0, 0, 0) if clamped else tuple(cropped)  # type: ignore[return-value]

    margins = [margin(k) for k in origins]

    def sink(i: int, tile_labels: np.ndarray, tile_probs: np.ndarray | None) -> None:
        dst, src = kept(origins[i])
        src = tuple(slice(a.start - c, a.stop - c) for a, c in zip(src, margins[i]))
        labels[dst] = tile_labels[src]
        if tile_probs is not None:
            if "probs" not in out:
                shape = (tile_probs.shape[0], *rshape)
                reused = buffers.probs(shape) if buffers is not None else None
                out["probs"] = np.empty(shape, np.float32) if reused is None else reused
                out["probs"].fill(0)
            out["probs"][(slice(None), *dst)] = tile_probs[(slice(None), *src)]

    run_tiles(tiles, sink, margins)
    probs = out.get("probs")
    if keep is not None:
        labels[~keep] = OUTSIDE
        if probs is not None:
            probs[:, ~keep] = 0
    return labels, probs


def _tile_inputs(
    grid: TileGrid, ks: Sequence[range], starts: list[list[int]], origins: list[tuple[int, ...]], *,
    read: Callable[..., np.ndarray], stats: dict[str, Any], buffers: BlockBuffers | None,
) -> list[np.ndarray]:
    """The normalised input of each tile of ``origins`` (of the tile ranges ``ks``, read from ``starts``), as views
    of one box read once (mirrored beyond a face of the volume) and normalised once."""
    index = grid.input_index(ks)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    shape = tuple(b.stop - b.start for b in box)
    raw_out = buffers.raw(shape) if buffers is not None else None
    raw = read(box) if raw_out is None else read(box, out=raw_out)
    if not all(len(i) == n and i[0] == b.start for i, b, n in zip(index, box, shape)):
        raw = raw[np.ix_(*(i - b.start for i, b in zip(index, box)))]  # mirrored beyond a face of the volume
    data = normalize(raw, stats, out=buffers.data(raw.shape) if buffers is not None else None)
    first = [min(st) for st in starts]
    return [
        data[tuple(slice(st[kk - kr.start] - f, st[kk - kr.start] - f + t)
                   for kk, kr, st, f, t in zip(k, ks, starts, first, grid.tile))]
        for k in origins
    ]
