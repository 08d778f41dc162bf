"""Overlap-tile inference over volumes larger than memory, block by block, scheduled by Dask.

Vocabulary: a *tile* is one network input (edge ``tile``); its outer ``halo`` voxels on each side are context
and are cut off, so each tile contributes its centre of edge ``step = tile - 2 * halo``. A *block* (edge
``block``) is the unit of scheduling and writing and is also the output chunk.

Tiles sit on one grid for the whole volume: tile ``k`` along an axis keeps voxels ``[k * step, (k + 1) * step)``
and reads ``[k * step - halo, k * step - halo + tile)``, with the volume mirrored (NumPy's ``reflect``) beyond
its faces. A block runs every tile whose kept centre meets it, so a voxel's label depends only on that one tile:
the result is the same for any block size, shard split or worker count, and equal to running the grid over the
whole volume in memory. A block is fastest when its edge is a multiple of ``step`` (no tile runs twice).

Each block reads its region plus the halo straight from the input store, normalises it with global statistics
(never per tile or per block, which would make seams), runs its tiles in batches, writes whole output chunks and
then a completion marker ``PRED.zarr/.rockseg/done/<z>.<y>.<x>``. Re-running the same command skips blocks with a
marker, so a killed run resumes; ``shard=(i, n)`` takes every n-th block for Slurm job arrays. A 2D model on a 3D
volume segments it slice by slice (its tiles are one voxel thick along Z).

Dask's threads read, normalise and write blocks; the model runs on one thread (:class:`_TorchThread`) and does
not compute the halo it would cut off (:func:`~rockseg.models.centre_logits`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import zarr
from zarr.core.buffer.cpu import NDBuffer

from rockseg.devices import (
    available_cpus, malloc_environment, release_free_memory, resolve_device, tune_malloc,
)
from rockseg.errors import IncompleteError, InputError, MissingInputError, OutputExistsError
from rockseg.models import (
    centre_logits, file_sha256, fold_batch_norm, model_from_payload, read_model_file, tile_multiple,
)
from rockseg.io.intensity import intensity_stats, normalize
from rockseg.progress import Reporter
from rockseg.vocabulary import AXES, NORMALIZATIONS, OUTSIDE, PRECISIONS
from rockseg.io.stores import (
    ATTR_INTENSITY, ATTR_PHASES, ATTR_PROVENANCE, ATTR_SOURCE, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT,
    compressors_for, open_volume, parse_crop, provenance,
)

MARKER_DIR = ".rockseg"
DEFAULT_MODEL = Path(__file__).parent / "data" / "pore-solid-3d.pt"
DEFAULT_BLOCK = 128

Triple = tuple[int, int, int]


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PredictConfig:
    """Settings of a prediction run; the ones that change the result are recorded in the output store.

    Attributes
    ----------
    tile, halo : tile edge and halo in voxels; ``None`` takes the model's recommendation.
    block : block (and output chunk) edge in voxels; ``None`` picks a multiple of the tile step near 128.
    batch_size : tiles per forward pass.
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"float32"`` or ``"bf16"``.
    normalization : ``"volume"`` (the volume's own global statistics, from its attributes or one pass) or
        ``"model"`` (the training image's statistics stored in the model).
    shard : ``(i, n)``: run only blocks ``i, i + n, i + 2n...`` (0-based ``i``), for job arrays.
    workers : blocks in flight at once (reading the next block overlaps the model's work on this one).
    probabilities : path of an optional class-probability store, (C, *volume shape) uint8 (probability * 255).
    tta : test-time augmentation: average the class probabilities over all flips of each tile (8 in 3D, 4 in 2D).
    crop : ``"Z0:Z1,Y0:Y1,X0:X1"``: segment only this region (the output has its shape; context outside it is
        still read from the volume).
    mask : path of a Zarr array of the volume's shape (or the crop's); nothing is computed where it is 0, and the
        labels there are :data:`OUTSIDE` (255).
    axis : for a 2D model on a 3D volume, the axis it runs along (``"z"``, ``"y"`` or ``"x"``).
    scheduler : address of a Dask distributed scheduler to run the blocks on (default: threads in this process).
    devices : several devices of this node, e.g. ``("cuda:0", "cuda:1")``: one worker process per device, each
        holding the model once (a local Dask cluster; ``device`` is then ignored).
    """

    tile: int | None = None
    halo: int | None = None
    block: int | None = None
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    normalization: str = "volume"
    shard: tuple[int, int] | None = None
    workers: int = 2
    probabilities: str | None = None
    tta: bool = False
    crop: str | None = None
    mask: str | None = None
    axis: str = "z"
    scheduler: str | None = None
    devices: tuple[str, ...] | None = None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; ``None`` for no sharding."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r} is not I/N (e.g. 0/4 for the first of four shards)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= I < N (shards are numbered from 0, e.g. 0/4 ... 3/4)")
    return i, n


# --------------------------------------------------------------------------------------------------- geometry
def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map coordinates (any integers) onto ``[0, n)`` by mirroring at the faces, as ``np.pad(mode="reflect")``.

    >>> reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a (Z, Y, X) region of a volume.

    Tile ``k`` along an axis keeps ``[k * step, (k + 1) * step)`` and reads ``[k * step - halo, ... + tile)``,
    in region coordinates; the region starts at ``origin`` in a volume of shape ``volume_shape`` (default: the
    region is the whole volume), and reads beyond the volume's faces are mirrored.
    """

    shape: Triple
    tile: Triple
    halo: Triple
    origin: Triple = (0, 0, 0)
    volume_shape: Triple | None = None

    @property
    def step(self) -> Triple:
        return tuple(t - 2 * h for t, h in zip(self.tile, self.halo))  # type: ignore[return-value]

    def tiles_meeting(self, region: Sequence[slice]) -> list[range]:
        """Per axis, the tile indices whose kept centre meets ``region`` (slices of the region)."""
        return [range(r.start // s, -(-r.stop // s)) for r, s in zip(region, self.step)]

    def input_index(self, ks: Sequence[range]) -> list[np.ndarray]:
        """Per axis, the volume coordinates (mirrored at the faces) that the tiles ``ks`` read, in order."""
        full = self.volume_shape or self.shape
        out = []
        for k, s, h, t, o, n in zip(ks, self.step, self.halo, self.tile, self.origin, full):
            lo = k.start * s - h
            hi = (k.stop - 1) * s - h + t
            out.append(reflect_index(np.arange(lo, hi) + o, n))
        return out


def block_grid(shape: Sequence[int], block: Sequence[int]) -> list[Triple]:
    """All block indices (z, y, x) of a volume, in C order."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block)]
    return list(itertools.product(*(range(c) for c in counts)))  # type: ignore[arg-type]


def block_region(index: Sequence[int], shape: Sequence[int], block: Sequence[int]) -> tuple[slice, ...]:
    """The slices of the volume that block ``index`` covers."""
    return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))


# --------------------------------------------------------------------------------------------------- the model
def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TileRunner:
    """Runs batches of tiles through the network and returns labels (and probabilities when asked).

    One runner holds the model once; calls are serialised with a lock so that several blocks can be read and
    written by other threads while one batch runs. The runner works on its own copy of the network with batch
    norm folded into the convolutions, in channels-last memory layout (faster for convolutions on CPU and GPU)
    and, where ``precision`` says so, under bf16 autocast.

    Parameters
    ----------
    spatial_dims : 2 or 3; a 2D network gets tiles that are one voxel thick along ``axis`` (0, 1 or 2).
    precision : ``"float32"``, ``"bf16"`` or ``"auto"``: bf16 on CUDA, float32 on a CPU. On a CPU bf16 is only
        used when asked for: its rounding depends on the batch a tile runs in (measured on an AVX512-BF16 CPU, 2 of
        92,160 labels changed between blocks of 16 and 24), which would break the promise that labels do not
        depend on block size, part split or worker count.
    tta : average probabilities over all flips of each tile.
    margin : (z, y, x) voxels of each face of a tile whose results are not wanted (the halo): the results lack
        them, and UNet-family networks skip the work that only they need (:func:`~rockseg.models.centre_logits`:
        15-20 % less time for a 3D UNet with 64³ tiles and halo 8). A 2D network ignores the entry of ``axis``.
    """

    def __init__(
        self, model: torch.nn.Module, *, spatial_dims: int, device: torch.device, precision: str,
        probabilities: bool, tta: bool = False, axis: int = 0, margin: Sequence[int] = (0, 0, 0),
    ) -> None:
        self.device = device
        self.spatial_dims = spatial_dims
        self.probabilities = probabilities
        self.axis = axis
        self.margin: Triple = tuple(margin)  # type: ignore[assignment]
        if spatial_dims == 2:
            self.margin = tuple(0 if ax == axis else m for ax, m in enumerate(margin))  # type: ignore[assignment]
        self._net_margin = [m for ax, m in enumerate(self.margin) if not (spatial_dims == 2 and ax == axis)]
        fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
        # a copy, so that folding batch norm into the convolutions (one pass less over every activation: 10-25 %
        # faster on a CPU) leaves the caller's model as it was
        self.model = copy.deepcopy(model).to(device).eval()
        fold_batch_norm(self.model)
        self.model = self.model.to(memory_format=fmt)
        self.memory_format = fmt
        self.flips = [()]
        if tta:
            self.flips = [c for r in range(spatial_dims + 1) for c in itertools.combinations(range(2, 2 + spatial_dims), r)]
        self.lock = threading.Lock()
        self.requested = precision
        self.precision = precision
        if precision == "auto":
            self.precision = "bf16" if device.type == "cuda" else "float32"

    def _logits(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return centre_logits(self.model, x, self._net_margin).float()

    def _probs(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        """Class probabilities (N, C, *spatial), averaged over the flips (logits when neither is needed)."""
        if len(self.flips) == 1 and not self.probabilities:
            return self._logits(x, bf16)  # same argmax, no softmax needed
        total = None
        for dims in self.flips:
            xi = x.flip(dims) if dims else x
            p = torch.softmax(self._logits(xi, bf16), dim=1)
            p = p.flip(dims) if dims else p
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.flips) if len(self.flips) > 1 else total

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """batch: (N, 1, Tz, Ty, Tx) float32 -> labels (N, Tz, Ty, Tx) uint8, probabilities (N, C, ...) or None,
        each without :attr:`margin` on each face."""
        with self.lock, torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.type == "cuda":  # pinned host memory: the copy to the GPU runs asynchronously
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
            if self.spatial_dims == 2:
                x = x.squeeze(2 + self.axis)
            probs = self._probs(x, self.precision == "bf16")
            if self.spatial_dims == 2:
                probs = probs.unsqueeze(2 + self.axis)
            labels = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
            out = probs.cpu().numpy() if self.probabilities else None
        return labels, out


# --------------------------------------------------------------------------------------------------- the output
class Prediction:
    """A block-wise prediction store: the label array plus its completion markers.

    The label array is a plain Zarr array (``zarr.open_array(path)`` opens it); its attributes hold the run's
    settings under ``rockseg.settings`` and the block edge under ``rockseg.block``.
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = Path(path)
        self.array = open_volume(self.path, name="prediction", mode="r+" if writable else "r")
        meta = dict(self.array.attrs).get(ATTR_PROVENANCE) or {}
        if "block" not in meta or "settings" not in meta:
            raise InputError(
                f"{self.path} is not a rockseg prediction (no block records): give a store written by "
                f"'rockseg predict'"
            )
        self.settings: dict[str, Any] = meta["settings"]
        self.block: Triple = tuple(meta["block"])  # type: ignore[assignment]
        self.shape3: Triple = tuple(meta["shape3"])  # type: ignore[assignment]
        self.probabilities: str | None = meta.get("probabilities")

    @property
    def marker_dir(self) -> Path:
        return self.path / MARKER_DIR / "done"

    def blocks(self) -> list[Triple]:
        return block_grid(self.shape3, self.block)

    def done(self) -> set[Triple]:
        out = set()
        for name in os.listdir(self.marker_dir) if self.marker_dir.exists() else ():
            try:
                out.add(tuple(int(v) for v in name.split(".")))
            except ValueError:
                continue
        return out  # type: ignore[return-value]

    def missing(self) -> list[Triple]:
        done = self.done()
        return [b for b in self.blocks() if b not in done]

    def mark_done(self, index: Triple) -> None:
        (self.marker_dir / ".".join(map(str, index))).touch()


def _create_prediction(
    out: Path, *, shape: Sequence[int], block: Triple, classes: int, attrs: dict[str, Any],
    probabilities: str | None, overwrite: bool,
) -> Prediction:
    """Create the output store, or reopen it to resume when it holds a run with the same settings."""
    settings = attrs[ATTR_PROVENANCE]["settings"]
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
        if probabilities and Path(probabilities).exists():
            shutil.rmtree(probabilities)
    if not out.exists():
        if not out.parent.exists():
            raise MissingInputError(f"the folder of output {out} does not exist: create {out.parent} first")
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        chunks = block if len(shape) == 3 else block[1:]
        zarr.create_array(
            store=str(tmp), shape=tuple(shape), chunks=tuple(chunks), dtype="uint8", fill_value=0,
            compressors=compressors_for("blosc-zstd"), attributes=attrs,
        )
        (tmp / MARKER_DIR / "done").mkdir(parents=True)
        if probabilities:
            _create_probabilities(Path(probabilities), shape=shape, chunks=chunks, classes=classes, attrs=attrs)
        try:
            os.rename(tmp, out)
        except OSError:  # another shard created it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        pred = Prediction(out, writable=True)
    except InputError:
        raise OutputExistsError(
            f"{out} exists and is not a rockseg prediction: choose another output or pass --overwrite"
        ) from None
    if pred.settings != settings:
        changed = sorted(k for k in set(settings) | set(pred.settings) if settings.get(k) != pred.settings.get(k))
        raise OutputExistsError(
            f"{out} holds a prediction made with other settings ({', '.join(changed)}): re-run with the same "
            f"model and options to resume it, or pass --overwrite to start again"
        )
    if pred.block != block:
        raise OutputExistsError(
            f"{out} was written with --block {pred.block[-1]}, not {block[-1]}: use the same block to resume it, "
            f"or pass --overwrite"
        )
    return pred


def _create_probabilities(path: Path, *, shape: Sequence[int], chunks: Sequence[int], classes: int,
                          attrs: dict[str, Any]) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    zarr.create_array(
        store=str(tmp), shape=(classes, *shape), chunks=(classes, *chunks), dtype="uint8", fill_value=0,
        compressors=compressors_for("blosc-zstd"),
        attributes={**attrs, "scale": "probability * 255, rounded", "axes": "C" + "ZYX"[-len(shape):]},
    )
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- the engine
@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to run blocks of one prediction; small and picklable for Dask distributed."""

    volume: str
    out: str
    model: str
    model_sha256: str
    grid: TileGrid
    block: Triple
    p_low: float
    p_high: float
    batch_size: int
    device: str
    precision: str
    spatial_dims: int
    axis: int = 0
    tta: bool = False
    probabilities: str | None = None
    mask: str | None = None


class _Engine:
    """The opened stores and the loaded model of one :class:`BlockJob` (one per process, shared by threads)."""

    def __init__(self, job: BlockJob, torch_thread: _TorchThread | None = None) -> None:
        """``torch_thread`` runs the model (see :class:`_TorchThread`); default a thread of the engine's own."""
        self.job = job
        self.volume = zarr.open_array(store=job.volume, mode="r")
        self.out = zarr.open_array(store=job.out, mode="r+")
        self.probs = zarr.open_array(store=job.probabilities, mode="r+") if job.probabilities else None
        self.mask = zarr.open_array(store=job.mask, mode="r") if job.mask else None
        self.flat = self.volume.ndim == 2
        self.stats = {"p_low": job.p_low, "p_high": job.p_high}
        if torch_thread is None:  # a Dask distributed worker (--devices or --scheduler): keep and reuse freed
            tune_malloc()  # memory as the rockseg command does (a no-op where the user set malloc options)
            torch_thread = _TorchThread()
            torch_thread.start()
        self.runner: TileRunner = torch_thread.call(self._runner)  # built on the thread that runs it
        self.markers = Path(job.out) / MARKER_DIR / "done"
        self.pool = TilePool(functools.partial(torch_thread.call, self.runner), job.batch_size)
        self.buffers: queue.SimpleQueue[BlockBuffers] = queue.SimpleQueue()

    def _runner(self) -> TileRunner:
        job = self.job
        device = resolve_device(job.device)
        if device.type == "cpu":
            torch.set_num_threads(available_cpus())
        return TileRunner(
            model_from_payload(read_model_file(job.model)), spatial_dims=job.spatial_dims, device=device,
            precision=job.precision, probabilities=self.probs is not None, tta=job.tta, axis=job.axis,
            margin=job.grid.halo,
        )

    @contextlib.contextmanager
    def _buffers(self) -> Iterator[BlockBuffers]:
        """A free set of block buffers (made on first need: as many as blocks are ever in flight at once)."""
        try:
            buffers = self.buffers.get_nowait()
        except queue.Empty:
            classes = self.probs.shape[0] if self.probs is not None else 0
            buffers = BlockBuffers(self.job.grid, self.job.block, classes, with_mask=self.mask is not None,
                                   dtype=self.volume.dtype)
        try:
            yield buffers
        finally:
            self.buffers.put(buffers)

    def _global(self, box: Sequence[slice]) -> tuple[slice, ...]:
        """Region coordinates (Z, Y, X) -> the volume's own index (a 2D volume drops Z)."""
        g = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.job.grid.origin))
        return g[1:] if self.flat else g

    def read(self, box: tuple[slice, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Read a (Z, Y, X) box of the input given in volume coordinates (a 2D input is one plane), into ``out``
        (C-contiguous, the box's shape) when given."""
        sel = box[1:] if self.flat else box
        if out is None:
            data = np.asarray(self.volume[sel])
        else:
            target = out[0] if self.flat else out
            data = np.asarray(self.volume.get_basic_selection(sel, out=NDBuffer.from_numpy_array(target)))
        data = data[None] if self.flat else data
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            where = ",".join(f"{b.start}:{b.stop}" for b in box)
            raise InputError(
                f"volume {self.job.volume} holds NaN or Inf values in region {where}: replace them (e.g. with "
                f"'rockseg convert' after fixing the source) before predicting"
            )
        return data

    def run_block(self, index: Triple) -> tuple[int, str]:
        grid = self.job.grid
        region = block_region(index, grid.shape, self.job.block)
        with self._buffers() as buffers:
            keep = None
            if self.mask is not None:
                keep = buffers.keep([r.stop - r.start for r in region])
                np.not_equal(np.asarray(self.mask[self._global(region)]).reshape(keep.shape), 0, out=keep)
            with self.pool.block():
                labels, probs = predict_region(
                    region, grid=grid, read=self.read, stats=self.stats, run_tiles=self.pool, keep=keep,
                    buffers=buffers, cropped=self.runner.margin,
                )
            target = region[1:] if self.flat else region
            if self.probs is not None and probs is not None:
                q = np.rint(probs * np.float32(255)).astype(np.uint8)
                self.probs[(slice(None), *target)] = q[:, 0] if self.flat else q
            self.out[target] = labels[0] if self.flat else labels
        (self.markers / ".".join(map(str, index))).touch()
        release_free_memory()
        return int(labels.size), self.runner.precision or self.job.precision


_ENGINES: dict[BlockJob, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(job: BlockJob, torch_thread: _TorchThread | None = None) -> _Engine:
    """This process's engine for ``job``, built at the first call (with ``torch_thread``, see :class:`_Engine`)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(job)
        if engine is None:
            engine = _ENGINES[job] = _Engine(job, torch_thread)
    return engine


def run_block(job: BlockJob, index: Triple) -> tuple[int, str]:
    """Run one block of a job (in any process: the engine is built once per process and job)."""
    return _engine(job).run_block(index)


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


def _geometry(payload: dict[str, Any], volume_shape: Sequence[int], config: PredictConfig,
              volume_name: str) -> tuple[TileGrid, Triple, int]:
    """Check tile/halo/block/crop/axis against the model and the volume; return the grid, block and axis."""
    dims = int(payload["spatial_dims"])
    if len(volume_shape) not in (2, 3):
        raise InputError(f"{volume_name} has shape {tuple(volume_shape)}: rockseg predicts 2D (Y, X) or 3D (Z, Y, X)")
    if dims == 3 and len(volume_shape) == 2:
        raise InputError(
            f"{volume_name} is a 2D image {tuple(volume_shape)} but the model is 3D: use a 2D model "
            f"(rockseg train --dims 2)"
        )
    if config.axis not in AXES:
        raise InputError(f"--axis {config.axis!r}: choose z, y or x")
    axis = AXES.index(config.axis)
    if len(volume_shape) == 2 and axis != 0:
        raise InputError(f"--axis {config.axis}: a 2D image has only the z direction")
    full: Triple = (1, *volume_shape) if len(volume_shape) == 2 else tuple(volume_shape)  # type: ignore[assignment]
    crop = parse_crop(config.crop, volume_shape) if config.crop else tuple(slice(0, n) for n in volume_shape)
    if len(volume_shape) == 2:
        crop = (slice(0, 1), *crop)
    shape3: Triple = tuple(c.stop - c.start for c in crop)  # type: ignore[assignment]
    origin: Triple = tuple(c.start for c in crop)  # type: ignore[assignment]
    tile = int(config.tile or payload["tile"])
    halo = int(config.halo if config.halo is not None else payload["halo"])
    divisor = tile_multiple(payload["arch"], payload["arch_args"])
    if tile <= 0 or tile % divisor:
        raise InputError(f"--tile {tile}: this model needs a tile edge that is a positive multiple of {divisor}")
    in_plane = [n for ax, n in enumerate(full) if not (dims == 2 and ax == axis)]
    if config.tile is None and min(in_plane) < tile:
        # the model's recommended tile does not fit this small volume: take the largest tile that does
        tile = max(divisor, min(in_plane) // divisor * divisor)
        if config.halo is None:
            halo = min(halo, (tile - 1) // 4)
    if halo < 0 or tile - 2 * halo < 1:
        raise InputError(f"--halo {halo}: with --tile {tile} the halo must be between 0 and {(tile - 1) // 2}")
    tile3 = [tile] * 3
    halo3 = [halo] * 3
    if dims == 2:
        tile3[axis], halo3[axis] = 1, 0
    for ax, (n, t) in enumerate(zip(full, tile3)):
        if n < t:
            raise InputError(
                f"{volume_name} has {n} voxels along axis {'ZYX'[ax]}, fewer than the tile edge {t}: use a "
                f"smaller --tile (a multiple of {divisor})" + (" or a 2D model" if dims == 3 else "")
            )
    step = tile - 2 * halo
    if config.block is not None:
        if config.block < 1:
            raise InputError(f"--block {config.block}: give a positive block edge in voxels (e.g. 128)")
        edge = config.block
    else:
        edge = max(step, round(DEFAULT_BLOCK / step) * step)
    block: Triple = tuple(min(edge, n) for n in shape3)  # type: ignore[assignment]
    grid = TileGrid(shape3, tuple(tile3), tuple(halo3), origin, full)  # type: ignore[arg-type]
    return grid, block, axis


class _RunLock:
    """One lock file per shard in the output, so that the same blocks are never run twice at once.

    Runs of different shards work side by side. A lock left by a run that died on this host is taken over; one
    held by a live process (or by another host) makes the second run refuse with a clear message.
    """

    def __init__(self, out: Path, shard: tuple[int, int] | None) -> None:
        name = f"lock-{shard[0]}-of-{shard[1]}" if shard else "lock-all"
        self.path = out / MARKER_DIR / name

    def __enter__(self) -> _RunLock:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = self.path.read_text().partition(" ")
                if host == socket.gethostname() and pid.strip().isdigit() and not _alive(int(pid)):
                    self.path.unlink(missing_ok=True)  # left by a run that was killed: take it over
                    continue
                raise OutputExistsError(
                    f"{self.path.parent.parent} is being written by another 'rockseg predict' (process {pid.strip()} "
                    f"on {host}) for the same blocks: wait for it, run another --shard, or delete {self.path} if that "
                    f"run is dead"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise OutputExistsError(f"could not take the lock {self.path}: delete it if no run is writing this output")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def predict(
    volume: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
    model: str | os.PathLike[str] | None = None, config: PredictConfig = PredictConfig(), overwrite: bool = False,
    progress: bool = False, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment a volume with a model, block by block; resumable and shardable.

    Parameters
    ----------
    volume : path of a Zarr array, (Z, Y, X) or (Y, X), any numeric dtype.
    out : path of the label store to write; default ``<volume stem>-labels.zarr`` beside the volume.
    model : path of a rockseg model file; default the pore/solid model shipped with rockseg.
    config : the run's settings (:class:`PredictConfig`).
    overwrite : start again even if ``out`` holds a (possibly different) prediction.
    progress : show a progress bar; ``log`` gets log lines otherwise.

    Returns
    -------
    summary : dict with ``out``, ``voxels``, ``seconds``, ``voxels_per_second``, ``blocks_done``,
        ``blocks_skipped``, ``blocks_missing`` (blocks of other shards not yet done), ``complete``, ``precision``.
    """
    vpath = Path(volume)
    array = open_volume(vpath, name="volume")
    if array.dtype.kind not in "uifb":
        raise InputError(f"volume {vpath} has dtype {array.dtype}: give grey values (integers or floats)")
    out_path = Path(out) if out is not None else vpath.with_name(f"{vpath.name.removesuffix('.zarr')}-labels.zarr")
    model_path = Path(model) if model is not None else DEFAULT_MODEL
    payload = read_model_file(model_path)
    if int(payload.get("in_channels", 1)) != 1:
        raise InputError(f"model {model_path} takes {payload['in_channels']} channels but the volume has one")
    if config.precision not in PRECISIONS:
        raise InputError(f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if config.normalization not in NORMALIZATIONS:
        raise InputError(f"--normalize {config.normalization!r}: choose volume or model")
    if config.batch_size < 1 or config.workers < 1:
        raise InputError("--batch-size and --workers must be at least 1")
    grid, block, axis = _geometry(payload, array.shape, config, str(vpath))
    device = config.device
    if config.devices:
        if config.scheduler:
            raise InputError("--devices starts its own workers: give either --devices or --scheduler, not both")
        for d in config.devices:
            resolve_device(d)
        kinds = {d.split(":")[0] for d in config.devices}
        if len(kinds) != 1 or kinds - {"cpu", "cuda"}:
            raise InputError(f"--devices {','.join(config.devices)}: list devices of one kind, e.g. cuda:0,cuda:1")
        device = kinds.pop()  # each worker sees only its own GPU, as cuda:0
    elif config.scheduler is None:
        resolve_device(config.device)
    if config.probabilities and Path(config.probabilities).resolve() == out_path.resolve():
        raise InputError("--probabilities must be another path than the output")
    mask_path = None
    if config.mask:
        mask = open_volume(config.mask, name="mask")
        if mask.shape != array.shape:
            raise InputError(
                f"mask {config.mask} has shape {mask.shape} but volume {vpath} has {array.shape}: the mask must "
                f"cover the whole volume"
            )
        mask_path = str(Path(config.mask).resolve())
    parent = out_path.resolve().parent
    if not parent.exists():
        raise MissingInputError(f"the folder of output {out_path} does not exist: create {parent} first")
    if not parent.is_dir():
        raise InputError(f"cannot write output {out_path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (out_path.exists() and not os.access(out_path, os.W_OK)):
        raise InputError(f"cannot write output {out_path}: choose a writable place (-o) or fix its permissions")
    if config.scheduler or config.devices:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise InputError("--scheduler and --devices need Dask distributed: pip install 'rockseg[distributed]'") from None

    stats = _normalization_stats(array, payload, config.normalization)
    phases = {int(k): v for k, v in payload["phases"].items()}
    sha = file_sha256(model_path)
    settings = {
        "model_sha256": sha, "tile": list(grid.tile), "halo": list(grid.halo), "precision": config.precision,
        "normalization": {k: stats[k] for k in ("p_low", "p_high")}, "volume_shape": list(array.shape),
        "probabilities": bool(config.probabilities), "tta": config.tta, "crop": [list(grid.origin), list(grid.shape)],
        "mask": mask_path,
    }
    src_attrs = dict(array.attrs)
    attrs = {
        ATTR_PHASES: {str(k): v for k, v in phases.items()},
        ATTR_SOURCE: str(vpath.resolve()),
        ATTR_PROVENANCE: provenance(
            model=str(model_path), model_sha256=sha, settings=settings, block=list(block), shape3=list(grid.shape),
            probabilities=str(Path(config.probabilities).resolve()) if config.probabilities else None,
            outside_mask=OUTSIDE if mask_path else None,
        ),
    }
    for key in (ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT):
        if key in src_attrs:
            attrs[key] = src_attrs[key]
    out_shape = grid.shape[1:] if array.ndim == 2 else grid.shape
    pred = _create_prediction(
        out_path, shape=out_shape, block=block, classes=len(phases), attrs=attrs,
        probabilities=config.probabilities, overwrite=overwrite,
    )
    job = BlockJob(
        volume=str(vpath.resolve()), out=str(out_path.resolve()), model=str(model_path.resolve()),
        model_sha256=sha, grid=grid,
        block=block, p_low=float(stats["p_low"]), p_high=float(stats["p_high"]), batch_size=config.batch_size,
        device=device, precision=config.precision, spatial_dims=int(payload["spatial_dims"]), axis=axis,
        tta=config.tta, probabilities=str(Path(config.probabilities).resolve()) if config.probabilities else None,
        mask=mask_path,
    )
    blocks = pred.blocks()
    mine = blocks[config.shard[0] :: config.shard[1]] if config.shard else blocks
    start = time.perf_counter()
    voxels = 0
    precisions: set[str] = set()
    with _RunLock(pred.path, config.shard):
        done = pred.done()
        todo = [b for b in mine if b not in done]
        with Reporter(len(todo), "predict", bar=progress, log=log) as report:
            if config.devices:
                with _device_cluster(config.devices) as cluster:
                    results = _run_distributed(job, todo, cluster.scheduler_address, report)
            elif config.scheduler:
                results = _run_distributed(job, todo, config.scheduler, report)
            else:
                try:
                    results = _run_threads(job, todo, config.workers, report)
                finally:
                    _ENGINES.pop(job, None)  # free the model; a distributed worker keeps its own
            for n, precision in results:
                voxels += n
                precisions.add(precision)
    seconds = time.perf_counter() - start
    missing = pred.missing()
    if not missing:
        (pred.path / MARKER_DIR / "complete").touch()
    return {
        "out": str(out_path), "voxels": voxels, "seconds": seconds,
        "voxels_per_second": voxels / seconds if seconds > 0 else 0.0,
        "blocks_done": len(todo), "blocks_skipped": len(mine) - len(todo), "blocks_missing": len(missing),
        "blocks_total": len(blocks), "complete": not missing, "precision": ",".join(sorted(precisions)) or None,
    }


class _TorchThread:
    """Runs all torch work of an engine on one thread, for the block threads that call it.

    torch's CPU kernels use OpenMP, which gives every thread that starts a parallel region a team of worker
    threads of its own. Once a process holds more such threads than cores, libgomp stops spin-waiting between
    regions, and each of the thousands of regions in a forward pass pays a sleep and a wake-up: measured on a
    2-core CPU, a 3D UNet ran 15-20 % slower called from Dask's worker threads (each with its own team) than
    from a single thread. So the block threads read, normalise and write, and hand the model to one thread:
    the one that created this object, while it waits in :meth:`serve` (a local run: the thread that called
    predict, which may have run torch before), or after :meth:`start` one of its own (a Dask distributed
    worker, whose task threads would each start a team).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._owner: int | None = threading.get_ident()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the serving thread (at once when called there); raises what it raises."""
        if threading.get_ident() == self._owner:
            return fn(*args)
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("prediction stopped: the thread that runs the model has ended")
            self._queue.put((fn, args, future))
        return future.result()

    def start(self) -> None:
        """Serve on a daemon thread of its own from now on, for the life of the process."""
        self._owner = None
        threading.Thread(target=self._loop, name="rockseg-model", daemon=True).start()

    def _loop(self) -> None:
        self._owner = threading.get_ident()
        try:
            while (item := self._queue.get()) is not None:
                fn, args, future = item
                try:
                    future.set_result(fn(*args))
                except Exception as exc:  # the block that asked fails with it, and so the run
                    future.set_exception(exc)
                except BaseException as exc:  # Ctrl-C: stop serving
                    future.set_exception(exc)
                    raise
        finally:
            with self._lock:  # whoever waits or comes later fails at once, so the block threads end
                self._closed = True
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[2].set_exception(RuntimeError("prediction stopped"))

    def serve(self, work: Callable[[], Any]) -> Any:
        """Run ``work()`` on a new thread while this one (the creator) serves :meth:`call`; its result."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the serving thread
                outcome["error"] = exc
            finally:
                self._queue.put(None)

        thread = threading.Thread(target=target, name="rockseg-blocks", daemon=True)
        thread.start()
        self._loop()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def _run_threads(job: BlockJob, todo: list[Triple], workers: int, report: Reporter) -> list[tuple[int, str]]:
    """Run blocks with Dask's threaded scheduler, at most ``workers`` in flight, and the model on this thread.

    While one block's tiles run through the model (on this thread: see :class:`_TorchThread`), the next block
    is read and decompressed, and the previous one compressed and written, by Dask's threads.
    """
    if not todo:
        return []
    torch_thread = _TorchThread()
    _engine(job, torch_thread)  # the model is built here, on the thread that runs it

    def run(index: Triple) -> tuple[int, str]:
        result = run_block(job, index)
        report.advance(result[0])
        return result

    def compute() -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        for i in range(0, len(todo), 4096):  # bounded graph size for millions of blocks
            tasks = [dask.delayed(run, pure=False)(b) for b in todo[i : i + 4096]]
            results.extend(dask.compute(*tasks, scheduler="threads", num_workers=workers))
        return results

    return torch_thread.serve(compute)


def _run_distributed(job: BlockJob, todo: list[Triple], address: str, report: Reporter) -> list[tuple[int, str]]:
    """Run blocks on an existing Dask distributed cluster, keeping about two blocks per worker thread in flight."""
    from distributed import Client, as_completed

    results: list[tuple[int, str]] = []
    with Client(address, timeout="30s") as client:
        slots = max(2, 2 * sum(client.nthreads().values()))
        pending = iter(todo)
        futures = [client.submit(run_block, job, b, pure=False) for b in itertools.islice(pending, slots)]
        queue = as_completed(futures)
        for future in queue:
            result = future.result()
            results.append(result)
            report.advance(result[0])
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(client.submit(run_block, job, nxt, pure=False))
    return results


def _device_cluster(devices: Sequence[str]) -> Any:
    """A local Dask cluster with one single-threaded worker process per device.

    A worker for ``cuda:N`` sees only that GPU (``CUDA_VISIBLE_DEVICES=N``), so every worker uses ``cuda``.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {}
    for i, dev in enumerate(devices):
        env = {"CUDA_VISIBLE_DEVICES": dev.partition(":")[2] or "0"} if dev.startswith("cuda") else {}
        env.update(malloc_environment())  # what tune_malloc() does in this process
        workers[f"device-{i}"] = {"cls": Nanny, "options": {"nthreads": 1, "env": env}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


def _normalization_stats(array: zarr.Array, payload: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "model":
        return dict(payload["normalization"])
    stored = dict(array.attrs).get(ATTR_INTENSITY)
    if isinstance(stored, dict) and {"p_low", "p_high"} <= stored.keys():
        return stored
    return intensity_stats(array)


def check_complete(path: str | os.PathLike[str], *, limit: int = 20) -> Prediction:
    """Open a prediction and raise :class:`IncompleteError` listing missing blocks if it is not complete."""
    pred = Prediction(path)
    missing = pred.missing()
    if missing:
        shown = ", ".join(".".join(map(str, b)) for b in missing[:limit])
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        raise IncompleteError(
            f"{pred.path} is incomplete: {len(missing)} of {len(pred.blocks())} blocks missing ({shown}{more}): "
            f"run the same 'rockseg predict' command (or the missing shards) again to finish it"
        )
    return pred


