"""Global intensity statistics and the normalisation a network sees.

Normalisation is global: statistics are computed once for a whole volume (in the same single pass that converts
it, or once before prediction) and never per tile or per block, which would make visible seams. Before
prediction they are read in pieces of whole chunks on several threads (or a Dask cluster), never in slabs of
whole planes, and stored (:func:`save_stats`: in the volume's attributes, else beside the prediction) so that
every later run and every part of a job array reuses them (:func:`load_stats`). Volumes of more than
:data:`SAMPLE_ABOVE` voxels use a deterministic sample of their chunks (:func:`sample_pieces`).
The network input is ``(x - p_low) / (p_high - p_low)``, with ``p_low`` and ``p_high`` the 0.5th and 99.5th
percentiles of the volume, so grey values of any bit depth map to roughly [0, 1].
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.devices import available_cpus
from rockseg.errors import InputError

ATTR_INTENSITY = "intensity"  # the attribute name of rockseg.io.stores (which imports zarr; this module does not)
Mapper = Callable[[Callable[[Any], Any], Sequence[Any], Callable[[list[Any]], None]], None]

P_LOW = 0.5
P_HIGH = 99.5
_MAX_SAMPLES = 1 << 22
_PIECE = 1 << 22  # voxels per float64 temporary
# Voxels per bincount: np.bincount widens its input to intp, and a 2 MB temporary stays in cache (about 1.5x
# faster than 4 M voxels at a time on 16-bit data).
_HIST_PIECE = 1 << 18
PIECE_VOXELS = 1 << 22  # voxels read at a time by one thread (whole chunks; one chunk if a chunk is larger)
SAMPLE_ABOVE = 1 << 32  # volumes with more voxels are represented by a deterministic sample of their pieces
SAMPLE_VOXELS = 1 << 30  # about this many voxels in such a sample


class IntensityAccumulator:
    """Accumulate intensity statistics over slabs of a volume in one pass, with bounded memory.

    Integer volumes of 8 or 16 bits get an exact histogram (so exact percentiles); other dtypes keep a regular
    subsample of at most ~4 M values for the percentiles, while min, max, mean and std stay exact.

    For the exact dtypes (:attr:`exact`), :meth:`update` may be called from several threads at once, on pieces in
    any order: the histogram is the same. Other dtypes must be fed from one thread in volume order, or the subsample
    (and so the percentiles) would depend on thread timing.
    """

    def __init__(self, dtype: np.dtype, total: int | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = np.inf
        self.max = -np.inf
        self._exact = self.dtype.kind in "uib" and self.dtype.itemsize <= 2
        self._offset = int(np.iinfo(self.dtype).min) if self.dtype.kind in "ui" else 0
        self._hist = np.zeros(1 << (8 * self.dtype.itemsize), np.int64) if self._exact else None
        self._stride = max(1, (total or 0) // _MAX_SAMPLES)
        self._samples: list[np.ndarray] = []
        self._nsamples = 0
        self._lock = threading.Lock()

    @property
    def exact(self) -> bool:
        """True for 8- and 16-bit integers (and bool): an exact histogram, and :meth:`update` is thread-safe."""
        return self._exact

    def update(self, slab: np.ndarray) -> None:
        """Add one slab (any shape) of the volume.

        8- and 16-bit integers only feed the histogram (bincounts of ``_HIST_PIECE`` voxels, added under a lock);
        count, sum, sum of squares, minimum and maximum follow from it exactly in :meth:`result`. Other dtypes are
        taken in pieces of ``_PIECE`` voxels, so the float64 temporaries stay a few tens of MB whatever the slab
        size.
        """
        flat = np.asarray(slab).reshape(-1)
        if self._exact:
            if flat.size:
                counts = np.bincount(self._bins(flat[:_HIST_PIECE]), minlength=self._hist.size)
                for start in range(_HIST_PIECE, flat.size, _HIST_PIECE):
                    counts += np.bincount(self._bins(flat[start : start + _HIST_PIECE]), minlength=self._hist.size)
                with self._lock:
                    self._hist += counts
                    self.count += flat.size
            return
        with self._lock:
            for start in range(0, flat.size, _PIECE):
                self._update_float(flat[start : start + _PIECE])

    def _bins(self, piece: np.ndarray) -> np.ndarray:
        """Histogram bin of each value: ``value - min(dtype)``, without a widening copy."""
        if piece.dtype == np.bool_:
            return piece.view(np.uint8)
        if piece.dtype.kind == "i":
            # value - min(dtype) is the two's complement pattern with its sign bit flipped (offset binary)
            unsigned = piece.view(f"u{piece.dtype.itemsize}")
            return unsigned ^ unsigned.dtype.type(1 << (8 * piece.dtype.itemsize - 1))
        return piece

    def _update_float(self, flat: np.ndarray) -> None:
        if flat.size == 0:
            return
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            raise InputError("the volume holds NaN or Inf values: replace them (e.g. with 0) before using it")
        self.count += flat.size
        f64 = flat.astype(np.float64, copy=False)
        self.sum += float(f64.sum())
        self.sumsq += float(np.square(f64).sum())
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        sample = flat[:: self._stride].astype(np.float64)
        self._samples.append(sample)
        self._nsamples += sample.size
        if self._nsamples > 2 * _MAX_SAMPLES:
            merged = np.concatenate(self._samples)[::2]
            self._samples, self._nsamples, self._stride = [merged], merged.size, self._stride * 2

    def result(self) -> dict[str, Any]:
        """The statistics as a JSON-ready dict (the ``intensity`` store attribute)."""
        if self.count == 0:
            raise InputError("cannot compute intensity statistics of an empty volume")
        if self._exact:
            present = np.flatnonzero(self._hist)
            values = np.arange(self._hist.size, dtype=np.float64) + self._offset
            counts = self._hist.astype(np.float64)
            self.min, self.max = float(present[0] + self._offset), float(present[-1] + self._offset)
            self.sum, self.sumsq = float(counts @ values), float(counts @ (values * values))
        mean = self.sum / self.count
        std = float(np.sqrt(max(self.sumsq / self.count - mean * mean, 0.0)))
        if self._exact:
            cdf = np.cumsum(self._hist) / self.count
            lo = int(np.searchsorted(cdf, P_LOW / 100)) + self._offset
            hi = int(np.searchsorted(cdf, P_HIGH / 100)) + self._offset
            p_low, p_high = float(lo), float(hi)
            nz = np.nonzero(self._hist)[0]
            bins = {"first": int(nz[0]) + self._offset, "counts": self._hist[nz[0] : nz[-1] + 1].tolist()}
            if len(bins["counts"]) > 4096:  # keep the attribute small for 16-bit data
                bins = None
        else:
            values = np.concatenate(self._samples)
            p_low, p_high = (float(v) for v in np.percentile(values, [P_LOW, P_HIGH]))
            bins = None
        out: dict[str, Any] = {
            "min": self.min, "max": self.max, "mean": mean, "std": std,
            "p_low": p_low, "p_high": p_high, "percentiles": [P_LOW, P_HIGH],
            "exact": bool(self._exact),
        }
        if bins is not None:
            out["histogram"] = bins
        return out


def intensity_stats(
    volume: Any, *, slab: int | None = None, workers: int | None = None, mapper: Mapper | None = None,
    sample_above: int | None = None,
) -> dict[str, Any]:
    """Intensity statistics of a whole volume (NumPy or Zarr array), read piece by piece.

    A chunked (Zarr) array is read in pieces of whole chunks (:func:`chunk_pieces`: at most
    :data:`PIECE_VOXELS` voxels, or one chunk where a chunk is larger), on ``workers`` threads or through
    ``mapper``, so memory stays a few pieces per thread whatever the plane size. The result does not depend on the
    number of threads or the order pieces finish in.

    A volume of more than ``sample_above`` voxels (default :data:`SAMPLE_ABOVE`) is represented by a
    deterministic sample of its chunk pieces (:func:`sample_pieces`: the same pieces on every run and every task,
    about :data:`SAMPLE_VOXELS` voxels, spread over the whole volume); the result then records
    ``"sampled": {"pieces": k, "of": n}``.

    Parameters
    ----------
    volume : array of shape (Z, Y, X) or (Y, X), any numeric dtype.
    slab : read this many whole planes at a time, in order, on this thread (the former behaviour).
    workers : threads reading pieces (default: the CPUs of this process, at most 8).
    mapper : runs the pieces elsewhere (e.g. on a Dask cluster): ``mapper(fn, pieces, done)`` calls
        ``done(results)`` with lists of ``fn(piece)``; ``fn`` and the volume must then pickle.
    """
    chunks = getattr(volume, "chunks", None)
    if slab is not None or chunks is None or volume.ndim < 2:
        return _slab_stats(volume, slab)
    total = int(np.prod(volume.shape, dtype=np.int64))
    pieces = chunk_pieces(volume.shape, chunks)
    limit = SAMPLE_ABOVE if sample_above is None else sample_above
    sampled = None
    if total > limit:
        n = len(pieces)
        pieces = sample_pieces(pieces, SAMPLE_VOXELS)
        sampled = {"pieces": len(pieces), "of": n}
        total = sum(int(np.prod([r.stop - r.start for r in p])) for p in pieces)
    reader = _PieceReader(volume, max(1, total // _MAX_SAMPLES))
    partials: dict[int, _Partial] = {}
    acc = IntensityAccumulator(volume.dtype, total=total)

    def done(results: list[tuple[int, _Partial]]) -> None:
        for i, part in results:
            if acc.exact:  # integer histograms add up in any order: no need to keep them
                acc._hist += part.hist
                acc.count += part.count
            else:
                partials[i] = part

    items = list(enumerate(pieces))
    if mapper is not None:
        mapper(reader, items, done)
    else:
        _map_threads(reader, items, done, workers or min(8, available_cpus()))
    for i in sorted(partials):  # in piece order, so that float sums do not depend on timing
        partials[i].merge_into(acc)
    out = acc.result()
    if sampled is not None:
        out["sampled"] = sampled
    return out


def _slab_stats(volume: Any, slab: int | None) -> dict[str, Any]:
    acc = IntensityAccumulator(volume.dtype, total=int(np.prod(volume.shape)))
    if volume.ndim < 3:
        acc.update(np.asarray(volume[...]))
        return acc.result()
    step = slab or int(getattr(volume, "chunks", (16,))[0]) or 16
    for z in range(0, volume.shape[0], step):
        acc.update(np.asarray(volume[z : z + step]))
    return acc.result()


def chunk_pieces(shape: Sequence[int], chunks: Sequence[int], *, voxels: int | None = None) -> list[tuple[slice, ...]]:
    """The regions a chunked volume is read in: whole chunks, grouped along the last axes up to ``voxels``
    (default :data:`PIECE_VOXELS`) per piece, in C order.

    >>> chunk_pieces((4, 8, 8), (2, 4, 4), voxels=64)
    [(slice(0, 2, None), slice(0, 8, None), slice(0, 8, None)), (slice(2, 4, None), slice(0, 8, None), slice(0, 8, None))]
    """
    room = max(1, (voxels or PIECE_VOXELS) // int(np.prod(chunks)))
    counts = [-(-n // c) for n, c in zip(shape, chunks)]
    group = [1] * len(shape)
    for ax in reversed(range(len(shape))):
        group[ax] = max(1, min(counts[ax], room))
        room //= group[ax]
        if group[ax] < counts[ax]:
            break
    edges = [c * g for c, g in zip(chunks, group)]
    grid = itertools.product(*(range(0, n, e) for n, e in zip(shape, edges)))
    return [tuple(slice(o, min(o + e, n)) for o, e, n in zip(origin, edges, shape)) for origin in grid]


def sample_pieces(pieces: Sequence[tuple[slice, ...]], voxels: int) -> list[tuple[slice, ...]]:
    """A deterministic sample of ``pieces`` of about ``voxels`` voxels in all, spread over the volume.

    The pieces are ranked by a fixed hash of their index (a 64-bit mix, the same on every machine and run) and
    the first ones taken, in volume order, until ``voxels`` is reached.
    """
    index = np.arange(len(pieces), dtype=np.uint64)
    with np.errstate(over="ignore"):  # splitmix64: wrapping arithmetic is the point
        z = index * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    chosen, total = [], 0
    for i in np.argsort(z, kind="stable"):
        chosen.append(int(i))
        total += int(np.prod([r.stop - r.start for r in pieces[i]]))
        if total >= voxels:
            break
    return [pieces[i] for i in sorted(chosen)]


class _Partial:
    """What one piece adds to the statistics (a histogram, or moments and a regular subsample)."""

    def __init__(self, piece: np.ndarray, exact: bool, stride: int) -> None:
        flat = piece.reshape(-1)
        self.count = int(flat.size)
        if exact:
            acc = IntensityAccumulator(piece.dtype)
            acc.update(flat)
            self.hist = acc._hist
            return
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            raise InputError("the volume holds NaN or Inf values: replace them (e.g. with 0) before using it")
        f64 = flat.astype(np.float64)
        self.sum, self.sumsq = float(f64.sum()), float(np.square(f64).sum())
        self.min, self.max = float(flat.min()), float(flat.max())
        self.sample = f64[::stride]

    def merge_into(self, acc: IntensityAccumulator) -> None:
        acc.count += self.count
        acc.sum += self.sum
        acc.sumsq += self.sumsq
        acc.min, acc.max = min(acc.min, self.min), max(acc.max, self.max)
        acc._samples.append(self.sample)


@dataclass(frozen=True)
class _PieceReader:
    """Read one piece of a volume and reduce it to a :class:`_Partial` (picklable for a Dask worker)."""

    volume: Any
    stride: int

    def __call__(self, item: tuple[int, tuple[slice, ...]]) -> tuple[int, _Partial]:
        i, region = item
        piece = read_piece(self.volume, region)
        exact = piece.dtype.kind in "uib" and piece.dtype.itemsize <= 2
        return i, _Partial(piece, exact, self.stride)


def read_piece(volume: Any, region: tuple[slice, ...]) -> np.ndarray:
    """Read one region of the volume (the one place the statistics read data: tests count the calls)."""
    return np.asarray(volume[region])


def _map_threads(fn: Callable[[Any], Any], items: Sequence[Any], done: Callable[[list[Any]], None],
                 workers: int) -> None:
    """``done([fn(item)])`` for every item, on ``workers`` threads, at most two items per thread in flight."""
    todo = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="rockseg-stats") as pool:
        running = {pool.submit(fn, item) for item in itertools.islice(todo, 2 * workers)}
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done([future.result()])
                running.update(pool.submit(fn, item) for item in itertools.islice(todo, 1))


# ------------------------------------------------------------------------------------------------ storing them
def load_stats(volume: Any, beside: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """Statistics stored for ``volume`` (a Zarr array): its ``intensity`` attribute, else the file ``beside``
    (written by :func:`save_stats` for a read-only volume) when it names this volume; ``None`` if neither."""
    stored = dict(getattr(volume, "attrs", {})).get(ATTR_INTENSITY)
    if isinstance(stored, dict) and {"p_low", "p_high"} <= stored.keys():
        return stored
    if beside is not None and Path(beside).is_file():
        try:
            record = json.loads(Path(beside).read_text())
        except (OSError, ValueError):
            return None
        if record.get("volume") == _identity(volume):
            return record["intensity"]
    return None


def save_stats(volume: Any, path: str | os.PathLike[str], stats: dict[str, Any],
               beside: str | os.PathLike[str] | None = None) -> str | None:
    """Store ``stats`` where the next run finds them: the ``intensity`` attribute of the volume at ``path``
    (its metadata file replaced atomically), or, where that cannot be written, the file ``beside``.

    Returns where they went, or ``None`` if nowhere could be written (the next run computes them again).
    """
    meta = Path(path) / "zarr.json"
    key = "attributes"
    if not meta.exists():
        meta, key = Path(path) / ".zattrs", ""
    try:
        doc = json.loads(meta.read_text()) if meta.exists() else {}
        target = doc.setdefault(key, {}) if key else doc
        target[ATTR_INTENSITY] = stats
        _write_atomic(meta, json.dumps(doc, indent=2))
        return str(meta)
    except (OSError, ValueError):
        pass
    if beside is None:
        return None
    try:
        _write_atomic(Path(beside), json.dumps({"volume": _identity(volume), ATTR_INTENSITY: stats}, indent=2))
    except OSError:
        return None
    return str(beside)


def _identity(volume: Any) -> dict[str, Any]:
    return {"shape": list(volume.shape), "dtype": str(volume.dtype), "chunks": list(getattr(volume, "chunks", ()))}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def normalize(block: np.ndarray, stats: Mapping[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """Map grey values to network input: ``(block - p_low) / (p_high - p_low)`` as float32."""
    lo = float(stats["p_low"])
    scale = float(stats["p_high"]) - lo
    if scale <= 0:
        scale = float(stats.get("std") or 0.0) or 1.0
    out = np.subtract(block, lo, out=out, dtype=np.float32, casting="unsafe")
    out *= np.float32(1.0 / scale)
    return out
